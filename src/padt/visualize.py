"""Overlays: boxes, labels, scores, semi-transparent masks and (optionally) the VRT cells a model referred to,
drawn with supervision's annotators (labels are moved apart where they would overlap)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from padt.adapters import import_supervision
from padt.backbones import default_geometry
from padt.data.patches import merged_grid_for_image
from padt.processing.images import open_image

if TYPE_CHECKING:
    from padt.postprocess import Prediction

#: Object k is drawn in colour ``PALETTE[k % len(PALETTE)]`` (k: its position in ``prediction.objects``).
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


def object_colour(k: int) -> tuple[int, int, int]:
    """The colour of object ``k`` of a prediction, in overlays and wherever it is shown beside them."""
    return PALETTE[k % len(PALETTE)]


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


def vrt_cells(vrt_ids: list[int], size: tuple[int, int], processor: Any = None) -> np.ndarray:
    """``(len(vrt_ids), 4)`` pixel xyxy boxes of the merged patches ``vrt_ids`` on an image of ``size = (w, h)``."""
    rows, cols, _, _ = merged_grid_for(size, processor)
    cell_w, cell_h = size[0] / cols, size[1] / rows
    cells = [divmod(int(j), cols) for j in vrt_ids]
    return np.array(
        [(c * cell_w, r * cell_h, (c + 1) * cell_w - 1, (r + 1) * cell_h - 1) for r, c in cells],
        dtype=np.float32,
    ).reshape(-1, 4)


def draw_prediction(
    image: Any,
    prediction: Prediction,
    *,
    image_index: int = 0,
    show_vrt: bool = False,
    processor: Any = None,
    alpha: float = 0.45,
    scale: int = 1,
) -> Image.Image:
    """Draw the objects of ``prediction`` that lie in image ``image_index`` of the sample onto ``image``.

    ``scale``: draw on the image enlarged that many times (nearest neighbour), so that labels on a small image
    stay readable."""
    sv = import_supervision()
    base = open_image(image)
    original = base.size
    detections = prediction.to_supervision(image_index)
    if detections.mask is not None and detections.mask.shape[1:] != (base.height, base.width):
        detections.mask = None
    if scale != 1:
        base = base.resize((base.width * scale, base.height * scale), Image.NEAREST)
        detections.xyxy = detections.xyxy * scale
        if detections.mask is not None:
            detections.mask = detections.mask.repeat(scale, axis=1).repeat(scale, axis=2)
    colours = sv.ColorPalette([sv.Color(*c) for c in PALETTE])
    index = detections.data["object_index"]
    side = max(base.size)
    thickness = max(2, round(side / 320))
    canvas = base.copy()
    if detections.mask is not None:
        canvas = sv.MaskAnnotator(color=colours, opacity=alpha).annotate(
            canvas, detections, custom_color_lookup=index
        )
    if show_vrt and len(detections):
        runs = detections.data["vrt_ids"]
        boxes = np.concatenate([vrt_cells(run, original, processor) for run in runs]) * scale
        cells = sv.Detections(xyxy=boxes)
        owner = np.concatenate([np.full(len(run), k) for run, k in zip(runs, index)]).astype(int)
        canvas = sv.BoxAnnotator(color=colours, thickness=max(1, thickness // 2)).annotate(
            canvas, cells, custom_color_lookup=owner
        )
    canvas = sv.BoxAnnotator(color=colours, thickness=thickness).annotate(
        canvas, detections, custom_color_lookup=index
    )
    labels = [
        f"{name} {score:.2f}".strip()
        for name, score in zip(detections.data["class_name"], detections.confidence)
    ]
    labeller = sv.RichLabelAnnotator(
        color=colours, font_size=max(11, round(side / 45)), text_padding=2, smart_position=True
    )
    return labeller.annotate(canvas, detections, labels=labels, custom_color_lookup=index)
