"""Supervised warm start of the tiny VLM with TRL's `SFTTrainer` (the papers' SFT-then-RL pipeline in miniature).

Shared by the demo and `benchmarks/evidence.py`. The rows become prompt-completion pairs (loss on the completion
only, TRL's default for them); the tiny processor works with SFTTrainer as it is (it returns `mm_token_type_ids`,
which TRL's vision collator passes on). The patch embedding stays frozen: on CPU the weight gradient of its Conv3d
costs about 5x the rest of a step, and training it did not change held-out accuracy in 300-step runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

__all__ = ["answer_completion", "sft_dataset", "sft_tiny_vlm"]


def answer_completion(row: dict) -> str:
    """The answer-only target `<answer>red</answer>` (RAL-zero's format; `rewards.answer_format_reward`)."""
    return f"<answer>{row['answer']}</answer>"


def sft_dataset(dataset, completion: Callable[[dict], str] = answer_completion):
    """Prompt-completion rows for SFTTrainer: the conversational `prompt`, an assistant turn `completion(row)`, and
    the row's `image`."""

    def convert(row):
        return {"completion": [{"role": "assistant", "content": [{"type": "text", "text": completion(row)}]}]}

    return dataset.map(convert).select_columns(["prompt", "completion", "image"])


def sft_tiny_vlm(
    model,
    processor,
    dataset,
    output_dir: str,
    steps: int,
    learning_rate: float = 3e-3,
    batch_size: int = 8,
    seed: int = 0,
    completion: Callable[[dict], str] = answer_completion,
    save: bool = True,
    **config_overrides,
):
    """SFT `model` on `dataset` for `steps` optimiser steps; save model + processor to `output_dir` when `save`.

    Returns TRL's log history (one row per step). Constant learning rate after a 5% warm-up; no checkpoints, no
    reporting, progress bars off (`config_overrides` go to `SFTConfig`). TRL's own defaults stay otherwise, bf16=True
    included, which autocasts on CPU too: the demo passes `bf16=False` and `adam_beta2=0.95` (docs/demo.md)."""
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    model.model.visual.patch_embed.requires_grad_(False)
    settings = dict(
        output_dir=output_dir,
        seed=seed,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=max(1, steps // 20),
        max_length=None,
    )
    settings.update(config_overrides)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**settings),
        train_dataset=sft_dataset(dataset, completion),
        processing_class=processor,
    )
    trainer.remove_callback(PrinterCallback)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    if save:
        trainer.save_model(output_dir)
        processor.save_pretrained(output_dir)
    return [dict(row) for row in trainer.state.log_history if "train_runtime" not in row]
