"""Checks of a row's images and boxes, run before training starts (SAYO's reward, the distillation collator, VRGA):
images readable and within the image processor's limits, and the nesting of a `boxes` column.

Every check raises a `ValueError` that names the row and the column; nothing here skips a row. Images may be PIL
images, local path strings, `{"bytes", "path"}` dicts (a `datasets.Image(decode=False)` column), http(s)/data
URLs (loaded with transformers' `load_image`, as the processor would), or any object with a `(width, height)`
`size`.
"""

from __future__ import annotations

import io
import numbers
import os

from PIL import Image

__all__ = [
    "FALLBACK_MAX_ASPECT_RATIO",
    "box_lists",
    "check_aspect_ratio",
    "check_row_images",
    "image_processor_of",
    "open_image",
]

FALLBACK_MAX_ASPECT_RATIO = 200.0
"""The Qwen-VL image processors' limit (`smart_resize`), used only when no processor is known."""

_NESTING = "per image, a list of (x1, y1, x2, y2) boxes: [[[x1, y1, x2, y2]]] for one box on a one-image row"


def image_processor_of(processing_class):
    """The image processor of a processor (or the argument itself when it is one); None when there is none."""
    if processing_class is None:
        return None
    return getattr(processing_class, "image_processor", processing_class)


def open_image(image, where: str, decode: bool = False):
    """The image as an object with `.size`: PIL images as they are, paths/bytes/URLs opened. `decode=True` also
    decodes the pixels (`load()`), which is where a truncated file fails. Raises ValueError naming `where`."""
    if image is None:
        raise ValueError(f"{where}: the image is None")
    source = image
    try:
        if isinstance(image, dict) and (image.get("bytes") or image.get("path")):
            source = image.get("path") or "<bytes>"
            image = Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"])
        elif isinstance(image, (str, os.PathLike)):
            text = os.fspath(image)
            if text.startswith(("http://", "https://", "data:")):
                from transformers.image_utils import load_image

                image = load_image(text)
            elif not os.path.isfile(text):
                raise ValueError(f"{where}: the image path {text!r} is not a file")
            else:
                image = Image.open(text)
        elif not isinstance(image, Image.Image) and not _is_size(getattr(image, "size", None)):
            raise ValueError(
                f"{where}: the image is a {type(image).__name__}; expected a PIL image, a path string or a "
                "{'bytes', 'path'} dict"
            )
        if decode and isinstance(image, Image.Image):
            image.load()
    except (OSError, SyntaxError) as error:  # PIL: missing, unidentified or truncated files
        name = source if isinstance(source, (str, os.PathLike)) else "the PIL image"
        raise ValueError(f"{where}: cannot read the image {name}: {error}") from None
    return image


def _is_size(size) -> bool:
    return isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, numbers.Real) for v in size)


def check_aspect_ratio(size, where: str, image_processor=None) -> None:
    """Raise when the image processor would reject an image of `size` = (width, height).

    With a processor that has `get_number_of_image_patches` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL and others) its own
    resize is asked, so its limit is the one applied; without a processor, `FALLBACK_MAX_ASPECT_RATIO`.
    """
    width, height = size
    if min(width, height) <= 0:
        raise ValueError(f"{where}: the image is {width}x{height}")
    ratio = max(width, height) / min(width, height)
    probe = getattr(image_processor, "get_number_of_image_patches", None)
    if probe is not None:
        try:
            probe(height, width, {})
        except ValueError as error:
            raise ValueError(
                f"{where}: the image is {width}x{height} (aspect ratio {ratio:.1f}:1), which the image processor "
                f"rejects ({error}); crop or pad it, or drop the row"
            ) from None
    elif image_processor is None and ratio > FALLBACK_MAX_ASPECT_RATIO:
        raise ValueError(
            f"{where}: the image is {width}x{height} (aspect ratio {ratio:.1f}:1), over the Qwen-VL image "
            f"processors' limit of {FALLBACK_MAX_ASPECT_RATIO:.0f}:1; crop or pad it, or drop the row"
        )


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _plain(value):
    return value.tolist() if hasattr(value, "tolist") else value


def box_lists(value, where: str) -> list:
    """Check the nesting of one row's boxes column and return it as lists: per image, a list of 4-number boxes.
    None / [] (no box) gives []."""
    value = _plain(value)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: expected {_NESTING}; got a {type(value).__name__}")
    if value and all(_is_number(v) for v in value):
        raise ValueError(f"{where}: got the flat box {list(value)!r}; the column holds {_NESTING}")
    per_image = []
    for image_index, boxes in enumerate(value):
        boxes = _plain(boxes)
        if boxes is None:
            per_image.append([])
            continue
        if not isinstance(boxes, (list, tuple)):
            raise ValueError(f"{where}: image {image_index} holds a {type(boxes).__name__}; expected {_NESTING}")
        if boxes and all(_is_number(v) for v in boxes):
            raise ValueError(
                f"{where}: image {image_index} holds the box {list(boxes)!r} without its list of boxes "
                f"([[x1, y1, x2, y2]] per image); the column holds {_NESTING}"
            )
        checked = []
        for box in boxes:
            box = _plain(box)
            if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
                raise ValueError(
                    f"{where}: image {image_index} has the box {box!r}; a box is 4 numbers (x1, y1, x2, y2)"
                )
            checked.append(list(box))
        per_image.append(checked)
    return per_image


def check_row_images(row: dict, where: str, image_processor=None, decode: bool = True, prompt_parts: bool = True):
    """Check one row's images before the processor sees them, raising a ValueError that names `where`, the column
    and the image: each image present and readable (decoded with `decode`, where a truncated file fails), within the
    image processor's limits (`check_aspect_ratio`), and, with `prompt_parts`, as many as the prompt's
    `{"type": "image"}` parts when it has any (a prompt with an image part and `image: None` fails inside TRL's
    processor otherwise; the distillation collator counts parts itself). Returns the opened images (objects with
    `.size`)."""
    from .rows import count_parts, row_visuals

    images = row_visuals(row)[0]
    column = "images" if row.get("images") is not None else "image"
    parts = count_parts(row.get("prompt"), "image") if prompt_parts else 0
    if parts and parts != len(images):
        raise ValueError(
            f"{where}: the prompt has {parts} image part(s) but the row has {len(images)} image(s) in `{column}`; "
            "give one image per {'type': 'image'} part (or drop the parts of a text-only row)"
        )
    opened = []
    for i, image in enumerate(images):
        name = f"{where}, column `{column}`, image {i}"
        if image is None:
            raise ValueError(f"{name}: the image is None (a text-only row has `image: None` or `images: []`)")
        image = open_image(image, name, decode=decode)
        check_aspect_ratio(image.size, name, image_processor)
        opened.append(image)
    return opened
