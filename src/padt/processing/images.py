"""Opening and sizing the images a processor reads: one place that turns any image file into what the model sees.

:func:`open_image` is used wherever padt opens an image (predict, eval, training, data preparation, the web app
and the server): it applies the EXIF orientation (a phone photo is read the way it is displayed, and boxes are in
that frame), converts high-bit-depth and float images to 8 bits by their real range (a 16-bit greyscale PNG does
not turn white), puts transparent pixels on white, and refuses images above :data:`MAX_IMAGE_PIXELS` before
decoding them. :func:`image_size` reads the displayed size without decoding the pixels.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from padt.backbones import default_geometry
from padt.errors import PaDTError

ImageInput = Image.Image | str | os.PathLike
#: The largest image padt opens, in pixels (PIL's decompression-bomb guard, about 89 megapixels). Larger images
#: are refused with a message, not decoded: downscale them first.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
#: EXIF orientations that swap width and height (rotations by 90 or 270 degrees, with or without a mirror).
_TRANSPOSED = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


def _name(source: object) -> str:
    return repr(os.fspath(source)) if isinstance(source, str | os.PathLike) else "the image"


def _check_pixels(image: Image.Image, source: object) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise PaDTError(f"{_name(source)} has an empty side ({width}x{height}); pass a non-empty image")
    if width * height > MAX_IMAGE_PIXELS:
        raise PaDTError(
            f"{_name(source)} is {width}x{height} = {width * height / 1e6:.0f} megapixels, more than padt opens "
            f"({MAX_IMAGE_PIXELS / 1e6:.0f} MP); downscale it first"
        )


def _open(source: str | os.PathLike | bytes) -> Image.Image:
    """``Image.open`` with padt's errors (the image is not decoded yet)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked below
            opened = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError:
        raise PaDTError(f"image file not found: {os.fspath(source)!r}; pass an existing image path") from None
    except IsADirectoryError:
        raise PaDTError(f"{os.fspath(source)!r} is a folder, not an image; pass an image file") from None
    except Image.DecompressionBombError as error:
        raise PaDTError(f"{_name(source)} is too large to open ({error}); downscale it first") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise PaDTError(
            f"cannot read image {_name(source)} ({error}); pass a valid PNG/JPEG/WebP file or a PIL image"
        ) from None
    return opened


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: high-bit-depth and float modes scaled by their real range, alpha composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0 if values.size == 0 or values.max() <= 1.0 else float(values.max())
        else:
            top = (
                255.0
                if values.size == 0 or values.max() <= 255
                else 65535.0
                if values.max() <= 65535
                else float(values.max())
            )
        image = Image.fromarray(np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def open_image(source: Image.Image | str | os.PathLike | bytes) -> Image.Image:
    """An image as the model sees it: decoded, EXIF orientation applied, 8-bit RGB (module docstring).

    ``source`` is a path, the bytes of an image file, or a PIL image (whose EXIF orientation, if it still has
    one, is applied too). Any problem is a one-line :class:`PaDTError`.
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, str | os.PathLike | bytes):
        image = _open(source)
    else:
        raise PaDTError(f"images must be PIL images, file paths or bytes, got {type(source).__name__}")
    _check_pixels(image, source)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise PaDTError(
            f"cannot decode image {_name(source)} ({error}); the file is truncated or corrupt"
        ) from None
    return _to_rgb(image)


def image_size(source: str | os.PathLike | bytes) -> tuple[int, int]:
    """The displayed ``(width, height)`` of an image file (EXIF orientation applied), without decoding it."""
    image = _open(source)
    with image:
        _check_pixels(image, source)
        width, height = image.size
        try:
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        except (OSError, ValueError, SyntaxError):
            orientation = 1
    return (height, width) if orientation in _TRANSPOSED else (width, height)


def load_image(
    image: ImageInput | bytes, *, max_side: int | None = None, min_side: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Open (:func:`open_image`) and size an image for the processor; returns it and its ORIGINAL displayed
    ``(width, height)``.

    - ``max_side``: if given, the longer side is scaled down to it (the reference demo uses 644, §2.2; the
      evaluation scripts do not cap).
    - ``min_side`` (default: one VRT cell of the default base): a shorter side is scaled up (LANCZOS) to it, as
      the reference trainer and evaluation do (docs/method.md §2.2); this runs after the cap and wins over it.

    Boxes and masks are normalised to the processed image, so they map back to the original size unchanged.
    """
    if max_side is not None and max_side < 1:
        raise PaDTError(f"max_side must be at least 1 pixel, got {max_side}")
    image = open_image(image)
    width, height = image.size
    original = (width, height)
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BICUBIC)
    width, height = image.size
    min_side = min_side if min_side is not None else default_geometry().cell_px
    if min(width, height) < min_side:
        # round, not int: s / w * w may land just below s in floating point.
        scale = min_side / min(width, height)
        size = (max(min_side, round(width * scale)), max(min_side, round(height * scale)))
        image = image.resize(size, Image.LANCZOS)
    return image, original
