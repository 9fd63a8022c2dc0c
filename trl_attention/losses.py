"""Attention-distribution losses: RAL's attention policy and the Jensen-Shannon divergence (docs/papers.md
section 1)."""

from __future__ import annotations

import math

import torch

__all__ = ["DIVERGENCES", "LN2", "attention_divergence", "attention_entropy", "attention_policy", "jsd", "kl"]

LN2 = math.log(2.0)


def attention_policy(probs: torch.Tensor) -> torch.Tensor:
    """Restrict captured rows to the positions before each query and renormalise.

    probs: (B, C, T) captured rows, row r being absolute query position T - C + r. Keys at or after the query
    (the token itself, and anything a bidirectional model might see) are zeroed; the rest sums to 1. A row with no
    mass before its query (the first token, a fully padded row) stays all zero.
    """
    if probs.dim() != 3:
        raise ValueError(f"attention_policy expects (B, C, T) rows, got shape {tuple(probs.shape)}")
    _, rows, length = probs.shape
    if rows > length:
        raise ValueError(f"attention_policy got {rows} rows for only {length} key positions")
    query_pos = torch.arange(length - rows, length, device=probs.device)[:, None]
    before = torch.arange(length, device=probs.device)[None, :] < query_pos
    masked = probs * before
    total = masked.sum(dim=-1, keepdim=True)
    return masked / torch.where(total > 0, total, torch.ones_like(total))


class _JSD(torch.autograd.Function):
    """JSD with a hand-written backward: saves only p and q, and gives finite gradients where p or q is zero."""

    @staticmethod
    def forward(ctx, p, q):
        mix = 0.5 * (p + q)
        value = 0.5 * (torch.xlogy(p, p) - torch.xlogy(p, mix) + torch.xlogy(q, q) - torch.xlogy(q, mix)).sum(-1)
        ctx.save_for_backward(p, q)
        return value.clamp(0.0, LN2)  # rounding can leave -1e-9 or ln2 + 1e-9

    @staticmethod
    def backward(ctx, grad):
        p, q = ctx.saved_tensors
        mix = 0.5 * (p + q)
        safe_mix = torch.where(mix > 0, mix, torch.ones_like(mix))
        grad = grad.unsqueeze(-1)

        def side(x):  # dJSD/dx = 1/2 log(x / m); defined as 0 where x == 0 (the one-sided limit is -inf)
            safe_x = torch.where(x > 0, x, torch.ones_like(x))
            return torch.where(x > 0, 0.5 * (torch.log(safe_x) - torch.log(safe_mix)), torch.zeros_like(x)) * grad

        grad_p = side(p) if ctx.needs_input_grad[0] else None
        grad_q = side(q) if ctx.needs_input_grad[1] else None
        return grad_p, grad_q


def jsd(p: torch.Tensor, q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Jensen-Shannon divergence 1/2 KL(p||m) + 1/2 KL(q||m), m = (p+q)/2, natural log, in [0, ln 2].

    Zeros are safe (0 log 0 = 0, zero gradient at a zero entry). Computed in fp32 (fp64 stays fp64).
    """
    if p.shape != q.shape:
        raise ValueError(f"jsd needs equal shapes, got {tuple(p.shape)} and {tuple(q.shape)}")
    acc = torch.float64 if torch.float64 in (p.dtype, q.dtype) else torch.float32
    p, q = p.to(acc).movedim(dim, -1), q.to(acc).movedim(dim, -1)
    return _JSD.apply(p, q)


def attention_entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy (nats) of attention distributions, 0 log 0 = 0."""
    return -torch.xlogy(p, p).sum(dim)


def kl(p: torch.Tensor, q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """KL(p || q) in nats, 0 log 0 = 0, in fp32 (fp64 stays fp64). Where q underflowed to 0 under p > 0, q is
    taken as 1e-30 (a large finite value, not inf): attention rows of one model under two parameter sets share
    their support, so this only guards rounding."""
    if p.shape != q.shape:
        raise ValueError(f"kl needs equal shapes, got {tuple(p.shape)} and {tuple(q.shape)}")
    acc = torch.float64 if torch.float64 in (p.dtype, q.dtype) else torch.float32
    p, q = p.to(acc).movedim(dim, -1), q.to(acc).movedim(dim, -1)
    support = p > 0  # where(): entries with p == 0 add 0 and get a 0 gradient (d/dp p log p is -inf at 0)
    safe_p = torch.where(support, p, torch.ones_like(p))
    terms = torch.where(support, p * (torch.log(safe_p) - torch.log(q.clamp_min(1e-30))), torch.zeros_like(p))
    return terms.sum(-1).clamp_min(0.0)


# name -> (p_theta, p_old) -> per-row divergence; `attn_divergence` of RALArguments.
DIVERGENCES = {
    "jsd": lambda p_theta, p_old: jsd(p_theta, p_old),
    "kl": lambda p_theta, p_old: kl(p_old, p_theta),
    "reverse_kl": lambda p_theta, p_old: kl(p_theta, p_old),
}


def attention_divergence(name: str, p_theta: torch.Tensor, p_old: torch.Tensor) -> torch.Tensor:
    """The per-row divergence `name` of DIVERGENCES between the attention policies."""
    return DIVERGENCES[name](p_theta, p_old)
