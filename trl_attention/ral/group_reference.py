"""`attn_reference="group"`: a first-order reference for RAL's attention policy (beyond the paper, opt-in).

RAL's reference is the rollout's own attention p_old, so the term is second order at the rollout policy
(dJSD/dp = 0 at p = p_old) and acts only on reused rollouts. The group reference gives every completion token a
target that differs from its own attention: the advantage-weighted mean attention over the prompt's keys of its
group's rollouts (the prompt is shared by the group, so its keys are too). With A+ = max(A, 0):

    a_i    = mean over rollout i's completion tokens t of p_i^t restricted to the prompt's keys, renormalised
    q_g    = sum_i A+_i a_i / sum_i A+_i              (the rollouts that beat their group's mean reward)
    term   = attn_coef * aggregate_t( D(p_theta_i^t | prompt keys  ||  q_g) )   for every rollout i of group g

A group whose advantages are all <= 0 (every reward equal) has no target and adds nothing, as it adds nothing to
GRPO's policy loss. q_g is computed once per generation batch, from the rollout policy's attention (the scoring
capture), before TRL shuffles the batch: it travels as `group_attention_target` (B, P), all zeros for no target.
"""

from __future__ import annotations

import torch

__all__ = ["ATTN_REFERENCES", "group_attention_target", "prompt_attention"]

ATTN_REFERENCES = ("rollout", "group")  # `attn_reference`: the paper's p_old, or the group target above


def prompt_attention(probs: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """(B, C, T) attention rows of the completion tokens -> (B, C, P) their attention on the first `prompt_len`
    keys (the prompt's, padding included: padded keys carry no mass), renormalised; a row with no mass stays 0."""
    if probs.dim() != 3 or not 0 < prompt_len <= probs.shape[-1]:
        raise ValueError(f"prompt_attention expects (B, C, T) rows and 0 < prompt_len <= T, got {tuple(probs.shape)}")
    rows = probs[..., :prompt_len]
    total = rows.sum(-1, keepdim=True)
    return rows / torch.where(total > 0, total, torch.ones_like(total))


@torch.no_grad()
def group_attention_target(
    probs: torch.Tensor,
    prompt_len: int,
    completion_mask: torch.Tensor,
    advantages: torch.Tensor,
    num_generations: int,
) -> torch.Tensor:
    """The target q_g of each rollout's group, (B, P); all zeros for a rollout whose group has no A > 0.

    probs: (B, C, T) rollout-policy attention of the completion tokens; completion_mask: (B, C); advantages: (B,)
    or (B, C) (a token-level advantage is averaged over the completion); rows come in groups of `num_generations`
    consecutive rollouts of one prompt, as TRL generates them."""
    batch = probs.shape[0]
    if batch % num_generations:
        raise ValueError(f"{batch} rollouts are not whole groups of num_generations={num_generations}")
    mask = completion_mask.to(probs.dtype)
    rows = prompt_attention(probs, prompt_len)
    per_rollout = (rows * mask[..., None]).sum(1) / mask.sum(1).clamp(min=1)[:, None]  # (B, P)
    adv = advantages.to(probs.dtype)
    if adv.dim() == 2:
        adv = (adv * mask).sum(1) / mask.sum(1).clamp(min=1)
    weights = adv.clamp(min=0).view(-1, num_generations)  # (groups, G)
    total = weights.sum(1, keepdim=True)
    target = (weights[..., None] * per_rollout.view(-1, num_generations, prompt_len)).sum(1)
    target = target / torch.where(total > 0, total, torch.ones_like(total))  # groups without A > 0: zeros
    return target.repeat_interleave(num_generations, dim=0)
