"""Images sent to the server: bytes only (uploads, base64, ``data:`` URLs), checked against the limits.

The server never opens a path or fetches a URL a client names: a string that is not base64 or a ``data:`` URL
is refused. Sizes are checked before decoding (the byte count, then the pixel count from the header), so a
small file that would decode to a huge image is refused without being decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from padt.errors import PaDTError
from padt.processing.images import open_image


class ImageRejected(Exception):
    """An image the server will not use; ``status`` is 413 (too large) or 422 (not an image)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class ImageLimits:
    """``max_bytes`` of one encoded image; ``max_pixels`` (width x height) of one decoded image."""

    max_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000


_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:")
_NOT_FETCHED = "the server never opens paths or fetches URLs; send the image's bytes (base64 or a data: URL)"


def bytes_from_string(value: str, limits: ImageLimits, what: str = "image") -> bytes:
    """The bytes of a base64 string or a base64 ``data:`` URL.

    Raises :class:`ImageRejected`: 422 for URLs, paths and anything that is not base64; 413 when the decoded
    bytes exceed ``limits.max_bytes`` (checked on the encoded length first, so nothing large is decoded).
    """
    text = value.strip()
    match = _DATA_URL.match(text)
    if match:
        text = text[match.end() :]
    elif _SCHEME.match(text):  # base64 has no ':', so this is a URL
        scheme = text.split(":", 1)[0].lower()
        if scheme == "data":
            raise ImageRejected(
                422, "invalid_image", f"{what} is a data: URL without base64; use data:image/png;base64,..."
            )
        raise ImageRejected(422, "url_not_allowed", f"{what} is a {scheme}: URL; {_NOT_FETCHED}")
    if not text:
        raise ImageRejected(422, "missing_image", f"{what} is empty; send the image's bytes base64-encoded")
    text = "".join(text.split())  # base64 may be wrapped in lines
    if len(text) * 3 // 4 > limits.max_bytes + 2:
        raise _too_many_bytes(what, len(text) * 3 // 4, limits)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected(
            422, "invalid_image", f"{what} is neither base64 nor a base64 data: URL; {_NOT_FETCHED}"
        ) from None
    return data


def decode_image(data: bytes, limits: ImageLimits, what: str = "image") -> Image.Image:
    """An RGB PIL image from encoded bytes (PNG, JPEG, WebP, ...), upright by its EXIF orientation.

    Raises :class:`ImageRejected`: 413 over ``limits``, 422 when the bytes are not a readable image.
    """
    if not data:
        raise ImageRejected(422, "missing_image", f"{what} is empty; send a PNG/JPEG/WebP file")
    if len(data) > limits.max_bytes:
        raise _too_many_bytes(what, len(data), limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ImageRejected(
                    413,
                    "image_too_large",
                    f"{what} has {width}x{height} = {width * height:,} pixels, over this server's limit of "
                    f"{limits.max_pixels:,}; scale it down",
                )
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(
            413, "image_too_large", f"{what} has too many pixels (over {limits.max_pixels:,}); scale it down"
        ) from None
    except UnidentifiedImageError:
        raise ImageRejected(
            422,
            "invalid_image",
            f"{what} is not in an image format this server reads; send a PNG/JPEG/WebP file",
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRejected(
            422, "invalid_image", f"{what} could not be decoded ({error}); send a complete PNG/JPEG/WebP file"
        ) from None
    if image.width < 1 or image.height < 1:
        raise ImageRejected(422, "invalid_image", f"{what} has an empty side; send a non-empty image")
    try:
        return open_image(image)  # upright by EXIF, 8-bit RGB by the image's real range, alpha on white
    except PaDTError as error:
        raise ImageRejected(422, "invalid_image", f"{what}: {error}") from None


def _too_many_bytes(what: str, size: int, limits: ImageLimits) -> ImageRejected:
    return ImageRejected(
        413,
        "image_too_large",
        f"{what} is {size:,} bytes, over this server's limit of {limits.max_bytes:,}; send a smaller file",
    )
