"""Opening images the way they are shown: EXIF orientation, high bit depth, transparency, size limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from padt.errors import PaDTError
from padt.processing import images as image_module
from padt.processing.images import image_size, load_image, open_image


def phone_photo(path, orientation: int = 6) -> np.ndarray:
    """A 60 x 40 JPEG stored sideways with an EXIF orientation tag; returns the pixels as displayed."""
    stored = np.zeros((40, 60, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)  # red band on the stored image's left
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, "JPEG", exif=exif, quality=95)
    # Orientation 6: the stored image is rotated 90 degrees clockwise to display it.
    return np.rot90(stored, k=-1)


def test_exif_orientation_is_applied_everywhere(tmp_path):
    path = tmp_path / "phone.jpg"
    displayed = phone_photo(path)
    image = open_image(path)
    assert image.size == (40, 60) and image_size(path) == (40, 60)
    # The red band is at the top once displayed.
    pixels = np.asarray(image).astype(int)
    assert pixels[:10, :, 0].mean() > 200 and pixels[-10:, :, 0].mean() < 60
    assert np.abs(pixels - displayed.astype(int)).mean() < 8  # JPEG noise only
    loaded, original = load_image(path)
    assert original == (40, 60) and loaded.size == (40, 60)


def test_sixteen_bit_greyscale_keeps_its_contrast(tmp_path):
    values = np.linspace(0, 65535, 64 * 32, dtype=np.uint16).reshape(32, 64)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = open_image(path)
    pixels = np.asarray(image)
    assert image.mode == "RGB"
    assert pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255 and 120 < pixels[16, 32, 0] < 136


def test_transparent_pixels_become_white():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (0, 0, 255, 255)  # opaque blue on the left, transparent black on the right
    image = open_image(Image.fromarray(rgba, "RGBA"))
    pixels = np.asarray(image)
    assert tuple(pixels[0, 0]) == (0, 0, 255) and tuple(pixels[0, -1]) == (255, 255, 255)


def test_bytes_and_bad_files(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), "green").save(buffer, "PNG")
    assert open_image(buffer.getvalue()).size == (30, 20)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    truncated = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    (tmp_path / "half.png").write_bytes(truncated)
    for name, message in [
        ("empty.png", "cannot read image"),
        ("text.png", "cannot read image"),
        ("half.png", "truncated or corrupt"),
        ("missing.png", "image file not found"),
    ]:
        with pytest.raises(PaDTError, match=message):
            open_image(tmp_path / name)
    with pytest.raises(PaDTError, match="is a folder"):
        open_image(tmp_path)
    with pytest.raises(PaDTError, match="max_side must be at least 1"):
        load_image(buffer.getvalue(), max_side=0)


def test_images_above_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    monkeypatch.setattr(image_module, "MAX_IMAGE_PIXELS", 50_000)
    with pytest.raises(PaDTError, match=r"300x200 = 0 megapixels, more than padt opens"):
        open_image(path)
    with pytest.raises(PaDTError, match="downscale it first"):
        image_size(path)
