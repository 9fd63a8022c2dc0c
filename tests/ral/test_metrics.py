"""Attention metrics are global token means, and are left out (not logged as 0.0) when nothing was measured."""

from collections import defaultdict
from types import SimpleNamespace

import torch

from trl_attention.trl_internals import log_global_masked_mean


def _trainer(world: int = 1):
    """What log_global_masked_mean reads: the accelerator's sum over `world` identical ranks, the mode, _metrics."""
    accelerator = SimpleNamespace(reduce=lambda t, reduction: t * world)
    metrics = defaultdict(lambda: defaultdict(list))
    return SimpleNamespace(accelerator=accelerator, model=SimpleNamespace(training=True), _metrics=metrics)


def test_token_mean_over_the_mask():
    trainer = _trainer()
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert log_global_masked_mean(trainer, "attention/jsd", values, mask) == 2.0  # (1 + 2 + 3) / 3 tokens
    assert trainer._metrics["train"]["attention/jsd"] == [2.0]


def test_nothing_measured_logs_nothing():
    trainer = _trainer(world=2)
    values, mask = torch.ones(2, 3), torch.zeros(2, 3)
    assert log_global_masked_mean(trainer, "attention/entropy", values, mask) is None
    assert "attention/entropy" not in trainer._metrics["train"]  # the key is not even created (TRL would log it)
