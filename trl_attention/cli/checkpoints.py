"""The training commands' output_dir: one run per directory, and resuming the way the HF Trainer's users expect.

- `output_dir` already holds `checkpoint-*` directories and neither `--resume_from_checkpoint` nor
  `--overwrite_output_dir true` is given: a `ConfigError` naming the directory, its latest checkpoint and both
  options (starting from step 0 there would overwrite the old checkpoints one by one and leave the old run's later
  ones looking like the latest).
- `--resume_from_checkpoint latest` (or `true`): the latest `checkpoint-N` of `output_dir`; an error when none.
- `--resume_from_checkpoint PATH`: that checkpoint; an error when it is not a directory with `trainer_state.json`.
- `--overwrite_output_dir true`: delete the `checkpoint-*` directories (logged, counted; rank 0 only) and start
  from step 0.

Everything is decided when the options are parsed, before a model is loaded.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..checkpointing import CHECKPOINT_DIR as _CHECKPOINT
from ..checkpointing import checkpoints
from .training import ConfigError

__all__ = ["LATEST", "checkpoints", "prepare_output_dir"]

logger = logging.getLogger(__name__)

LATEST = ("latest", "true")  # --resume_from_checkpoint values meaning "the latest checkpoint of output_dir"
_NO_RESUME = ("", "false", "none")
_OPTIONS = (
    "pass --resume_from_checkpoint latest to continue that run, or --overwrite_output_dir true to delete its "
    "checkpoints and start from step 0 (or choose another --output_dir)"
)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # torchrun and accelerate launch set RANK on every process


def prepare_output_dir(training_args, overwrite: bool = False) -> None:
    """Check `output_dir` against the resume / overwrite options and set `training_args.resume_from_checkpoint`
    to the checkpoint to resume (a path) or None. Raises ConfigError; see the module docstring."""
    output_dir = training_args.output_dir
    found = checkpoints(output_dir)
    latest = str(found[-1]) if found else None
    value = training_args.resume_from_checkpoint
    value = "" if value is None else str(value).strip()
    if value.lower() in _NO_RESUME:
        training_args.resume_from_checkpoint = None
        if found and not overwrite:
            raise ConfigError(
                f"output_dir {output_dir} already holds {len(found)} checkpoint"
                f"{'s' if len(found) > 1 else ''} of an earlier run (latest: {latest}): {_OPTIONS}"
            )
        if found and _is_main_process():
            for path in found:
                shutil.rmtree(path)
            logger.warning(
                "--overwrite_output_dir: deleted %d checkpoint(s) in %s (latest was %s)",
                len(found),
                output_dir,
                latest,
            )
        return
    if overwrite:
        raise ConfigError(
            f"--resume_from_checkpoint {value} and --overwrite_output_dir true exclude each other: resume the run "
            "or start it again"
        )
    if value.lower() in LATEST:
        if latest is None:
            raise ConfigError(
                f"--resume_from_checkpoint {value}: output_dir {output_dir} holds no checkpoint-* directory to "
                "resume from (drop the option to start from step 0)"
            )
        value = latest  # checked like a given path below
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--resume_from_checkpoint {value}: no such checkpoint directory")
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(f"--resume_from_checkpoint {value}: not a Trainer checkpoint (no trainer_state.json in it)")
    later = [p for p in found if _step(p) > _step(path)] if _CHECKPOINT.fullmatch(path.name) else []
    if later:
        logger.warning(
            "resuming %s: the later checkpoints of output_dir %s (%s) will be overwritten as the run reaches them",
            path,
            output_dir,
            ", ".join(p.name for p in later),
        )
    training_args.resume_from_checkpoint = str(path)


def _step(path: Path) -> int:
    return int(_CHECKPOINT.fullmatch(path.name).group(1))
