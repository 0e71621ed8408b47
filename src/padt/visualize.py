"""Overlays: boxes, labels, scores, semi-transparent masks and (optionally) the VRT cells a model referred to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from padt.backbones import default_geometry
from padt.data.patches import merged_grid_for_image
from padt.processing.images import open_image

if TYPE_CHECKING:
    from padt.postprocess import Prediction

PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
]


def merged_grid_for(size: tuple[int, int], processor: Any = None) -> tuple[int, int, int, int]:
    """``(rows, cols, resized_h, resized_w)`` of the VRT grid ``processor`` (default: the default base's with
    PaDT's pixel limits) gives an image of ``(width, height)``."""
    width, height = size
    if processor is not None:
        rows, cols = processor.vrt_grid(width, height)
        cell = processor.geometry.cell_px
    else:
        rows, cols = merged_grid_for_image(height, width)
        cell = default_geometry().cell_px
    return rows, cols, rows * cell, cols * cell


def draw_prediction(
    image: Any,
    prediction: Prediction,
    *,
    image_index: int = 0,
    show_vrt: bool = False,
    processor: Any = None,
    alpha: float = 0.45,
) -> Image.Image:
    """Draw the objects of ``prediction`` that lie in image ``image_index`` of the sample onto ``image``."""
    base = open_image(image)
    canvas = base.convert("RGBA")
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    rows, cols, rh, rw = merged_grid_for(base.size, processor)
    cell_w, cell_h = base.width / cols, base.height / rows
    for k, (obj, img) in enumerate(zip(prediction.objects, prediction.object_images)):
        if img != image_index:
            continue
        color = PALETTE[k % len(PALETTE)]
        if obj.mask is not None and obj.mask.shape == (base.height, base.width):
            tint = np.zeros((base.height, base.width, 4), dtype=np.uint8)
            tint[obj.mask] = (*color, int(255 * alpha))
            layer = Image.alpha_composite(layer, Image.fromarray(tint, "RGBA"))
            draw = ImageDraw.Draw(layer)
        if show_vrt:
            for j in obj.vrt_ids:
                r, c = divmod(int(j), cols)
                cell = (c * cell_w, r * cell_h, (c + 1) * cell_w - 1, (r + 1) * cell_h - 1)
                draw.rectangle(cell, outline=(*color, 255), width=1)
        draw.rectangle(obj.box_xyxy, outline=(*color, 255), width=2)
        caption = f"{obj.label} {obj.score:.2f}".strip()
        x0, y0 = obj.box_xyxy[0], max(0.0, obj.box_xyxy[1] - 11)
        tw = draw.textlength(caption)
        draw.rectangle((x0, y0, x0 + tw + 4, y0 + 11), fill=(*color, 200))
        draw.text((x0 + 2, y0), caption, fill=(255, 255, 255, 255))
    return Image.alpha_composite(canvas, layer).convert("RGB")
