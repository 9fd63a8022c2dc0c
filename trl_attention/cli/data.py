"""Data and model options shared by the training subcommands (`grpo`, `gkd`) and the example scripts.

`DataArguments` imports nothing heavy (`trl-attention grpo --help` lists it without importing torch); the loaders
import transformers and datasets when they run."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..loading import looks_local
from .recipes import PROMPT_FORMATS, prepare_dataset, synthetic_vqa
from .training import ConfigError

__all__ = [
    "DataArguments",
    "add_heatmap_callback",
    "check_loadable",
    "check_sources",
    "load_model_and_data",
    "looks_local",
]


@dataclass
class DataArguments:
    """Data and run options (the model options are TRL's `ModelConfig`)."""

    tiny: bool = field(
        default=False,
        metadata={
            "help": "Use the embedded tiny Qwen2.5-VL and synthetic grounding data (offline, seconds on CPU); "
            "giving a model, dataset or (gkd) teacher path as well is an error."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Delete the checkpoint-* directories already in output_dir and start from step 0 (without it, "
            "such an output_dir is an error unless resume_from_checkpoint is given: 'latest' or a path)."
        },
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset name or local path for `datasets.load_dataset`."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    num_samples: int | None = field(
        default=None, metadata={"help": "Train on the first N rows (default: all; 256 synthetic rows with --tiny)."}
    )
    question_column: str | None = field(
        default=None, metadata={"help": "Question column (default: the first of problem, question, query)."}
    )
    answer_column: str | None = field(
        default=None, metadata={"help": "Answer column (default: the first of solution, answer, label, answers)."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: image or images)."})
    prompt_format: str = field(
        default="answer",
        metadata={
            "help": f"Instruction appended to each question, one of {sorted(PROMPT_FORMATS)}: 'reasoning' "
            "(<think> then <answer>, RAL), 'answer' (<answer> only, RAL-zero), 'none'."
        },
    )
    heatmap_every: int = field(
        default=0, metadata={"help": "Log attention heatmaps every N steps to the report_to backends (0: off)."}
    )

    def __post_init__(self):
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {sorted(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if self.heatmap_every < 0 or (self.num_samples is not None and self.num_samples < 1):
            raise ValueError("heatmap_every must be >= 0 and num_samples >= 1")


def _tiny_checkpoint(seed: int) -> str:
    """Save the tiny VLM once and return its directory. Under torch.distributed only rank 0 writes (transformers'
    `save_pretrained` writes on rank 0 alone anyway) and the others receive its path: one node shares /tmp."""
    import torch.distributed as dist

    from ..tiny import save_tiny_vlm

    distributed = dist.is_available() and dist.is_initialized()
    path = [None]
    if not distributed or dist.get_rank() == 0:
        path[0] = save_tiny_vlm(tempfile.mkdtemp(prefix="trl_attention_tiny_"), seed=seed)
        atexit.register(shutil.rmtree, path[0], True)
    if distributed:
        dist.broadcast_object_list(path, src=0)  # also the barrier: the others wait until the files exist
    return path[0]


def check_sources(data_args: DataArguments, model_args, teacher: str | None = None, tiny_teacher: bool = False):
    """Before anything is loaded: `--tiny` together with a model or dataset (and, when `tiny_teacher`: --tiny
    brings its own teacher, a teacher) is an error, as it would be ignored; so is a local-looking model, dataset
    or teacher path that does not exist (the hub would report it as a bad repo id, in a long traceback). Raises
    ConfigError naming the option and the path."""
    given = {"model_name_or_path": model_args.model_name_or_path, "dataset_name": data_args.dataset_name}
    if data_args.tiny:
        clash = {**given, "teacher_model_name_or_path": teacher if tiny_teacher else None}
        clash = [f"--{option} {value}" for option, value in clash.items() if value is not None]
        if clash:
            raise ConfigError(
                f"{', '.join(clash)} given with --tiny (or `tiny: true` in the config file), which uses the "
                "embedded tiny model and synthetic data and would ignore it: drop one or the other"
            )
        given = {}
    for option, value in {**given, "teacher_model_name_or_path": teacher}.items():
        if value is not None and looks_local(value) and not os.path.exists(Path(value).expanduser()):
            raise ConfigError(f"--{option} {value}: no such file or directory")


def _hub_error(option: str, name: str, error: OSError) -> ConfigError:
    first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return ConfigError(f"--{option} {name}: cannot load it ({first.strip()})")


def check_loadable(option: str, name: str) -> None:
    """Load `name`'s config only (a small file), to report a model the trainer would load later (a teacher) as one
    line naming `option` when it cannot be found or reached."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except OSError as error:
        raise _hub_error(option, name, error) from error


def load_model_and_data(data_args: DataArguments, model_args, seed: int):
    """(model, processor, dataset in TRL's conversational form with `solution`) for the options given."""
    from datasets import load_dataset

    from ..loading import load_model_and_processor

    check_sources(data_args, model_args)
    if data_args.tiny:  # saved and loaded back, so it takes the real models' path (and TRL can build a ref model)
        model, processor = load_model_and_processor(_tiny_checkpoint(seed), None, model_args.attn_implementation)
        raw = synthetic_vqa(data_args.num_samples or 256, seed=seed)
    else:
        if model_args.model_name_or_path is None or data_args.dataset_name is None:
            raise ConfigError("model_name_or_path and dataset_name are required (or --tiny for the embedded model)")
        try:  # the dataset first: an unreachable one is then reported before a model is loaded
            raw = load_dataset(data_args.dataset_name, data_args.dataset_config, split=data_args.dataset_train_split)
        except OSError as error:  # FileNotFoundError, ConnectionError (offline), DatasetNotFoundError
            raise _hub_error("dataset_name", data_args.dataset_name, error) from error
        name = model_args.model_name_or_path
        try:
            model, processor = load_model_and_processor(
                name, model_args.dtype, model_args.attn_implementation, model_args.model_revision
            )
        except OSError as error:  # an unknown or unreachable hub id, a directory without a model
            raise _hub_error("model_name_or_path", name, error) from error
        if data_args.num_samples is not None:
            raw = raw.select(range(min(data_args.num_samples, len(raw))))
    columns = (data_args.question_column, data_args.answer_column, data_args.image_column)
    dataset = prepare_dataset(raw, data_args.prompt_format, *((None,) * 3 if data_args.tiny else columns))
    return model, processor, dataset


def add_heatmap_callback(trainer, data_args: DataArguments, dataset) -> None:
    """Attach `AttentionHeatmapCallback` (two dataset rows as fixed examples) when `heatmap_every` asks for it."""
    if data_args.heatmap_every:
        from ..callbacks import AttentionHeatmapCallback

        examples = dataset.select(range(min(2, len(dataset))))
        trainer.add_callback(AttentionHeatmapCallback(trainer, examples, every_n_steps=data_args.heatmap_every))
