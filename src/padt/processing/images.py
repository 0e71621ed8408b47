"""Opening and sizing the images a processor reads."""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from padt.backbones import default_geometry
from padt.errors import PaDTError

ImageInput = Image.Image | str | os.PathLike


def load_image(
    image: ImageInput, *, max_side: int | None = None, min_side: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Open (if a path) and size an image for the processor; returns it and its ORIGINAL ``(width, height)``.

    - ``max_side``: if given, the longer side is scaled down to it (the reference demo uses 644, §2.2; the
      evaluation scripts do not cap).
    - ``min_side`` (default: one VRT cell of the default base): a shorter side is scaled up (LANCZOS) to it, as
      the reference trainer and evaluation do (docs/method.md §2.2); this runs after the cap and wins over it.

    Boxes and masks are normalised to the processed image, so they map back to the original size unchanged.
    """
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                opened.load()
                image = opened.copy()
        except FileNotFoundError:
            raise PaDTError(
                f"image file not found: {os.fspath(image)!r}; pass an existing image path"
            ) from None
        except (UnidentifiedImageError, OSError) as error:
            raise PaDTError(
                f"cannot read image {os.fspath(image)!r} ({error}); pass a valid PNG/JPEG file or a PIL image"
            ) from None
    elif not isinstance(image, Image.Image):
        raise PaDTError(f"images must be PIL images or file paths, got {type(image).__name__}")
    width, height = image.size
    if width < 1 or height < 1:
        raise PaDTError(f"image has an empty side ({width}x{height}); pass a non-empty image")
    original = (width, height)
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        image = _resize(image, (max(1, round(width * scale)), max(1, round(height * scale))), Image.BICUBIC)
    width, height = image.size
    min_side = min_side if min_side is not None else default_geometry().cell_px
    if min(width, height) < min_side:
        # round, not int: s / w * w may land just below s in floating point.
        scale = min_side / min(width, height)
        size = (max(min_side, round(width * scale)), max(min_side, round(height * scale)))
        image = _resize(image, size, Image.LANCZOS)
    return image, original


def _resize(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    return image.resize(size, resample)
