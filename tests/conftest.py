"""Shared fixtures: TRL configs and data for fast CPU trainer tests."""

import contextlib
import os

import pytest
import torch
from datasets import Dataset

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not torch.cuda.is_available():
    # The Triton kernel tests run in Triton's CPU interpreter, which must be chosen before anything imports triton
    # (importing trl/transformers does, via torch._dynamo): so here, before any test module is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

PROMPTS = ["the red square is", "what colour is the circle", "where is the blue triangle", "name a shape"]


def length_reward(completions, **kwargs):
    """Dense, varied reward so GRPO advantages are non-zero with a random tiny model."""
    return [len(set(c if isinstance(c, str) else c[0]["content"])) / 10.0 for c in completions]


@pytest.fixture
def text_dataset():
    return Dataset.from_dict({"prompt": PROMPTS * 4})


def trainer_args(config_cls, output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir), per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
        max_steps=3, learning_rate=1e-2, report_to=[], logging_steps=1, seed=0, save_strategy="no", bf16=False,
        use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    values.update(overrides)
    return config_cls(**values)


@contextlib.contextmanager
def count_forwards(**modules):
    """{name: number of forward calls} of each module while the block runs."""
    calls = dict.fromkeys(modules, 0)
    handles = [module.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
               for name, module in modules.items()]  # fmt: skip
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


# A teacher of another depth, width and head count than the tiny student (the 32B -> 7B situation in miniature).
TEACHER_SHAPE = {"num_hidden_layers": 3, "hidden_size": 96, "intermediate_size": 192, "num_attention_heads": 6,
                 "num_key_value_heads": 3}  # fmt: skip


def hand_jsd(p, q):
    """JSD along the last dim, written out: an independent reference for trl_attention.losses.jsd."""
    m = 0.5 * (p + q)
    kl = lambda a: (a * (torch.log(a.clamp_min(1e-30)) - torch.log(m.clamp_min(1e-30)))).sum(-1)
    return 0.5 * kl(p) + 0.5 * kl(q)
