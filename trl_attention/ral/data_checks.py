"""GRPO's image checks, a component of `AttentionGRPOTrainer` (ral/composition.py), whatever the rewards: the first
`validation_rows` rows of each dataset when the trainer is built, and every sampled row before TRL's processor sees
it (`visual.checks.check_row_images`: present, readable, within the image processor's limits, one image per image
part of the prompt). Without it a 10000x40 image in row 1 passes construction and stops training at its first
sampling with the processor's error, naming no row. Video rows are the video component's (video/rows.py)."""

from __future__ import annotations

from ..visual.checks import check_row_images, image_processor_of
from ..visual.rows import first_rows, named_datasets, row_name, undecoded

__all__ = ["DataChecksMixin"]


class DataChecksMixin:
    """Mix into a GRPOTrainer subclass; call `_init_data_checks()` in `__init__`."""

    def _init_data_checks(self) -> None:
        processor = self.processing_class
        self._image_processor = image_processor_of(processor) if hasattr(processor, "image_processor") else None
        if self._image_processor is None:  # a text model: TRL takes no images
            return
        rows = getattr(self.args, "validation_rows", 256)
        for name, dataset in named_datasets(self.train_dataset, self.eval_dataset):
            columns = getattr(dataset, "column_names", None)
            if dataset is None or (columns is not None and not {"image", "images"} & set(columns)):
                continue
            limit = rows if rows is not None or hasattr(dataset, "__len__") else 256  # streamed: a bounded read
            for index, row in first_rows(undecoded(dataset), limit):  # files named when they fail to decode
                check_row_images(row, f"{name}: {row_name(row, index)}", self._image_processor)

    def _generate_and_score_completions(self, inputs):
        if getattr(self, "_image_processor", None) is not None:
            for row in inputs:  # sampled rows, before TRL's processor sees them
                check_row_images(row, f"sampled {row_name(row)}", self._image_processor)
        return super()._generate_and_score_completions(inputs)
