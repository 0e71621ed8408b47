"""Objects written as text coordinates instead of VRTs: the baseline PaDT is compared against.

Qwen2.5-VL grounds objects by writing absolute pixel coordinates of the image *as the model sees it* (the
processor's resized image). A text-coordinate model here uses the same answer templates as PaDT, with each
``<|Obj_k|>`` replaced by ``[x1,y1,x2,y2]`` instead of a VRT run, so that the two differ only in how an
object is referred to. A model trained this way has ``padt_answer_format = "text"`` in its config; prediction
then parses these boxes (no mask, score 1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from padt.errors import PaDTError

ANSWER_FORMATS = ("vrt", "text")
BOX_PATTERN = re.compile(r"\[\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\]")


def box_text(bbox_xyxy: Sequence[float], resized_hw: tuple[int, int]) -> str:
    """``[x1,y1,x2,y2]`` in integer pixels of the resized image, from a normalised xyxy box."""
    h, w = resized_hw
    x1, y1, x2, y2 = (float(v) for v in bbox_xyxy)
    coords = [round(x1 * w), round(y1 * h), round(x2 * w), round(y2 * h)]
    return "[" + ",".join(str(min(max(c, 0), side)) for c, side in zip(coords, (w, h, w, h))) + "]"


def parse_text_boxes(text: str, resized_hw: tuple[int, int]) -> list[tuple[str, list[float]]]:
    """``(label, normalised xyxy box)`` for every ``[x1,y1,x2,y2]`` of a completion, in order.

    The label is the quoted phrase the box belongs to (the sentence for REC, the class name for OVD), by the
    same rule as for VRT runs (:class:`padt.processing.QuoteTracker`). Boxes are clipped to the image; corners
    are put in order.
    """
    from padt.processing import QuoteTracker

    h, w = resized_hw
    if h <= 0 or w <= 0:
        raise PaDTError(f"resized image size must be positive, got {resized_hw}")
    out = []
    quotes, seen = QuoteTracker(), 0
    for match in BOX_PATTERN.finditer(text):
        quotes.feed(text[seen : match.start()])
        seen = match.start()
        x1, y1, x2, y2 = (int(v) for v in match.groups())
        xs = sorted(min(max(v / w, 0.0), 1.0) for v in (x1, x2))
        ys = sorted(min(max(v / h, 0.0), 1.0) for v in (y1, y2))
        out.append((quotes.current(), [xs[0], ys[0], xs[1], ys[1]]))
    return out


def strip_text_boxes(text: str) -> str:
    """The completion without its coordinate boxes (for captions)."""
    return BOX_PATTERN.sub("", text)
