"""RAL's open questions as config fields: several attention layers (`attn_layers`) and the divergence
(`attn_divergence`): hand computations against eager attention, and the single-layer / JSD defaults unchanged."""

import math
import warnings

import pytest
import torch

from tests.testing_utils import eager_completion_heads, length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer, CaptureError
from trl_attention.losses import attention_divergence, attention_policy, kl
from trl_attention.tiny import build_tiny_lm


def test_kl_by_hand_and_directions():
    p, q = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.25, 0.75, 0.0])
    assert kl(p, q).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-7)
    assert kl(q, p).item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-7)
    assert attention_divergence("kl", q, p).item() == pytest.approx(kl(p, q).item())  # KL(p_old || p_theta)
    assert attention_divergence("reverse_kl", q, p).item() == pytest.approx(kl(q, p).item())
    assert kl(p, p).item() == 0.0
    assert math.isfinite(kl(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])).item())  # underflow guarded
    x = torch.tensor([0.25, 0.75, 0.0], requires_grad=True)  # zeros in either argument: finite gradients
    (kl(x, p) + kl(p, x)).backward()
    assert torch.isfinite(x.grad).all()


def _trainer(tmp_path, text_dataset, **overrides):
    model, tokenizer = build_tiny_lm(seed=0)
    args = trainer_args(AttentionGRPOConfig, tmp_path, max_steps=1, num_iterations=2, loss_type="grpo", **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGRPOTrainer(
            model=model, reward_funcs=length_reward, args=args, train_dataset=text_dataset, processing_class=tokenizer
        )
        trainer.train()
    return trainer


def _eager_rows(trainer, batch, layer):
    return eager_completion_heads(trainer.model.state_dict(), batch, layer).mean(1)


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


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl"])
def test_divergence_term_equals_hand_computation(tmp_path, text_dataset, divergence):
    trainer = _trainer(tmp_path, text_dataset, attn_divergence=divergence)
    batch = dict(trainer._buffered_inputs[0])
    shape = batch["old_attention_probs"].shape
    batch["old_attention_probs"] = torch.softmax(torch.randn(shape, generator=torch.Generator().manual_seed(0)), -1)
    with torch.no_grad():
        p_theta = attention_policy(_eager_rows(trainer, batch, -1))
        p_old = attention_policy(batch["old_attention_probs"])
    per_token = kl(p_old, p_theta) if divergence == "kl" else kl(p_theta, p_old)
    hand = _hand(batch, per_token)
    assert hand.abs() > 1e-6
    torch.testing.assert_close(_term(trainer, batch), hand, atol=1e-6, rtol=1e-4)
    assert any(f"attention/{divergence}" in h for h in trainer.state.log_history)
    assert math.isfinite(trainer.state.log_history[0]["grad_norm"])


def test_several_layers_average_the_divergence(tmp_path, text_dataset):
    trainer = _trainer(tmp_path, text_dataset, attn_layers=[1, -1])
    batch = dict(trainer._buffered_inputs[0])
    old = batch["old_attention_probs"]
    assert old.dim() == 4 and old.size(1) == 2  # (B, layers, C, T): p_old of both layers travels with its rows
    old = torch.softmax(torch.randn(old.shape, generator=torch.Generator().manual_seed(1)), -1)
    batch["old_attention_probs"] = old
    from trl_attention.losses import jsd

    with torch.no_grad():
        terms = [
            jsd(attention_policy(_eager_rows(trainer, batch, layer)), attention_policy(old[:, i]))
            for i, layer in enumerate([1, -1])
        ]
    hand = _hand(batch, (terms[0] + terms[1]) / 2)
    torch.testing.assert_close(_term(trainer, batch), hand, atol=1e-6, rtol=1e-4)


def test_one_listed_layer_is_the_default(tmp_path, text_dataset):
    default = _trainer(tmp_path / "a", text_dataset)
    listed = _trainer(tmp_path / "b", text_dataset, attn_layers=[-1])
    assert default.state.log_history[0]["loss"] == listed.state.log_history[0]["loss"]
    a, b = default._buffered_inputs[0]["old_attention_probs"], listed._buffered_inputs[0]["old_attention_probs"]
    assert a.shape == b.shape and torch.equal(a, b)


def test_bad_ablation_fields_are_errors(tmp_path, text_dataset):
    with pytest.raises(ValueError, match="attn_divergence must be one of"):
        AttentionGRPOConfig(output_dir=str(tmp_path), attn_divergence="wasserstein")
    with pytest.raises(ValueError, match="attn_layers must be distinct"):
        AttentionGRPOConfig(output_dir=str(tmp_path), attn_layers=[1, 1])
    with pytest.raises(CaptureError, match="attn_layers"):
        _trainer(tmp_path, text_dataset, attn_layers=[0, 9])
    for bad in ([1.5], [True], "1", 1):  # were silently [1] / accepted
        with pytest.raises(ValueError, match="attn_layers must be integer layer indices"):
            AttentionGRPOConfig(output_dir=str(tmp_path), attn_layers=bad)


def test_metrics_read_attn_layer_whatever_attn_layers_lists(tmp_path, text_dataset):
    """`attention/entropy` is attn_layer's (its help), also when attn_layers does not list it: with attn_layers=[0]
    it is the default run's (attn_layer=-1) at the first step, bit for bit (same rollouts, same capture of layer -1,
    before any update), and not that of a run whose attn_layer is 0 (the tiny model's layers differ little)."""
    first = lambda trainer: trainer.state.log_history[0]["attention/entropy"]  # noqa: E731
    default = _trainer(tmp_path / "a", text_dataset)
    other_layers = _trainer(tmp_path / "b", text_dataset, attn_layers=[0])
    layer_0 = _trainer(tmp_path / "c", text_dataset, attn_layers=[0], attn_layer=0)
    assert first(other_layers) == first(default)
    assert first(layer_0) != first(default)


def test_rals_term_takes_trls_importance_sampling_correction(tmp_path, text_dataset):
    """With vLLM's IS correction on, the term is weighted per token by TRL's ratio (0 where TRL masks): equal to the
    hand computation with the ratio, and independent of the tokens a mask drops."""
    trainer = _trainer(tmp_path, text_dataset)
    batch = dict(trainer._buffered_inputs[0])
    shape = batch["old_attention_probs"].shape
    batch["old_attention_probs"] = torch.softmax(torch.randn(shape, generator=torch.Generator().manual_seed(2)), -1)
    ratio = 2 * torch.rand(batch["completion_mask"].shape, generator=torch.Generator().manual_seed(3))
    ratio[:, 0] = 0.0  # every sequence's first token masked (token_mask mode)
    batch["importance_sampling_ratio"] = ratio
    trainer.use_vllm, trainer.vllm_importance_sampling_correction = True, True
    with torch.no_grad():
        from trl_attention.losses import jsd

        p_theta = attention_policy(_eager_rows(trainer, batch, -1))
        per_token = jsd(p_theta, attention_policy(batch["old_attention_probs"]))
    torch.testing.assert_close(_term(trainer, batch), _hand(batch, per_token * ratio), atol=1e-6, rtol=1e-4)
    trainer.vllm_importance_sampling_correction = False
    torch.testing.assert_close(_term(trainer, batch), _hand(batch, per_token), atol=1e-6, rtol=1e-4)
