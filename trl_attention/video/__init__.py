"""Video rows for the trainers: the RAL paper trains on Video-R1, a mix of image and video rows.

arguments.py   VideoArguments: frame sampling and per-frame / total pixel budgets (Qwen's video options)
frames.py      a row's video (frames or a file, decoded with PyAV) -> sampled (T, H, W, 3) frames + their fps
encode.py      frames -> pixel_values_videos / video_grid_thw / second_per_grid_ts; the Qwen-layout prompt
               tokenizer that expands image and video placeholders (works without torchvision)
rows.py        the visual inputs of a row (image / images / video / videos columns) and the construction checks
grpo.py        the GRPOTrainer mixin that carries video through generation, scoring and the loss
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "VideoR1Error": ".videor1",
    "convert_video_r1": ".videor1",
    "load_video_r1": ".videor1",
    "read_video_r1_records": ".videor1",
    "write_synthetic_video_r1": ".videor1",
    "VideoArguments": ".arguments",
    "VideoError": ".rows",
    "VideoGRPOMixin": ".grpo",
    "check_video_dataset": ".rows",
    "encode_video": ".encode",
    "load_video": ".frames",
    "row_visuals": "..visual.rows",
    "sample_frame_indices": ".frames",
    "tokenize_visual_prompts": ".encode",
    "write_video": ".frames",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
