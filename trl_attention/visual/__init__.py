"""The shared visual floor: what several methods read from a row and a model, in one place.

    rows.py      a row's images and videos, its prompt's image / video parts, row names for errors, first rows
    checks.py    image checks (readable, within the image processor's limits) and the nesting of a `boxes` column
    regions.py   boxes -> visual-token cells -> sequence positions
    layouts.py   per model family, where the image tokens are and what grid they form (`visual_layout`)

Method packages (`ral`, `sayo`, `distill`, `video`, `vrga`) import these; none imports another method's internals.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "FALLBACK_MAX_ASPECT_RATIO": ".checks",
    "LayoutError": ".layouts",
    "VIDEO_COLUMNS": ".rows",
    "VISUAL_COLUMNS": ".rows",
    "VideoError": ".rows",
    "VisualLayout": ".layouts",
    "box_lists": ".checks",
    "check_aspect_ratio": ".checks",
    "check_row_images": ".checks",
    "clip_box": ".regions",
    "count_parts": ".rows",
    "first_rows": ".rows",
    "first_video_row": ".rows",
    "fixed_grid_token_indices": ".regions",
    "has_video": ".rows",
    "image_processor_of": ".checks",
    "named_datasets": ".rows",
    "open_image": ".checks",
    "prompt_text": ".rows",
    "region_token_indices": ".regions",
    "row_images": ".rows",
    "row_name": ".rows",
    "row_visuals": ".rows",
    "undecoded": ".rows",
    "visual_layout": ".layouts",
    "visual_token_positions": ".regions",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
