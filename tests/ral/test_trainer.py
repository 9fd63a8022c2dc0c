"""AttentionGRPOTrainer against the upstream GRPOTrainer and an eager-attention hand computation."""

import copy
import warnings

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from tests.testing_utils import length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer, CaptureError
from trl_attention.losses import attention_policy, jsd
from trl_attention.tiny import build_tiny_lm, build_tiny_vlm, make_grounding_dataset
from trl_attention.trl_internals import aggregate_like_trl


def _train(trainer_cls, config_cls, tmp_path, dataset, model=None, trainer_kwargs=None, **overrides):
    torch.manual_seed(0)
    fresh, tokenizer = build_tiny_lm(seed=0)
    args = trainer_args(config_cls, tmp_path, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trainer_cls(
            model=fresh if model is None else model,
            reward_funcs=length_reward,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            **(trainer_kwargs or {}),
        )
        trainer.train()
    return trainer


def _logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


def test_attn_coef_zero_is_bit_identical_to_grpo(tmp_path, text_dataset):
    upstream = _train(GRPOTrainer, GRPOConfig, tmp_path / "a", text_dataset)
    ours = _train(AttentionGRPOTrainer, AttentionGRPOConfig, tmp_path / "b", text_dataset, attn_coef=0.0)
    assert _logged(upstream, "loss") == _logged(ours, "loss") and len(_logged(ours, "loss")) == 3
    for (name, a), (_, b) in zip(upstream.model.named_parameters(), ours.model.named_parameters()):
        assert torch.equal(a, b), name
    assert not _logged(ours, "attention/jsd")


def test_attention_term_changes_updates_and_logs_jsd(tmp_path, text_dataset):
    base = _train(
        AttentionGRPOTrainer, AttentionGRPOConfig, tmp_path / "a", text_dataset, attn_coef=0.0, num_iterations=2
    )
    ral = _train(
        AttentionGRPOTrainer, AttentionGRPOConfig, tmp_path / "b", text_dataset, attn_coef=5.0, num_iterations=2
    )
    jsds = _logged(ral, "attention/jsd")
    assert len(jsds) == 3 and jsds[0] < 1e-7 and jsds[1] > 1e-6  # step 2 reuses step 1's rollouts
    assert all(0 < e < 5 for e in _logged(ral, "attention/entropy"))
    diffs = [(a - b).abs().max().item() for a, b in zip(base.model.parameters(), ral.model.parameters())]
    assert max(diffs) > 1e-6


def test_old_attention_travels_aligned_through_shuffle_and_split(tmp_path, text_dataset):
    """steps_per_generation=2 shuffles and splits the generation batch; p_old must stay with its row."""
    model, _ = build_tiny_lm(seed=0)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    seen = []

    class Recording(AttentionGRPOTrainer):
        def _compute_loss(self, model, inputs):
            seen.append({k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)})
            return super()._compute_loss(model, inputs)

    trainer = _train(
        Recording,
        AttentionGRPOConfig,
        tmp_path,
        text_dataset,
        model=model,
        steps_per_generation=2,
        gradient_accumulation_steps=1,
        max_steps=2,
    )
    assert all("old_attention_probs" in batch for batch in seen)
    for batch in seen:  # both halves were scored by the initial parameters
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        with torch.no_grad():
            attn = eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[-1].mean(1)
        rows = batch["completion_ids"].size(1)
        valid = batch["completion_mask"].bool()
        torch.testing.assert_close(batch["old_attention_probs"][valid], attn[:, -rows:][valid], atol=1e-5, rtol=0)
    jsds = _logged(trainer, "attention/jsd")
    assert jsds[0] < 1e-7 and jsds[1] > 1e-6


def test_loss_term_equals_hand_computation(tmp_path, text_dataset):
    model, _ = build_tiny_lm(seed=0)
    trainer = _train(
        AttentionGRPOTrainer,
        AttentionGRPOConfig,
        tmp_path,
        text_dataset,
        model=model,
        max_steps=1,
        attn_coef=1.0,
        num_iterations=2,
        loss_type="grpo",
    )
    batch = trainer._buffered_inputs[0]
    gen = torch.Generator().manual_seed(0)
    batch = dict(
        batch, old_attention_probs=torch.softmax(torch.randn(batch["old_attention_probs"].shape, generator=gen), -1)
    )
    trainer.model.eval()  # eval: no gradient-accumulation scaling in TRL's normalisation
    with torch.no_grad():
        with_term = trainer._compute_loss(trainer.model, batch)
        trainer.attn_coef = 0.0
        without = trainer._compute_loss(trainer.model, batch)
        trainer.attn_coef = 2.5
        scaled = trainer._compute_loss(trainer.model, batch)
        eager, _ = build_tiny_lm(seed=0, attn_implementation="eager")  # not deepcopy: TRL patches model.forward
        eager.load_state_dict(trainer.model.state_dict())
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        rows = batch["completion_ids"].size(1)
        probs = eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[-1].mean(1)[:, -rows:]
    per_token = batch["advantages"][:, None] * jsd(
        attention_policy(probs), attention_policy(batch["old_attention_probs"])
    )
    cm = batch["completion_mask"].float()
    hand = ((per_token * cm).sum(-1) / cm.sum(-1).clamp(min=1)).mean()  # loss_type="grpo": per-sequence mean
    assert hand.abs() > 1e-6
    torch.testing.assert_close(with_term - without, hand, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(scaled - without, 2.5 * hand, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"])
@pytest.mark.parametrize("training", [True, False])
def test_normalisation_matches_trl_policy_loss(tmp_path, text_dataset, loss_type, training):
    """At ratio 1 TRL's per-token policy loss is exactly -A, so TRL's own loss is its normaliser applied to -A."""
    model, tokenizer = build_tiny_lm(seed=0)
    args = trainer_args(
        AttentionGRPOConfig,
        tmp_path,
        loss_type=loss_type,
        steps_per_generation=4,
        gradient_accumulation_steps=2,
        beta=0.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGRPOTrainer(
            model=model, reward_funcs=length_reward, args=args, train_dataset=text_dataset, processing_class=tokenizer
        )
    trainer.model.train(training)
    trainer.current_gradient_accumulation_steps = 2
    gen = torch.Generator().manual_seed(1)
    mask = torch.ones(4, 6)
    mask[1, 3:] = 0
    mask[3, 1:] = 0
    logps = -torch.rand(4, 6, generator=gen)
    inputs = {
        "prompt_ids": torch.ones(4, 3, dtype=torch.long),
        "prompt_mask": torch.ones(4, 3, dtype=torch.long),
        "completion_ids": torch.ones(4, 6, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": torch.randn(4, generator=gen),
        "old_per_token_logps": logps,
        "num_items_in_batch": mask.sum() * 3,
    }
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logps.clone(), torch.zeros(4, 6), None)
    upstream = GRPOTrainer._compute_loss(trainer, trainer.model, inputs)
    ours = aggregate_like_trl(trainer, -inputs["advantages"][:, None].expand(4, 6), mask, inputs)
    torch.testing.assert_close(ours, upstream, atol=1e-7, rtol=1e-6)


def test_inert_setting_warns_once_and_active_setting_does_not(tmp_path, text_dataset):
    model, tokenizer = build_tiny_lm(seed=0)
    kwargs = dict(reward_funcs=length_reward, train_dataset=text_dataset, processing_class=tokenizer)
    with pytest.warns(UserWarning, match="has no effect.*num_iterations > 1"):
        AttentionGRPOTrainer(model=model, args=trainer_args(AttentionGRPOConfig, tmp_path), **kwargs)
    for overrides in ({"num_iterations": 2}, {"steps_per_generation": 2}, {"attn_coef": 0.0}):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            AttentionGRPOTrainer(model=model, args=trainer_args(AttentionGRPOConfig, tmp_path, **overrides), **kwargs)
        assert not [w for w in caught if "has no effect" in str(w.message)], overrides


def test_unsupported_attention_is_a_clear_error_at_construction(tmp_path, text_dataset):
    model, tokenizer = build_tiny_lm(seed=0)
    model.config._attn_implementation_internal = "no_such_kernel"  # flex, flash, ... are capturable since 0.2
    with pytest.raises(CaptureError, match="no_such_kernel.*Qwen2ForCausalLM"):
        AttentionGRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            train_dataset=text_dataset,
            processing_class=tokenizer,
            args=trainer_args(AttentionGRPOConfig, tmp_path, num_iterations=2),
        )


def test_gradient_checkpointing_on_off_same_training(tmp_path, text_dataset):
    runs = [
        _train(
            AttentionGRPOTrainer,
            AttentionGRPOConfig,
            tmp_path / str(gc),
            text_dataset,
            max_steps=2,
            num_iterations=2,
            attn_coef=5.0,
            gradient_checkpointing=gc,
        )
        for gc in (False, True)
    ]
    assert _logged(runs[0], "attention/jsd")[1] > 1e-6
    torch.testing.assert_close(
        _logged(runs[0], "attention/jsd"), _logged(runs[1], "attention/jsd"), atol=1e-7, rtol=1e-4
    )
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_lora_run_trains_only_adapters(tmp_path, text_dataset):
    peft = pytest.importorskip("peft")
    model, _ = build_tiny_lm(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"])
    trainer = _train(
        AttentionGRPOTrainer,
        AttentionGRPOConfig,
        tmp_path,
        text_dataset,
        model=model,
        max_steps=2,
        num_iterations=2,
        attn_coef=5.0,
        learning_rate=5e-2,
        trainer_kwargs={"peft_config": lora},
    )
    assert isinstance(trainer.model, peft.PeftModel)
    assert _logged(trainer, "attention/jsd")[1] > 1e-7
    changed = {n for n, p in trainer.model.named_parameters() if "lora_" in n and p.requires_grad}
    assert changed and all(not p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" not in n)
    merged = trainer.model.get_base_model()
    for name, param in merged.named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(param, before[key]), name  # the base stays frozen


def test_vlm_run_logs_image_mass(tmp_path):
    model, processor = build_tiny_vlm(seed=0)
    args = trainer_args(AttentionGRPOConfig, tmp_path, max_steps=2, num_iterations=2, attn_coef=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=args,
            processing_class=processor,
            train_dataset=make_grounding_dataset(8, seed=0),
        )
        trainer.train()
    masses = _logged(trainer, "attention/image_mass")
    assert len(masses) == 2 and all(0.0 < m < 1.0 for m in masses)
    assert _logged(trainer, "attention/jsd")[1] > 1e-7


def test_fallback_forward_gives_the_same_old_attention(tmp_path, text_dataset, monkeypatch):
    """If TRL ran old logps without our capture seeing it, one extra no-grad forward must give the same p_old."""
    model, tokenizer = build_tiny_lm(seed=0)
    args = trainer_args(AttentionGRPOConfig, tmp_path, num_iterations=2, gradient_accumulation_steps=1)
    trainer = AttentionGRPOTrainer(
        model=model, reward_funcs=length_reward, args=args, train_dataset=text_dataset, processing_class=tokenizer
    )
    batch = next(iter(trainer.get_train_dataloader()))
    torch.manual_seed(0)
    captured = trainer._generate_and_score_completions(batch)
    # pretend the prediction missed: nothing captured in TRL's pass
    monkeypatch.setattr("trl_attention.ral.scoring.scores_old_logps", lambda trainer: False)
    calls = []
    original = GRPOTrainer._get_per_token_logps_and_entropies
    try:
        GRPOTrainer._get_per_token_logps_and_entropies = lambda self, *a, **k: (
            calls.append(1) or original(self, *a, **k)
        )
        torch.manual_seed(0)
        fallback = trainer._generate_and_score_completions(batch)
    finally:
        GRPOTrainer._get_per_token_logps_and_entropies = original
    assert len(calls) == 2  # TRL's old-logps pass + our one extra pass
    assert torch.equal(captured["completion_ids"], fallback["completion_ids"])
    torch.testing.assert_close(fallback["old_attention_probs"], captured["old_attention_probs"], atol=1e-6, rtol=0)
