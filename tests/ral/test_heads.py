"""RAL's head-aggregation open question as a config field, `attn_heads`: "mean" (the paper: the divergence of the
head-averaged distribution) or "per_head" (the divergence per query head, averaged over heads). Hand computations
against eager `output_attentions` per head, p_old per head through TRL's shuffle and split, "mean" = the default
bit for bit, bad values."""

import math
import warnings

import pytest
import torch

from tests.testing_utils import eager_completion_heads, length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.losses import attention_policy, jsd, kl
from trl_attention.ral.arguments import RALArguments
from trl_attention.tiny import build_tiny_lm


def _trainer(tmp_path, text_dataset, trainer_cls=AttentionGRPOTrainer, teacher=None, **overrides):
    model, tokenizer = build_tiny_lm(seed=0)
    overrides = {"max_steps": 1, "num_iterations": 2, "loss_type": "grpo", **overrides}
    args = trainer_args(AttentionGRPOConfig, tmp_path, **overrides)
    extra = {} if teacher is None else {"teacher_model": teacher}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trainer_cls(
            model=model,
            reward_funcs=length_reward,
            args=args,
            train_dataset=text_dataset,
            processing_class=tokenizer,
            **extra,
        )
        trainer.train()
    return trainer


def _term(trainer, batch):
    """RAL's term alone on `batch` (eval mode: no accumulation scaling)."""
    trainer.model.eval()
    with torch.no_grad():
        with_term = trainer._compute_loss(trainer.model, batch)
        coef, trainer.attn_coef = trainer.attn_coef, 0.0
        without = trainer._compute_loss(trainer.model, batch)
        trainer.attn_coef = coef
    return with_term - without


def _hand(batch, per_token):
    cm = batch["completion_mask"].float()
    return ((batch["advantages"][:, None] * per_token * cm).sum(-1) / cm.sum(-1).clamp(min=1)).mean()


def _per_head(divergence, p_theta, p_old):
    """Mean over heads of the per-head divergence: (B, H, C, T) rows -> (B, C)."""
    heads = p_theta.size(1)
    terms = []
    for h in range(heads):
        pt, po = attention_policy(p_theta[:, h]), attention_policy(p_old[:, h])
        terms.append({"jsd": jsd(pt, po), "kl": kl(po, pt)}[divergence])
    return sum(terms) / heads


def _logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


@pytest.mark.parametrize("divergence", ["jsd", "kl"])
def test_per_head_term_equals_hand_computation(tmp_path, text_dataset, divergence):
    trainer = _trainer(tmp_path, text_dataset, attn_heads="per_head", attn_divergence=divergence)
    jsds, grad_norms = _logged(trainer, f"attention/{divergence}"), _logged(trainer, "grad_norm")
    assert len(jsds) == 1 and math.isfinite(jsds[0]) and math.isfinite(grad_norms[0])
    assert all(0 < e < 5 for e in _logged(trainer, "attention/entropy"))
    batch = dict(trainer._buffered_inputs[0])
    old = batch["old_attention_probs"]
    heads = trainer.model.config.num_attention_heads
    assert old.shape == (*batch["completion_ids"].shape[:1], heads, batch["completion_ids"].size(1), old.size(-1))
    old = torch.softmax(torch.randn(old.shape, generator=torch.Generator().manual_seed(0)), -1)
    batch["old_attention_probs"] = old
    p_theta = eager_completion_heads(trainer.model.state_dict(), batch, -1)
    hand = _hand(batch, _per_head(divergence, p_theta, old))
    assert hand.abs() > 1e-6
    torch.testing.assert_close(_term(trainer, batch), hand, atol=1e-6, rtol=1e-4)
    # Not the head-averaged term: per-head divergences are not the divergence of the mean.
    mean_term = _hand(batch, jsd(attention_policy(p_theta.mean(1)), attention_policy(old.mean(1))))
    assert divergence != "jsd" or (hand - mean_term).abs() > 1e-6
    batch.pop("old_attention_probs")  # p_old = p_theta detached (TRL ran no old-logps forward): the term is 0
    assert _term(trainer, batch).abs().item() < 1e-7


def test_per_head_with_several_layers(tmp_path, text_dataset):
    trainer = _trainer(tmp_path, text_dataset, attn_heads="per_head", attn_layers=[1, -1])
    batch = dict(trainer._buffered_inputs[0])
    old = batch["old_attention_probs"]
    heads = trainer.model.config.num_attention_heads
    assert old.dim() == 5 and old.shape[1:3] == (2, heads)  # (B, L, H, C, T)
    old = torch.softmax(torch.randn(old.shape, generator=torch.Generator().manual_seed(1)), -1)
    batch["old_attention_probs"] = old
    state = trainer.model.state_dict()
    terms = [_per_head("jsd", eager_completion_heads(state, batch, layer), old[:, i]) for i, layer in enumerate([1, -1])]
    hand = _hand(batch, (terms[0] + terms[1]) / 2)
    torch.testing.assert_close(_term(trainer, batch), hand, atol=1e-6, rtol=1e-4)
    batch["old_attention_probs"] = old[:, 0]  # one layer's p_old for a two-layer term: a clear error
    with pytest.raises(RuntimeError, match="old_attention_probs holds"):
        _term(trainer, batch)


def test_per_head_old_attention_travels_aligned_through_shuffle_and_split(tmp_path, text_dataset):
    """steps_per_generation=2 shuffles and splits the generation batch; each row keeps its (H, C, T) p_old."""
    seen = []
    initial, _ = build_tiny_lm(seed=0)

    class Recording(AttentionGRPOTrainer):
        def _compute_loss(self, model, inputs):
            seen.append({k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)})
            return super()._compute_loss(model, inputs)

    trainer = _trainer(
        tmp_path,
        text_dataset,
        trainer_cls=Recording,
        attn_heads="per_head",
        steps_per_generation=2,
        gradient_accumulation_steps=1,
        max_steps=2,
        num_iterations=1,
    )
    assert len(seen) == 2
    for batch in seen:  # both halves were scored by the initial parameters
        ref = eager_completion_heads(initial.state_dict(), batch, -1)
        valid = batch["completion_mask"].bool()
        got = batch["old_attention_probs"]
        torch.testing.assert_close(got.transpose(1, 2)[valid], ref.transpose(1, 2)[valid], atol=1e-5, rtol=0)
    jsds = _logged(trainer, "attention/jsd")
    assert jsds[0] < 1e-7 and jsds[1] > 1e-6 and all(math.isfinite(j) for j in jsds)


def test_mean_is_the_default_bit_for_bit(tmp_path, text_dataset):
    default = _trainer(tmp_path / "a", text_dataset)
    mean = _trainer(tmp_path / "b", text_dataset, attn_heads="mean")
    assert default.attn_heads == mean.attn_heads == "mean"
    for key in ("loss", "grad_norm", "attention/jsd", "attention/entropy"):
        assert _logged(default, key) == _logged(mean, key), key
    a, b = default._buffered_inputs[0]["old_attention_probs"], mean._buffered_inputs[0]["old_attention_probs"]
    assert a.dim() == 3 and torch.equal(a, b)
    for (name, x), (_, y) in zip(default.model.named_parameters(), mean.model.named_parameters()):
        assert torch.equal(x, y), name


def test_distillation_keeps_the_head_average(tmp_path, text_dataset):
    """With a teacher, the attention-distillation term reads the head-averaged rows under attn_heads="per_head"."""
    runs = {
        heads: _trainer(
            tmp_path / heads,
            text_dataset,
            teacher=build_tiny_lm(seed=1)[0],
            attn_distill_coef=1.0,
            attn_heads=heads,
        )
        for heads in ("mean", "per_head")
    }
    a, b = (_logged(runs[h], "attention/distill_jsd") for h in ("mean", "per_head"))
    assert len(a) == len(b) == 1 and math.isfinite(b[0])
    assert b[0] == pytest.approx(a[0], abs=1e-6)  # step 1: the same parameters, the same head average


def test_bad_attn_heads_are_errors(tmp_path):
    for value in ("all", "sum", "", None):
        with pytest.raises(ValueError, match="attn_heads must be one of"):
            AttentionGRPOConfig(output_dir=str(tmp_path), attn_heads=value)
    with pytest.raises(ValueError, match="attn_heads must be one of .*'per-head'"):
        RALArguments(attn_heads="per-head")  # the light class alone (the CLI's --help builds it)
    assert trainer_args(AttentionGRPOConfig, tmp_path, attn_heads="per_head").attn_heads == "per_head"
