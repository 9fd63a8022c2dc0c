"""Resuming a run as it was: its trained weights on every model family, TRL's rollout buffer, and never a silent
restart.

Why this exists (transformers 5.23, TRL 1.16):
- `save_pretrained` writes a checkpoint in the family's original key format: it reverts the key renamings and
  weight conversions `from_pretrained` applies (Qwen2.5-VL's `model.visual.*` is saved as `visual.*`, LLaVA's and
  InternVL's `model.language_model.*` as `language_model.model.*`, a MoE's fused `experts.gate_up_proj` as one tensor
  per expert). The Trainer's resume (`_load_from_checkpoint`, `_load_best_model`) loads those files with a plain
  `load_state_dict(strict=False)`, so for such a family no key matches: it logs the missing keys and trains on from
  the initial weights. `ResumeMixin` loads such a checkpoint through `from_pretrained` (which knows the family's
  conversions) and copies the weights in place, strictly; a checkpoint it cannot restore completely is an error.
- TRL keeps the generated rollouts of a reuse cycle (`_buffered_inputs`) and the micro-step counter that decides
  when to regenerate (`_step`) in memory only: a run resumed inside a cycle regenerates at once and runs out of
  phase. `RolloutBufferMixin` saves both per rank with each checkpoint and restores them, so that a resumed run is
  the straight run, bit for bit; checkpoints without them resume as TRL does, with a warning when that matters.
- A checkpoint without `optimizer.pt` / `scheduler.pt` would resume with fresh Adam moments and a restarted
  learning-rate schedule; the Trainer says nothing. Here it is an error. `train()` into an `output_dir` that holds
  checkpoints without resuming warns (the CLI refuses; docs/long-runs.md).
The Trainer methods overridden here are listed in `trl_internals.TRAINER_CHECKPOINT_OVERRIDES`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path

import torch

__all__ = [
    "ResumeError",
    "ResumeMixin",
    "RolloutBufferMixin",
    "checkpoint_needs_conversion",
    "checkpoints",
    "load_checkpoint_weights",
]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = re.compile(r"checkpoint-(\d+)")
ROLLOUTS_FILE = "rollouts_{rank}.pt"
_ROLLOUTS_VERSION = 1


class ResumeError(RuntimeError):
    """A checkpoint this run cannot be resumed from as it was saved (training on would lose its state)."""


def checkpoints(output_dir: str | os.PathLike | None) -> list[Path]:
    """The `checkpoint-N` directories of `output_dir`, by increasing N (empty when it does not exist)."""
    if output_dir is None or not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), p) for p in Path(output_dir).iterdir() if (m := CHECKPOINT_DIR.fullmatch(p.name))]
    return [p for _, p in sorted(found) if p.is_dir()]


def _saved_keys(checkpoint: str) -> set[str] | None:
    """The tensor names of a safetensors checkpoint (single file or index), read without loading; None otherwise."""
    index = os.path.join(checkpoint, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as handle:
            return set(json.load(handle)["weight_map"])
    single = os.path.join(checkpoint, "model.safetensors")
    if os.path.isfile(single):
        from safetensors import safe_open

        with safe_open(single, framework="pt") as handle:
            return set(handle.keys())
    return None


def checkpoint_needs_conversion(model, checkpoint: str) -> bool:
    """Whether `checkpoint`'s tensor names differ from `model`'s own (beyond tied weights saved once), i.e. whether
    a plain `load_state_dict` would miss weights. `.bin` checkpoints are read through the conversion path too."""
    saved = _saved_keys(checkpoint)
    if saved is None:
        return True
    state = model.state_dict()
    if saved - set(state):
        return True
    saved_storage = {state[k].untyped_storage().data_ptr() for k in saved if state[k].device.type != "meta"}
    return any(state[k].untyped_storage().data_ptr() not in saved_storage for k in set(state) - saved)


def _widest_float_dtype(model) -> torch.dtype:
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()} or {torch.float32}
    return max(dtypes, key=lambda d: torch.finfo(d).bits)


def load_checkpoint_weights(model, checkpoint: str) -> None:
    """Copy the weights of `checkpoint` into `model` in place (devices, dtypes and parameter objects kept), reading
    the file through `from_pretrained`'s key conversions. Raises ResumeError unless every tensor is restored.

    Costs one CPU copy of the model in its widest parameter dtype while it runs (the Trainer's own reload holds the
    whole state dict on CPU too)."""
    name = type(model).__name__
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded, info = type(model).from_pretrained(
                checkpoint, dtype=_widest_float_dtype(model), attn_implementation="eager", output_loading_info=True
            )
    except Exception as error:  # noqa: BLE001  (re-raised with what to do)
        raise ResumeError(f"cannot read the weights of checkpoint {checkpoint} as a {name}: {error}") from error
    problems = {k: sorted(map(str, v))[:5] for k, v in info.items() if v and k != "conversion_errors"}
    problems.update({"conversion_errors": list(info["conversion_errors"])[:5]} if info.get("conversion_errors") else {})
    if problems:
        raise ResumeError(
            f"checkpoint {checkpoint} does not restore every weight of {name} ({problems}); refusing to resume from "
            "partly initial weights. Resume from another checkpoint, or start a new run from this one's weights."
        )
    try:
        with torch.no_grad():
            model.load_state_dict(loaded.state_dict(), strict=True)
    except RuntimeError as error:
        raise ResumeError(f"checkpoint {checkpoint} does not match {name}'s weights: {error}") from error
    finally:
        del loaded
    logger.info("restored %s from %s through from_pretrained's key conversion", name, checkpoint)


def _is_peft(model) -> bool:
    return getattr(model, "peft_config", None) is not None or getattr(model, "_hf_peft_config_loaded", False)


class ResumeMixin:
    """The trained weights back on resume for every family, and no silent loss of a run's state (module doc)."""

    def _converts(self, model, checkpoint: str) -> bool:
        plain = model is None or model is self.model
        return plain and not (self.is_deepspeed_enabled or self.is_fsdp_enabled or _is_peft(self.model)) and (
            checkpoint_needs_conversion(self.model, checkpoint)
        )

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self._converts(model, resume_from_checkpoint):
            load_checkpoint_weights(self.model, resume_from_checkpoint)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        best = self.state.best_model_checkpoint
        if best is not None and _saved_keys(best) is not None and self._converts(None, best):
            load_checkpoint_weights(self.model, best)
        else:
            super()._load_best_model()

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is not None and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            missing = [f for f in ("optimizer.pt", "scheduler.pt") if not _has_state(checkpoint, f)]
            if missing:
                raise ResumeError(
                    f"checkpoint {checkpoint} has no {' or '.join(missing)}: resuming would restart the optimizer "
                    "moments and the learning-rate schedule (saved with save_only_model=True, or copied without "
                    "them?). Restore the files, or start a new run from its weights (model=<checkpoint>)."
                )
        super()._load_optimizer_and_scheduler(checkpoint)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        found = checkpoints(self.args.output_dir) if resume_from_checkpoint in (None, False) else []
        if found and self.args.should_save:
            message = (
                f"output_dir {self.args.output_dir} already holds {len(found)} checkpoint(s) of an earlier run "
                f"(latest: {found[-1].name}) and this run starts from step 0: it overwrites them as it reaches their "
                "steps and leaves the later ones looking like the latest. Pass resume_from_checkpoint=True to "
                "continue that run, or use another output_dir."
            )
            warnings.warn(message, UserWarning, stacklevel=2)
            logger.warning(message)
        return super().train(resume_from_checkpoint, *args, **kwargs)


def _has_state(checkpoint: str, name: str) -> bool:
    stem = name.rsplit(".", 1)[0]
    return os.path.isfile(os.path.join(checkpoint, name)) or os.path.isfile(os.path.join(checkpoint, f"{stem}.bin"))


class RolloutBufferMixin:
    """GRPO: TRL's rollout buffer and micro-step counter saved per rank with each checkpoint, restored on resume."""

    def _rollout_cycle(self) -> int:
        return self.args.steps_per_generation * self.num_iterations  # TRL's `generate_every` (`_prepare_inputs`)

    def _save_checkpoint(self, model, trial):
        # Written first: a checkpoint with its trainer_state.json (what "latest" looks for) has its rollouts too.
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        state = {
            "version": _ROLLOUTS_VERSION,
            "step": self._step,
            "buffer": self._buffered_inputs,
            "world_size": self.accelerator.num_processes,
            "cycle": self._rollout_cycle(),
            "steps_per_generation": self.args.steps_per_generation,
        }
        torch.save(state, os.path.join(folder, ROLLOUTS_FILE.format(rank=self.accelerator.process_index)))
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._load_rollouts(checkpoint)

    def _load_rollouts(self, checkpoint: str) -> None:
        from accelerate.utils import gather_object

        path = os.path.join(checkpoint, ROLLOUTS_FILE.format(rank=self.accelerator.process_index))
        state, reason = None, None
        if not os.path.isfile(path):
            reason = f"it has no {os.path.basename(path)} (saved before trl_attention saved rollouts?)"
        else:
            device = self.accelerator.device
            state = torch.load(path, map_location="cpu" if device.type == "cpu" else device, weights_only=True)
            expected = (_ROLLOUTS_VERSION, self.accelerator.num_processes, self._rollout_cycle())
            found = (state.get("version"), state.get("world_size"), state.get("cycle"))
            if found != expected or state.get("steps_per_generation") != self.args.steps_per_generation:
                reason = (
                    f"its rollouts were saved with {found[1]} process(es) and a reuse cycle of {found[2]} micro-steps, "
                    f"this run has {expected[1]} and {expected[2]}"
                )
        # Every rank restores or none does: ranks out of phase would generate (a collective) at different steps.
        reasons = [r for r in gather_object([reason]) if r is not None]
        if not reasons:
            self._step, self._buffered_inputs = state["step"], state["buffer"]
            return
        micro_steps = self.state.global_step * self.args.gradient_accumulation_steps
        if micro_steps % self._rollout_cycle():
            message = (
                f"resuming {checkpoint} inside a rollout-reuse cycle as TRL does: {reasons[0]}. The run regenerates "
                "now and reuses out of phase with the run it continues, so it will not equal a straight run "
                "(docs/long-runs.md)."
            )
            warnings.warn(message, UserWarning, stacklevel=2)
            logger.warning(message)
        else:
            logger.info("resuming %s at a rollout-cycle boundary: no buffered rollouts needed", checkpoint)
