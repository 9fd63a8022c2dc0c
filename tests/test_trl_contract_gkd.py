"""The TRL contract of GKDTrainer (the GRPOTrainer contract is tests/test_trl_contract.py)."""

from types import SimpleNamespace

import pytest
import torch
import trl
from datasets import Dataset

from tests.test_trl_contract import SEE
from tests.testing_utils import RecordingDict, check_metrics_are_averaged, record_calls
from trl_attention import trl_internals as ti
from trl_attention.tiny import build_tiny_lm

pytestmark = pytest.mark.filterwarnings("ignore")  # TRL's experimental/deprecation notices, not contracts
GKDTrainer = ti.GKDTrainer


# -- attributes ---------------------------------------------------------------------------------------------------
# -- GKD ----------------------------------------------------------------------------------------------------------
def test_gkd_contract(tmp_path):
    student, tokenizer = build_tiny_lm(seed=0)
    chat = [("the red square is", "red"), ("name a shape", "circle blue")]
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]} for p, a in chat]
    config = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=2, bf16=False)
    args = ti.GKDConfig(**config, max_new_tokens=3, lmbda=1.0, save_strategy="no", disable_tqdm=True)
    kwargs = dict(model=student, teacher_model=build_tiny_lm(seed=1)[0], args=args, processing_class=tokenizer)
    trainer = GKDTrainer(**kwargs, train_dataset=Dataset.from_list(rows))
    missing = [name for name in ti.GKD_ATTRIBUTES if not hasattr(trainer, name)]
    assert not missing, f"TRL {trl.__version__}'s GKDTrainer no longer has {missing}; {SEE}"
    batch = trainer.data_collator(rows)
    assert set(ti.GKD_BATCH_KEYS) <= set(batch), f"GKD's collator gives {sorted(batch)}; {SEE}"
    recorded, generated = RecordingDict(batch), RecordingDict(batch)
    loss, outputs = GKDTrainer.compute_loss(trainer, trainer.model, recorded, return_outputs=True)
    assert loss.dim() == 0 and outputs.logits.shape[:2] == batch["input_ids"].shape

    def generate(input_ids, **kwargs):  # a model with nothing but `generate`, like the VLM override's wrapper
        return SimpleNamespace(sequences=torch.cat([input_ids, torch.full((input_ids.size(0), 3), 7)], 1))

    generate_only, config = SimpleNamespace(generate=generate), trainer.generation_config
    ids, mask, labels = GKDTrainer.generate_on_policy_outputs(generate_only, generated, config)
    width = batch["prompts"].size(1) + 3
    assert ids.shape == mask.shape == labels.shape == (2, width) and (labels[:, : width - 3] == -100).all()
    # GKD's public API kept: a static method stays static (TRL's tests call it on the class), same outputs
    from trl_attention import AttentionGKDTrainer

    for name, value in vars(GKDTrainer).items():
        if isinstance(value, (staticmethod, classmethod)) and name in vars(AttentionGKDTrainer):
            assert type(vars(AttentionGKDTrainer)[name]) is type(value), f"{name} is no longer a {type(value).__name__}"
    ours = AttentionGKDTrainer.generate_on_policy_outputs(generate_only, dict(batch), config)
    assert all(torch.equal(a, b) for a, b in zip(ours, (ids, mask, labels)))
    undeclared = (recorded.read | generated.read) - set(ti.GKD_BATCH_KEYS)
    assert not undeclared, f"TRL's GKD now reads batch keys {sorted(undeclared)}; {SEE}"
    calls = []  # the overrides are reached through `self`: one on-policy training step calls both
    record_calls(trainer, ti.GKD_OVERRIDES, calls)
    trainer.current_gradient_accumulation_steps = 1  # set by transformers' training loop, skipped here
    trainer.training_step(trainer.model, dict(batch))
    names = [call.name for call in calls]
    assert names == ["generate_on_policy_outputs", "compute_loss"], f"GKD's training step called {names}; {SEE}"
    assert calls[0].args[2] is trainer.generation_config  # where the VLM override's suppress_tokens go
    check_metrics_are_averaged(trainer)
