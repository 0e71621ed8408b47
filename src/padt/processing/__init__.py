"""Prompts, images and VRT strings in; model-ready ids out; completions back to text and objects.

- :mod:`padt.processing.processor`: :class:`PaDTProcessor` and the prompt batch :class:`PaDTBatch`;
- :mod:`padt.processing.images`: opening and sizing images (:func:`load_image`);
- :mod:`padt.processing.parsing`: the VRT-run parser (:func:`parse_completions`).
"""

from padt.processing.images import MAX_IMAGE_PIXELS, ImageInput, image_size, load_image, open_image
from padt.processing.parsing import (
    ParsedCompletion,
    ParsedObject,
    QuoteTracker,
    parse_completion,
    parse_completions,
)
from padt.processing.processor import PaDTBatch, PaDTProcessor

__all__ = [
    "MAX_IMAGE_PIXELS",
    "ImageInput",
    "PaDTBatch",
    "PaDTProcessor",
    "ParsedCompletion",
    "ParsedObject",
    "QuoteTracker",
    "image_size",
    "load_image",
    "open_image",
    "parse_completion",
    "parse_completions",
]
