"""Helpers shared by the test modules (import them: `from tests.testing_utils import trainer_args`)."""

import contextlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # the repository: README.md, examples/, benchmarks/, scripts/

PROMPTS = ["the red square is", "what colour is the circle", "where is the blue triangle", "name a shape"]


def length_reward(completions, **kwargs):
    """Dense, varied reward so GRPO advantages are non-zero with a random tiny model."""
    return [len(set(c if isinstance(c, str) else c[0]["content"])) / 10.0 for c in completions]


def trainer_args(config_cls, output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=3,
        learning_rate=1e-2,
        report_to=[],
        logging_steps=1,
        seed=0,
        save_strategy="no",
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    values.update(overrides)
    return config_cls(**values)


@contextlib.contextmanager
def count_forwards(**modules):
    """{name: number of forward calls} of each module while the block runs."""
    calls = dict.fromkeys(modules, 0)
    handles = [
        module.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
        for name, module in modules.items()
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


# A teacher of another depth, width and head count than the tiny student (the 32B -> 7B situation in miniature).
TEACHER_SHAPE = {
    "num_hidden_layers": 3,
    "hidden_size": 96,
    "intermediate_size": 192,
    "num_attention_heads": 6,
    "num_key_value_heads": 3,
}


def hand_jsd(p, q):
    """JSD along the last dim, written out: an independent reference for trl_attention.losses.jsd."""
    m = 0.5 * (p + q)
    kl = lambda a: (a * (torch.log(a.clamp_min(1e-30)) - torch.log(m.clamp_min(1e-30)))).sum(-1)
    return 0.5 * kl(p) + 0.5 * kl(q)
