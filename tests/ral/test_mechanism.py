"""RAL's mechanism on a tiny model: with fixed advantages and reused rollouts, optimiser steps on the RAL term alone
pull the attention of A > 0 rollouts back toward their rollout attention p_old and push A < 0 ones away, more so
for a larger attn_coef; the term's parameter gradient equals a hand computation
(dJSD(p || q) / dp = 1/2 log(2p / (p + q)), pushed through eager attention by autograd)."""

import math
import warnings

import torch

from tests.testing_utils import length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.tiny import build_tiny_lm

ADVANTAGES = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0])


def _setup(tmp_path, text_dataset, advantages=ADVANTAGES):
    """A trainer whose buffered batch holds rollouts of the initial weights (p_old, old logps) with `advantages`."""
    model, tokenizer = build_tiny_lm(seed=0)
    _sharpen(model)
    args = trainer_args(
        AttentionGRPOConfig, tmp_path, max_steps=1, per_device_train_batch_size=8, num_iterations=2, learning_rate=0.0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGRPOTrainer(
            model=model, reward_funcs=length_reward, args=args, train_dataset=text_dataset, processing_class=tokenizer
        )
        trainer.train()
    batch = dict(trainer._buffered_inputs[0])
    batch["advantages"] = advantages.clone()
    return trainer, batch


def _sharpen(model, factor=4.0):
    """Scale the queries and keys: a random tiny model attends almost uniformly, which leaves the term tiny."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(factor)


def _policy_rows(model, batch):
    """Eager attention of the completion tokens (final layer, head mean) -> the attention policy by hand: keys before
    each query, renormalised."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    rows = batch["completion_ids"].size(1)
    return _policy(model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[-1].mean(1)[:, -rows:])


def _policy(probs):
    """(B, C, T) captured rows -> the keys before each query, renormalised (attention_policy, by hand)."""
    rows, length = probs.shape[-2:]
    probs = probs * (torch.arange(length)[None, :] < torch.arange(length - rows, length)[:, None])
    return probs / probs.sum(-1, keepdim=True)


def _jsd_by_hand(p, q):
    m = 0.5 * (p + q)
    return 0.5 * (torch.xlogy(p, p) - torch.xlogy(p, m) + torch.xlogy(q, q) - torch.xlogy(q, m)).sum(-1)


def _perturbed_eager(trainer, scale=0.2, seed=1):
    """The trainer's weights moved off the rollout policy (as a first GRPO update would), and an eager copy."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * p.abs().mean().clamp(min=1e-3))
    eager, _ = build_tiny_lm(seed=0, attn_implementation="eager")
    eager.load_state_dict(trainer.model.state_dict())
    return eager


def _term(trainer, batch):
    """The RAL term of the trainer's loss alone: loss(attn_coef) - loss(0) (eval mode: no accumulation scaling)."""
    coef = trainer.attn_coef
    with_term = trainer._compute_loss(trainer.model, batch)
    trainer.attn_coef = 0.0
    without = trainer._compute_loss(trainer.model, batch)
    trainer.attn_coef = coef
    return with_term - without


def test_term_gradient_equals_hand_computation(tmp_path, text_dataset):
    trainer, batch = _setup(tmp_path, text_dataset)
    eager = _perturbed_eager(trainer)
    trainer.model.eval()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(_term(trainer, batch), params, allow_unused=True)
    # by hand: d term / d p_theta[i, t] = A_i * w_i * 1/2 log(2 p / (p + q)), w_i = 1 / (|o_i| * B) for loss_type grpo
    q = _policy(batch["old_attention_probs"])
    p = _policy_rows(eager, batch)
    cm = batch["completion_mask"].float()
    w = ADVANTAGES[:, None] * cm / cm.sum(1, keepdim=True) / len(cm)
    safe = torch.where(p > 0, p, torch.ones_like(p))
    dp = torch.where(p > 0, 0.5 * torch.log(2 * safe / (safe + q)), torch.zeros_like(p)) * w[..., None]
    eager_params = dict(eager.named_parameters())
    names = [n for n, p_ in trainer.model.named_parameters() if p_.requires_grad]
    hand = torch.autograd.grad(p, [eager_params[n] for n in names], grad_outputs=dp, allow_unused=True)
    total, checked = 0.0, 0
    for name, got, expected in zip(names, grads, hand):
        if expected is None:
            assert got is None or got.abs().max() < 1e-9, name
            continue
        torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-3, msg=name)
        total, checked = total + expected.norm().item() ** 2, checked + 1
    assert checked > 0 and math.sqrt(total) > 1e-5  # off the rollout policy the term has a gradient


def _move(tmp_path, text_dataset, coef, sign, steps=5, lr=0.02):
    """Change of the rollouts' mean JSD(p_theta || p_old) after `steps` SGD steps on the term alone, every
    advantage `sign` (one sign per batch: the rollouts share the weights, so a mixed batch's pulls and pushes
    interfere; the mixed case is the gradient test above)."""
    trainer, batch = _setup(tmp_path, text_dataset, torch.full((8,), sign))
    eager = _perturbed_eager(trainer)
    trainer.attn_coef = coef
    trainer.model.eval()

    def mean_jsd():
        eager.load_state_dict(trainer.model.state_dict())
        with torch.no_grad():
            per_token = _jsd_by_hand(_policy_rows(eager, batch), _policy(batch["old_attention_probs"]))
        cm = batch["completion_mask"].float()
        return ((per_token * cm).sum(1) / cm.sum(1)).mean().item()

    start = mean_jsd()
    assert start > 1e-3  # the perturbation moved the policy off the rollouts'
    optimizer = torch.optim.SGD([p for p in trainer.model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        _term(trainer, batch).backward()
        optimizer.step()
    return mean_jsd() - start


def test_term_alone_pulls_a_positive_rollout_to_p_old_and_pushes_a_negative_one_more_with_coef(tmp_path, text_dataset):
    coefs = (0.5, 2.0, 8.0)
    pulls = [_move(tmp_path / f"pos{c}", text_dataset, c, 1.0) for c in coefs]
    pushes = [_move(tmp_path / f"neg{c}", text_dataset, c, -1.0) for c in coefs]
    assert 0 > pulls[0] > pulls[1] > pulls[2]  # A > 0: toward its rollout attention, further for a larger coef
    assert 0 < pushes[0] < pushes[1] < pushes[2]  # A < 0: away from it
