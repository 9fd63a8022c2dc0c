"""Helpers shared by the test modules (import them: `from tests.testing_utils import trainer_args`)."""

import contextlib
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]  # the repository: README.md, examples/, benchmarks/, scripts/

PROMPTS = ["the red square is", "what colour is the circle", "where is the blue triangle", "name a shape"]


def eager_completion_heads(state_dict, batch, layer: int = -1) -> torch.Tensor:
    """(B, H, C, T) per-head eager attention (`output_attentions`) of a GRPO batch's completion rows, from the tiny
    LM with these parameters: the independent reference the RAL tests compare the captured rows against."""
    from trl_attention.tiny import build_tiny_lm

    eager, _ = build_tiny_lm(seed=0, attn_implementation="eager")
    eager.load_state_dict(state_dict)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    rows = batch["completion_ids"].size(1)
    with torch.no_grad():
        return eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[layer][:, :, -rows:]


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


class RecordingDict(dict):
    """A batch that remembers which keys were read (indexing, `get`, `in`)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        return self.read.add(key) or super().__getitem__(key)

    def get(self, key, default=None):
        return self.read.add(key) or super().get(key, default)

    def __contains__(self, key):
        return self.read.add(key) or super().__contains__(key)


def grpo_trainer(output_dir, model=None, processor=None, dataset=None, reward_funcs=length_reward, **overrides):
    """A plain `trl.GRPOTrainer` on the tiny LM (imports inside: conftest imports this module before triton's
    interpreter flag is set)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from trl_attention.tiny import build_tiny_lm

    if model is None:
        model, processor = build_tiny_lm(seed=0)
    dataset = Dataset.from_dict({"prompt": PROMPTS * 4}) if dataset is None else dataset
    args = trainer_args(GRPOConfig, output_dir, **overrides)
    kwargs = dict(model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset, processing_class=processor)
    trainer = GRPOTrainer(**kwargs)
    trainer.current_gradient_accumulation_steps = 1  # set by transformers' training loop, which these tests skip
    return trainer


def record_calls(trainer, names, calls):
    """Wrap the trainer's methods `names` on the instance: TRL must reach them through `self`."""
    for name in names:

        def wrapper(*args, _name=name, _method=getattr(trainer, name), **kwargs):
            result = _method(*args, **kwargs)
            calls.append(SimpleNamespace(name=_name, args=args, kwargs=kwargs, result=result))
            return result

        setattr(trainer, name, wrapper)


def check_metrics_are_averaged(trainer):
    trainer.model.train()
    trainer._metrics["train"]["contract/probe"].extend([1.0, 3.0])  # what log_global_masked_mean does
    trainer.log({})
    assert trainer.state.log_history[-1]["contract/probe"] == 2.0, "TRL no longer averages _metrics when it logs"


def gkd_args(config_cls, tmp_path, **overrides):
    """GKD-style trainer arguments for the tiny models on CPU (3 steps, 4 new tokens)."""
    values = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        max_steps=3,
        per_device_train_batch_size=2,
        logging_steps=1,
        seed=0,
        save_strategy="no",
        disable_tqdm=True,
        max_new_tokens=4,
        bf16=False,
    )
    values.update(overrides)
    return config_cls(**values)
