"""`attn_reference="group"`: the group target by hand, the term against eager attention, and that it acts without
rollout reuse (where the paper's rollout reference has exactly zero gradient)."""

import warnings

import pytest
import torch

from tests.testing_utils import eager_completion_heads, length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.losses import jsd
from trl_attention.ral.group_reference import group_attention_target, prompt_attention
from trl_attention.tiny import build_tiny_lm


def test_group_target_by_hand():
    # 2 groups of 2 rollouts, prompt of 2 keys, completions of 2 tokens (row 3's second token is padding)
    probs = torch.tensor(
        [
            [[0.2, 0.2, 0.6, 0.0], [0.1, 0.3, 0.3, 0.3]],
            [[0.5, 0.0, 0.5, 0.0], [0.0, 0.5, 0.25, 0.25]],
            [[0.3, 0.1, 0.6, 0.0], [0.4, 0.4, 0.1, 0.1]],
            [[0.25, 0.75, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0]],
        ]
    )
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]])
    rows = prompt_attention(probs, 2)
    torch.testing.assert_close(rows[0, 0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(rows[0, 1], torch.tensor([0.25, 0.75]))
    a0, a2, a3 = torch.tensor([0.375, 0.625]), torch.tensor([0.625, 0.375]), torch.tensor([0.25, 0.75])
    target = group_attention_target(probs, 2, mask, torch.tensor([1.0, -1.0, 2.0, 1.0]), 2)
    torch.testing.assert_close(target[:2], a0.expand(2, 2))  # group 1: only rollout 0 has A > 0
    torch.testing.assert_close(target[2:], ((2 * a2 + a3) / 3).expand(2, 2))  # row 3's padded token left out
    target = group_attention_target(probs, 2, mask, torch.tensor([0.0, 0.0, 1.0, -1.0]), 2)
    assert target[:2].abs().sum() == 0  # no A > 0: no target
    with pytest.raises(ValueError, match="whole groups"):
        group_attention_target(probs, 2, mask, torch.ones(4), 3)


def _trainer(tmp_path, text_dataset, **overrides):
    model, tokenizer = build_tiny_lm(seed=0)
    values = dict(max_steps=1, per_device_train_batch_size=8, loss_type="grpo", attn_reference="group")
    args = trainer_args(AttentionGRPOConfig, tmp_path, **{**values, **overrides})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGRPOTrainer(
            model=model, reward_funcs=length_reward, args=args, train_dataset=text_dataset, processing_class=tokenizer
        )
    return trainer


def test_group_term_equals_hand_computation_and_acts_without_reuse(tmp_path, text_dataset):
    trainer = _trainer(tmp_path, text_dataset, learning_rate=0.0)  # weights stay the rollout policy's
    assert trainer.num_iterations == 1  # no reuse: the paper's term would be exactly 0 with 0 gradient
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    batch = dict(trainer._buffered_inputs[0])
    prompt_len = batch["prompt_ids"].size(1)
    rows = eager_completion_heads(initial, batch).mean(1)
    advantages = batch["advantages"]
    assert (advantages > 0).any() and (advantages < 0).any()
    # the shuffled batch: regroup rows by prompt (the rollouts of one prompt share prompt_ids) to rebuild q_g by hand
    target = batch["group_attention_target"]
    for i in range(len(target)):
        group = [j for j in range(len(target)) if torch.equal(batch["prompt_ids"][j], batch["prompt_ids"][i])]
        cm = batch["completion_mask"][group].float()
        per_rollout = (prompt_attention(rows[group], prompt_len) * cm[..., None]).sum(1) / cm.sum(1)[:, None]
        w = advantages[group].clamp(min=0)
        expected = (w[:, None] * per_rollout).sum(0) / w.sum() if w.sum() > 0 else torch.zeros(prompt_len)
        torch.testing.assert_close(target[i], expected, atol=1e-6, rtol=1e-5)
    assert (target.sum(-1) > 0).any()
    # the term against eager attention: grpo's per-sequence mean, then the batch mean
    per_token = jsd(prompt_attention(rows, prompt_len), target[:, None, :].expand(-1, rows.shape[1], -1))
    per_token = per_token * (target.sum(-1, keepdim=True) > 0)
    cm = batch["completion_mask"].float()
    hand = ((per_token * cm).sum(-1) / cm.sum(-1).clamp(min=1)).mean()
    assert hand > 1e-7  # a random tiny model attends almost uniformly: small, but not 0
    trainer.model.eval()
    losses, grads = [], []
    for coef in (1.0, 0.0):
        trainer.attn_coef = coef
        trainer.model.zero_grad()
        loss = trainer._compute_loss(trainer.model, batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[0] - losses[1], hand, atol=1e-6, rtol=1e-4)
    assert (grads[0] - grads[1]).norm() > 1e-6  # a first-order term: it moves the weights without reuse
    assert any("attention/group_jsd" in h for h in trainer.state.log_history)


def test_rollout_reference_has_zero_gradient_without_reuse(tmp_path, text_dataset):
    """The contrast the group reference exists for: the paper's term at the rollout policy."""
    trainer = _trainer(tmp_path, text_dataset, learning_rate=0.0, attn_reference="rollout")
    trainer.train()
    batch = dict(trainer._buffered_inputs[0])
    assert "group_attention_target" not in batch and "old_attention_probs" not in batch
    trainer.model.eval()
    grads = []
    for coef in (1.0, 0.0):
        trainer.attn_coef = coef
        trainer.model.zero_grad()
        trainer._compute_loss(trainer.model, batch).backward()
        grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]))
    assert (grads[0] - grads[1]).abs().max() < 1e-7


def test_group_reference_config_errors(tmp_path, text_dataset):
    with pytest.raises(ValueError, match="attn_reference must be one of"):
        trainer_args(AttentionGRPOConfig, tmp_path, attn_reference="teacher")
    with pytest.raises(ValueError, match="attn_heads='mean' and attn_layers=None"):
        trainer_args(AttentionGRPOConfig, tmp_path, attn_reference="group", attn_heads="per_head")
    with pytest.raises(ValueError, match="attn_heads='mean' and attn_layers=None"):
        trainer_args(AttentionGRPOConfig, tmp_path, attn_reference="group", attn_layers=[0, -1])
    with pytest.raises(ValueError, match="whole groups on each device"):
        _trainer(tmp_path, text_dataset, per_device_train_batch_size=2, num_generations=4, gradient_accumulation_steps=2)
