"""jsd and attention_policy against hand computations."""

import math

import pytest
import torch

from trl_attention.losses import LN2, attention_entropy, attention_policy, jsd


def _random_dist(*shape, seed=0, dtype=torch.float64):
    return torch.softmax(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), -1)


def test_jsd_hand_value():
    p = torch.tensor([1.0, 0.0], dtype=torch.float64)
    q = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert jsd(p, q).item() == pytest.approx(math.log(2), abs=1e-12)  # disjoint supports: the ln 2 bound
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)
    q = torch.tensor([0.9, 0.1], dtype=torch.float64)
    m = [0.7, 0.3]
    hand = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + 0.5 * (
        0.9 * math.log(0.9 / m[0]) + 0.1 * math.log(0.1 / m[1])
    )
    assert jsd(p, q).item() == pytest.approx(hand, abs=1e-12)


def test_jsd_gradcheck_float64():
    p, q = _random_dist(3, 5, seed=1).requires_grad_(), _random_dist(3, 5, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(jsd, (p, q))


def test_jsd_zero_with_zero_gradient_at_equality():
    p = _random_dist(4, 7, seed=3).requires_grad_()
    value = jsd(p, p.detach())
    assert torch.all(value.abs() < 1e-15)
    (grad,) = torch.autograd.grad(value.sum(), p)
    assert torch.all(grad == 0)


def test_jsd_symmetric_bounded_and_safe_with_zeros():
    p, q = _random_dist(6, 9, seed=4), _random_dist(6, 9, seed=5)
    p[:, :3] = 0  # exact zeros, e.g. future keys
    p = p / p.sum(-1, keepdim=True)
    torch.testing.assert_close(jsd(p, q), jsd(q, p), atol=1e-15, rtol=0)
    value = jsd(p.requires_grad_(), q)
    assert torch.all(value >= 0) and torch.all(value <= LN2)
    (grad,) = torch.autograd.grad(value.sum(), p)
    assert torch.isfinite(grad).all() and torch.all(grad[:, :3] == 0)


def test_jsd_dim_argument_and_dtype():
    p, q = _random_dist(2, 5, 3, seed=6), _random_dist(2, 5, 3, seed=7)
    torch.testing.assert_close(jsd(p, q, dim=1), jsd(p.transpose(1, 2), q.transpose(1, 2)))
    assert jsd(p.float().bfloat16(), q.bfloat16()).dtype == torch.float32


def test_attention_policy_rows_sum_to_one_over_preceding_positions():
    probs = _random_dist(2, 4, 10, seed=8)
    policy = attention_policy(probs)
    for r in range(4):
        query = 10 - 4 + r
        assert torch.all(policy[:, r, query:] == 0)
        torch.testing.assert_close(policy[:, r].sum(-1), torch.ones(2, dtype=torch.float64))
        torch.testing.assert_close(
            policy[:, r, :query], probs[:, r, :query] / probs[:, r, :query].sum(-1, keepdim=True)
        )


def test_attention_policy_empty_row_stays_zero_and_checks_shape():
    probs = torch.zeros(1, 2, 3)
    probs[0, 1] = torch.tensor([0.0, 0.0, 1.0])  # all mass on itself
    assert torch.all(attention_policy(probs) == 0)
    with pytest.raises(ValueError, match=r"\(B, C, T\)"):
        attention_policy(torch.ones(3, 3))
    with pytest.raises(ValueError, match="rows"):
        attention_policy(torch.ones(1, 4, 3))


def test_entropy_hand_value():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(attention_entropy(p), torch.tensor([math.log(2), 0.0]))
