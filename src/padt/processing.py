"""Chat template, VRT strings, tokenisation and completion parsing (docs/method.md §3.3, §5.1, §6.4).

:class:`PaDTProcessor` wraps a transformers ``Qwen2_5_VLProcessor``:

- prompts are rendered with the Qwen2.5-VL chat template, images first, then the text, with the default
  system prompt and the generation prompt (§5.1); one or several images per sample, or none;
- VRTs are written ``<|VRT_j|>`` and never looked up in the tokenizer: published tokenizers may or may not
  hold ``<|VRT_i|>``/``<|empty_token_k|>`` added tokens (§3.3). Text is split on the VRT pattern, the text
  pieces are tokenised and the local id ``V + j`` is inserted for each VRT, which is exactly how an added
  token splits the text in the reference tokenizer; ids ``>= V`` decode to ``<|VRT_{id - V}|>``;
- the local/global VRT id arithmetic lives in :class:`padt.vrt.VRTLayout`.

:func:`parse_completion` turns the local ids of one generated completion into objects (§5.5, §6.4) with a
few deliberate departures from the reference parser, listed in its docstring.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers import (
    AutoTokenizer,
    BatchFeature,
    PreTrainedTokenizerBase,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
)
from transformers.image_processing_utils import BaseImageProcessor

from padt import prompts
from padt.errors import PaDTError
from padt.vrt import VRT_PATTERN, VRTLayout, vrt_token, vrts_per_image

#: Qwen2.5-VL's chat template (as saved with the reference checkpoints' processor, chat_template.json).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in "
    "messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string "
    "%}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if "
    "content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = "
    "image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif "
    "%}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content "
    "%}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value "
    "}}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ "
    "content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt "
    "%}<|im_start|>assistant\n{% endif %}"
)

#: Side (px) of one merged patch = one VRT.
PATCH_PX = 28
#: The reference demo caps the longer image side at this many pixels (docs/method.md §2.2).
DEMO_MAX_SIDE = 644

ImageInput = Image.Image | str | os.PathLike
_EMPTY_TOKEN = re.compile(r"<\|empty_token_\d+\|>")


# ====================================================================== transformers processor plumbing
class _StillImageQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor.

    PaDT only reads still images, and transformers' video processor needs torchvision. A processor whose
    ``__init__`` does not name ``video_processor`` simply has no such attribute, which transformers supports.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        # Saved files name the stock class so that any Qwen2.5-VL loader reads them.
        out = super().to_dict()
        out["processor_class"] = Qwen2_5_VLProcessor.__name__
        return out


def build_qwen2_5_vl_processor(
    image_processor: BaseImageProcessor, tokenizer: PreTrainedTokenizerBase, chat_template: str | None = None
) -> Qwen2_5_VLProcessor:
    """A ``Qwen2_5_VLProcessor`` from an image processor and a tokenizer, without a video processor."""
    template = chat_template or getattr(tokenizer, "chat_template", None) or QWEN2_5_VL_CHAT_TEMPLATE
    return _StillImageQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=template
    )


def _read_chat_template(path: Path) -> str | None:
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text()).get("chat_template")
    return None


def _read_vocab_size(path: Path) -> int | None:
    config = path / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    text = data.get("text_config") or {}
    value = text.get("vocab_size", data.get("vocab_size"))
    return int(value) if value is not None else None


# ====================================================================== images
def load_image(image: ImageInput, *, max_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Open (if a path) and size an image for the processor; returns it and its ORIGINAL ``(width, height)``.

    - ``max_side``: if given, the longer side is scaled down to it (the reference demo uses 644, §2.2; the
      evaluation scripts do not cap).
    - Sides shorter than 28 px are scaled up (LANCZOS) so the short side is 28, as the reference trainer and
      evaluation do (docs/method.md §2.2); this runs after the cap and wins over it.

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
    if min(width, height) < PATCH_PX:
        # round, not int: 28 / s * s may land just below 28 in floating point.
        scale = PATCH_PX / min(width, height)
        size = (max(PATCH_PX, round(width * scale)), max(PATCH_PX, round(height * scale)))
        image = _resize(image, size, Image.LANCZOS)
    return image, original


def _resize(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    return image.resize(size, resample)


# ====================================================================== batches
@dataclass
class PaDTBatch:
    """A tokenised prompt batch.

    Attributes:
        inputs: model-ready ``BatchFeature``: ``input_ids`` (``(B, L)``, VRTs as GLOBAL ids),
            ``attention_mask``, and when the batch has images ``pixel_values``, ``image_grid_thw``;
            ``mm_token_type_ids`` when the transformers processor produces them.
        layout: where each image's VRTs live; converts local <-> global ids.
        prompts: rendered chat-template prompts, before ``<|image_pad|>`` expansion.
        image_sizes: original ``(width, height)`` of each sample's images (before any resizing).
    """

    inputs: BatchFeature
    layout: VRTLayout
    prompts: list[str]
    image_sizes: list[list[tuple[int, int]]]

    def to(self, device: torch.device | str) -> PaDTBatch:
        """Move the tensors (inputs and layout) to ``device``."""
        return PaDTBatch(self.inputs.to(device), self.layout.to(device), self.prompts, self.image_sizes)


# ====================================================================== parsing
@dataclass
class ParsedObject:
    """One object of a completion: a maximal run of consecutive VRT tokens.

    Attributes:
        label: the quoted phrase the run belongs to (``""`` when there is none, e.g. captions).
        vrt_indices: local VRT indices ``j`` (id - V) of the run, in order.
        positions: index ``t`` in the completion of each of those tokens, to pair a VRT with the hidden state
            of the step that emitted it (the last-layer state at sequence position ``P - 1 + t`` for a prompt
            of length ``P``, docs/method.md §6.2).
    """

    label: str
    vrt_indices: list[int]
    positions: list[int]


@dataclass
class ParsedCompletion:
    """A parsed completion.

    Attributes:
        text: decoded completion up to (not including) the first eos, VRTs written ``<|VRT_j|>``.
        objects: the VRT runs in order of appearance.
        warnings: what was skipped or looked malformed, one sentence each.
        finished: True when an eos token ended the completion (False: cut off, e.g. by ``max_new_tokens``).
    """

    text: str
    objects: list[ParsedObject] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    finished: bool = False


class QuoteTracker:
    """Follows double quotes through the text to give each VRT run the quoted phrase it belongs to.

    The closing quote of a phrase makes it the current label. Opening a new quote discards the previous label,
    so a stale label never crosses a new quoted phrase (the reference keeps the old one, docs/method.md §6.4).
    """

    def __init__(self) -> None:
        self.label = ""
        self.open = False
        self._phrase: list[str] = []

    def feed(self, text: str) -> None:
        for char in text:
            if char == '"':
                if self.open:
                    self.label = "".join(self._phrase).strip()
                else:
                    self.label = ""
                    self._phrase = []
                self.open = not self.open
            elif self.open:
                self._phrase.append(char)

    def current(self) -> str:
        """Label for a run starting now; inside an open quote, the phrase so far."""
        return "".join(self._phrase).strip() if self.open else self.label


def _as_id_list(ids: torch.Tensor | Sequence[int]) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.ndim != 1:
            raise ValueError(f"expected the ids of one completion (1-D), got shape {tuple(ids.shape)}")
        return [int(v) for v in ids.tolist()]
    return [int(v) for v in ids]


def _is_unused_id(tokenizer: PreTrainedTokenizerBase, token_id: int, vocab_size: int) -> bool:
    """Ids that are neither text nor VRTs: negative, past the tokenizer, or ``<|empty_token_k|>`` padding."""
    if token_id < 0:
        return True
    if token_id >= vocab_size:
        return False
    if token_id >= len(tokenizer):
        return True
    token = tokenizer.convert_ids_to_tokens(token_id)
    return token is None or bool(_EMPTY_TOKEN.fullmatch(token))


def _parse(
    ids: list[int],
    index: list[int],
    *,
    tokenizer: PreTrainedTokenizerBase,
    vocab_size: int,
    eos_token_ids: Collection[int],
    num_vrts: int | None,
) -> ParsedCompletion:
    parsed = ParsedCompletion(text="")
    quotes = QuoteTracker()
    pieces: list[str] = []
    text_run: list[int] = []
    current: ParsedObject | None = None
    skipped_unused: list[int] = []
    skipped_range: list[int] = []

    def flush_text() -> None:
        if text_run:
            text = tokenizer.decode(text_run, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            pieces.append(text)
            quotes.feed(text)
            text_run.clear()

    def close_object() -> None:
        nonlocal current
        if current is not None:
            parsed.objects.append(current)
            current = None

    for token_id, position in zip(ids, index):
        if token_id in eos_token_ids:
            parsed.finished = True
            break
        if _is_unused_id(tokenizer, token_id, vocab_size):
            skipped_unused.append(position)
            close_object()
            continue
        if token_id < vocab_size:
            close_object()
            text_run.append(token_id)
            continue
        j = token_id - vocab_size
        if num_vrts is not None and j >= num_vrts:
            skipped_range.append(position)
            close_object()
            continue
        flush_text()
        pieces.append(vrt_token(j))
        if current is None:
            if quotes.open:
                parsed.warnings.append(
                    f"object {len(parsed.objects)} starts inside an unclosed quote; "
                    "its label is the open phrase"
                )
            current = ParsedObject(label=quotes.current(), vrt_indices=[], positions=[])
        current.vrt_indices.append(j)
        current.positions.append(position)
    if current is not None and not parsed.finished:
        parsed.warnings.append(
            f"the completion ends inside the VRT run of object {len(parsed.objects)} without an eos token "
            f"(cut off?); the object is kept with its {len(current.vrt_indices)} VRTs"
        )
    close_object()
    flush_text()
    if skipped_unused:
        parsed.warnings.append(
            f"skipped {len(skipped_unused)} token(s) that are neither text nor VRTs at completion positions "
            f"{skipped_unused}"
        )
    if skipped_range:
        parsed.warnings.append(
            f"skipped {len(skipped_range)} VRT token(s) beyond the sample's {num_vrts} image patches "
            f"at completion positions {skipped_range}"
        )
    parsed.text = "".join(pieces)
    return parsed


def _eos_set(tokenizer: PreTrainedTokenizerBase, eos_token_ids: int | Collection[int] | None) -> set[int]:
    eos = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    if eos_token_ids is not None:
        eos |= {int(eos_token_ids)} if isinstance(eos_token_ids, int) else {int(v) for v in eos_token_ids}
    return eos


def parse_completion(
    ids: torch.Tensor | Sequence[int],
    *,
    tokenizer: PreTrainedTokenizerBase,
    vocab_size: int,
    eos_token_ids: int | Collection[int] | None = None,
    num_vrts: int | None = None,
) -> ParsedCompletion:
    """Parse the LOCAL ids of one generated completion (prompt removed) into text and objects (§5.5, §6.4).

    - An object is a maximal run of consecutive VRT ids (``>= vocab_size``); its local indices and its
      positions in ``ids`` are returned.
    - Its label is the quoted phrase it belongs to: the most recent ``"..."`` before it, ``""`` if none.
    - Parsing stops at the first eos: the tokenizer's eos (``<|im_end|>``) and any ``eos_token_ids``.
    - ``num_vrts``: the number of VRTs the sample's images have; VRTs beyond it are skipped with a warning.

    Departures from the reference parser (docs/method.md §6.4, §12), all deliberate: a run cut off without
    eos still yields its object (``finished=False``); a VRT as the first token is an ordinary object; ids that
    are neither text nor VRTs are skipped with a warning instead of dropping every object of the sample; a new
    quoted phrase resets the label instead of leaking the previous one.
    """
    id_list = _as_id_list(ids)
    return _parse(
        id_list,
        list(range(len(id_list))),
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        eos_token_ids=_eos_set(tokenizer, eos_token_ids),
        num_vrts=num_vrts,
    )


def parse_completions(
    ids: torch.Tensor,
    *,
    tokenizer: PreTrainedTokenizerBase,
    vocab_size: int,
    attention_mask: torch.Tensor | None = None,
    eos_token_ids: int | Collection[int] | None = None,
    layout: VRTLayout | None = None,
) -> list[ParsedCompletion]:
    """Parse a ``(B, L)`` batch of LOCAL completion ids (prompt removed).

    Positions where ``attention_mask`` is 0 (left or right padding) are ignored; the returned positions still
    index the columns of ``ids``. Padding written after an eos is ignored anyway. With ``layout``, VRT indices
    beyond each sample's images are skipped with a warning.
    """
    if ids.ndim != 2:
        raise ValueError(f"expected (B, L) completion ids, got shape {tuple(ids.shape)}")
    eos = _eos_set(tokenizer, eos_token_ids)
    limits = layout.sample_num_vrts.tolist() if layout is not None else [None] * ids.shape[0]
    if len(limits) != ids.shape[0]:
        raise ValueError(f"layout has {len(limits)} samples but ids have {ids.shape[0]} rows")
    rows = ids.tolist()
    out = []
    for b, row in enumerate(rows):
        if attention_mask is None:
            index = list(range(len(row)))
        else:
            index = [int(t) for t in attention_mask[b].nonzero().flatten().tolist()]
        out.append(
            _parse(
                [row[t] for t in index],
                index,
                tokenizer=tokenizer,
                vocab_size=vocab_size,
                eos_token_ids=eos,
                num_vrts=limits[b],
            )
        )
    return out


# ====================================================================== the processor
def vrt_run(indices: Sequence[int]) -> str:
    """VRT strings of a run of local indices, with no separator (the reference's ``pid2vrt``)."""
    return "".join(vrt_token(j) for j in indices)


def _prompt_task(text: str) -> str | None:
    """The task whose prompt wording ``text`` uses, if any (all of them need an image)."""
    if text.startswith(prompts.REC_PROMPT.split("{}")[0]):
        return "rec"
    if text.startswith(prompts.OVD_PROMPT.split("{}")[0]):
        return "ovd"
    if text.strip() == prompts.RIC_PROMPT:
        return "ric"
    return None


class PaDTProcessor:
    """Prompts, images and VRT strings in; model-ready ids out; completions back to text and objects.

    Args:
        processor: a transformers ``Qwen2_5_VLProcessor`` (its tokenizer, image processor and chat template).
        vocab_size: ``V``, the model's text vocabulary size (``config.text_config.vocab_size``); VRT ``j``
            of a sample has local id ``V + j``.
        max_side: optional cap on the longer image side in pixels (the reference demo uses 644).
    """

    def __init__(
        self, processor: Qwen2_5_VLProcessor, vocab_size: int, *, max_side: int | None = None
    ) -> None:
        tokenizer = processor.tokenizer
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.processor = processor
        self.vocab_size = int(vocab_size)
        self.max_side = max_side
        self.image_token_id = int(processor.image_token_id)
        if tokenizer.pad_token_id is None:
            raise PaDTError("the tokenizer has no pad token; set tokenizer.pad_token = '<|endoftext|>'")
        if tokenizer.eos_token_id is None:
            raise PaDTError("the tokenizer has no eos token; set tokenizer.eos_token = '<|im_end|>'")

    # ------------------------------------------------------------------ construction and saving
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        vocab_size: int | None = None,
        *,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_side: int | None = None,
        **kwargs: Any,
    ) -> PaDTProcessor:
        """Load tokenizer, image processor and chat template from a local folder (offline).

        Reads both the transformers 4.50 layout the reference saved (``preprocessor_config.json``,
        ``chat_template.json``) and the current one. ``vocab_size`` defaults to the folder's ``config.json``.
        Extra ``kwargs`` go to ``AutoTokenizer.from_pretrained``.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise PaDTError(
                f"processor folder not found: {os.fspath(path)!r}; pass a local checkpoint folder"
            )
        if vocab_size is None:
            vocab_size = _read_vocab_size(folder)
            if vocab_size is None:
                raise PaDTError(
                    f"{os.fspath(path)!r} has no config.json with vocab_size; "
                    "pass vocab_size= (the model's V)"
                )
        kwargs.setdefault("local_files_only", True)
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        overrides = {
            k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None
        }
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder, local_files_only=True, **overrides)
        processor = build_qwen2_5_vl_processor(image_processor, tokenizer, _read_chat_template(folder))
        return cls(processor, vocab_size, max_side=max_side)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save the wrapped processor (tokenizer, image processor, chat template) to ``path``."""
        self.processor.save_pretrained(os.fspath(path))

    # ------------------------------------------------------------------ properties
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The wrapped text tokenizer."""
        return self.processor.tokenizer

    @property
    def image_processor(self) -> BaseImageProcessor:
        """The wrapped image processor."""
        return self.processor.image_processor

    @property
    def merge_size(self) -> int:
        """Spatial merge size ``m`` (2 for Qwen2.5-VL): one VRT per ``m x m`` ViT patches."""
        return int(self.image_processor.merge_size)

    @property
    def eos_token_id(self) -> int:
        """``<|im_end|>``: ends an answer."""
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_token_id(self) -> int:
        """Padding id (``<|endoftext|>`` for Qwen)."""
        return int(self.tokenizer.pad_token_id)

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added); ``<|VRT_j|>`` becomes the local id ``V + j``."""
        return self._encode_many([text])[0]

    def _encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        # One tokenizer call for all text pieces of all texts.
        layouts: list[list[str | int]] = []
        pieces: list[str] = []
        for text in texts:
            parts: list[str | int] = []
            start = 0
            for match in VRT_PATTERN.finditer(text):
                if match.start() > start:
                    parts.append(text[start : match.start()])
                parts.append(self.vocab_size + int(match.group(1)))
                start = match.end()
            if start < len(text):
                parts.append(text[start:])
            pieces.extend(p for p in parts if isinstance(p, str))
            layouts.append(parts)
        encoded = iter(self.tokenizer(pieces, add_special_tokens=False)["input_ids"]) if pieces else iter(())
        out = []
        for parts in layouts:
            ids: list[int] = []
            for part in parts:
                if isinstance(part, int):
                    ids.append(part)
                else:
                    ids.extend(next(encoded))
            out.append(ids)
        return out

    def decode(self, ids: torch.Tensor | Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of LOCAL ids; ids ``>= V`` become ``<|VRT_{id - V}|>``, unused ids are dropped."""
        out: list[str] = []
        run: list[int] = []
        for token_id in _as_id_list(ids):
            if token_id >= self.vocab_size:
                out.append(self._decode_text(run, skip_special_tokens))
                run = []
                out.append(vrt_token(token_id - self.vocab_size))
            elif not _is_unused_id(self.tokenizer, token_id, self.vocab_size):
                run.append(token_id)
        out.append(self._decode_text(run, skip_special_tokens))
        return "".join(out)

    def decode_tokens(self, ids: torch.Tensor | Sequence[int]) -> list[str]:
        """One string per token (VRTs as ``<|VRT_j|>``), like the reference's per-token ``batch_decode``."""
        return [self.decode([token_id]) for token_id in _as_id_list(ids)]

    def _decode_text(self, ids: list[int], skip_special_tokens: bool) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(
            ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
        )

    # ------------------------------------------------------------------ prompts
    def conversation(self, text: str, num_images: int = 1) -> list[dict[str, Any]]:
        """The reference's one-turn conversation: the images first, then the text (§5.1)."""
        content: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]

    def render_prompt(self, text: str, num_images: int = 1) -> str:
        """Chat-template prompt (default system prompt, generation prompt), before image token expansion."""
        rendered = self.processor.apply_chat_template(
            self.conversation(text, num_images), tokenize=False, add_generation_prompt=True
        )
        return rendered if isinstance(rendered, str) else rendered[0]

    # ------------------------------------------------------------------ prompt batches
    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: ImageInput | Sequence[ImageInput | Sequence[ImageInput] | None] | None = None,
        *,
        task: str | Sequence[str | None] | None = None,
        padding_side: str = "left",
    ) -> PaDTBatch:
        """Tokenise a batch of prompts with their images.

        Args:
            text: one prompt or one per sample. With ``task``, the user text of the task (a referring sentence
                for rec/res, a comma-separated class list for ovd, nothing for ric) from which the exact task
                prompt is built (:func:`padt.prompts.task_prompt`).
            images: for one sample, an image or a list of images; for a batch, one entry per sample, each
                ``None`` (text only), an image or a list of images. Images are PIL images or paths.
            task: ``"rec"``, ``"res"``, ``"ovd"``, ``"ric"`` for every sample, one per sample, or None.
            padding_side: ``"left"`` for generation (default), ``"right"`` otherwise.

        Returns:
            A :class:`PaDTBatch`; its ``input_ids`` hold GLOBAL VRT ids (what the model consumes).
        """
        texts, sample_images = self._normalise_inputs(text, images, task)
        tasks = self._normalise_tasks(task, len(texts))
        for b, (prompt, imgs) in enumerate(zip(texts, sample_images)):
            needs = tasks[b] or _prompt_task(prompt)
            if needs is not None and not imgs:
                raise PaDTError(f"sample {b}: the {needs} task needs an image; pass images=... for it")
        try:
            texts = [prompts.task_prompt(t, x) if t else x for t, x in zip(tasks, texts)]
        except ValueError as error:
            raise PaDTError(str(error)) from None

        loaded = [[load_image(img, max_side=self.max_side) for img in imgs] for imgs in sample_images]
        flat = [img for sample in loaded for img, _ in sample]
        rendered = [self.render_prompt(t, len(imgs)) for t, imgs in zip(texts, sample_images)]
        ids = self._encode_many(rendered)

        data: dict[str, Any] = {}
        if flat:
            vision = self.image_processor(images=flat, return_tensors="pt")
            grid = vision["image_grid_thw"]
            data.update(vision)
        else:
            grid = torch.zeros(0, 3, dtype=torch.long)
        sizes = vrts_per_image(grid, self.merge_size).tolist()
        owner = [b for b, sample in enumerate(loaded) for _ in sample]
        ids = [self._expand_image_tokens(b, row, sizes, owner) for b, row in enumerate(ids)]

        input_ids, attention_mask = self._pad(ids, padding_side)
        layout = VRTLayout(
            self.vocab_size, grid, torch.tensor(owner, dtype=torch.long), len(texts), self.merge_size
        )
        try:
            input_ids = layout.to_global(input_ids)
        except ValueError as error:
            raise PaDTError(str(error)) from None
        data["input_ids"] = input_ids
        data["attention_mask"] = attention_mask
        if getattr(self.processor, "return_mm_token_type_ids", False):
            data["mm_token_type_ids"] = torch.tensor(
                self.processor.create_mm_token_type_ids(input_ids.tolist()), dtype=torch.long
            )
        order = ["input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"]
        inputs = BatchFeature(
            {k: data[k] for k in order if k in data} | {k: v for k, v in data.items() if k not in order}
        )
        image_sizes = [[size for _, size in sample] for sample in loaded]
        return PaDTBatch(inputs=inputs, layout=layout, prompts=rendered, image_sizes=image_sizes)

    def _normalise_inputs(self, text, images, task) -> tuple[list[str], list[list[ImageInput]]]:
        def as_image_list(entry) -> list[ImageInput]:
            if entry is None:
                return []
            if isinstance(entry, (Image.Image, str, os.PathLike)):
                return [entry]
            return list(entry)

        if isinstance(text, str):
            return [text], [as_image_list(images)]
        if text is None:
            if not task:
                raise PaDTError("no prompt given; pass text=... (or task=... with its text)")
            if images is None or isinstance(images, (Image.Image, str, os.PathLike)):
                return [""], [as_image_list(images)]
            entries = list(images)
            return [""] * len(entries), [as_image_list(e) for e in entries]
        texts = list(text)
        if not texts:
            raise PaDTError("empty batch; pass at least one prompt")
        if images is None:
            return texts, [[] for _ in texts]
        if isinstance(images, (Image.Image, str, os.PathLike)):
            raise PaDTError("several prompts need one images entry per prompt (None for text-only prompts)")
        entries = list(images)
        if len(entries) != len(texts):
            raise PaDTError(
                f"got {len(texts)} prompts but {len(entries)} images entries; pass one entry per prompt "
                "(an image, a list of images, or None)"
            )
        return texts, [as_image_list(e) for e in entries]

    @staticmethod
    def _normalise_tasks(task, batch_size: int) -> list[str | None]:
        if task is None or isinstance(task, str):
            tasks = [task] * batch_size
        else:
            tasks = list(task)
            if len(tasks) != batch_size:
                raise PaDTError(f"got {batch_size} prompts but {len(tasks)} tasks; pass one task per prompt")
        for t in tasks:
            if t is not None and t.lower() not in prompts.TASKS:
                raise PaDTError(f"unknown task {t!r}; choose one of {', '.join(prompts.TASKS)}")
        return [t.lower() if t else None for t in tasks]

    def _expand_image_tokens(self, b: int, ids: list[int], sizes: list[int], owner: list[int]) -> list[int]:
        """Replace each ``<|image_pad|>`` of sample ``b`` by N copies (N = that image's VRT count), as the
        transformers processor does in text."""
        mine = [sizes[i] for i, o in enumerate(owner) if o == b]
        slots = [t for t, token_id in enumerate(ids) if token_id == self.image_token_id]
        if len(slots) != len(mine):
            raise PaDTError(
                f"sample {b} has {len(mine)} image(s) but its prompt holds {len(slots)} <|image_pad|> "
                "tokens; do not write <|image_pad|> in the prompt text"
            )
        out: list[int] = []
        start = 0
        for slot, n in zip(slots, mine):
            out.extend(ids[start:slot])
            out.extend([self.image_token_id] * n)
            start = slot + 1
        out.extend(ids[start:])
        return out

    def _pad(self, rows: list[list[int]], padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        length = max((len(r) for r in rows), default=0)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for b, row in enumerate(rows):
            if not row:
                continue
            span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
            input_ids[b, span] = torch.tensor(row, dtype=torch.long)
            attention_mask[b, span] = 1
        return input_ids, attention_mask

    # ------------------------------------------------------------------ completions (training targets)
    def encode_completions(
        self,
        texts: Sequence[str],
        *,
        add_eos: bool = True,
        layout: VRTLayout | None = None,
        padding_side: str = "right",
    ) -> BatchFeature:
        """Tokenise answers with VRT strings, as the reference trainer does (§5.1, §8.2).

        Each text is tokenised without special tokens; ``add_eos`` appends ``<|im_end|>`` unless the text
        already ends with it. Rows are right-padded with the pad id. The returned ``input_ids`` hold LOCAL VRT
        ids (``V + j``); convert with ``layout.to_global`` before a forward. With ``layout``, VRT indices beyond
        a sample's images raise :class:`PaDTError`.
        """
        eos = self.tokenizer.eos_token
        texts = [t + eos if add_eos and not t.endswith(eos) else t for t in texts]
        input_ids, attention_mask = self._pad(self._encode_many(texts), padding_side)
        if layout is not None:
            try:
                layout.to_global(input_ids)
            except ValueError as error:
                raise PaDTError(str(error)) from None
        return BatchFeature({"input_ids": input_ids, "attention_mask": attention_mask})

    # ------------------------------------------------------------------ parsing
    def parse(
        self,
        ids: torch.Tensor | Sequence[int],
        *,
        eos_token_ids: int | Collection[int] | None = None,
        num_vrts: int | None = None,
    ) -> ParsedCompletion:
        """:func:`parse_completion` with this processor's tokenizer and ``V``."""
        return parse_completion(
            ids,
            tokenizer=self.tokenizer,
            vocab_size=self.vocab_size,
            eos_token_ids=eos_token_ids,
            num_vrts=num_vrts,
        )

    def parse_completions(
        self,
        ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        eos_token_ids: int | Collection[int] | None = None,
        layout: VRTLayout | None = None,
    ) -> list[ParsedCompletion]:
        """:func:`parse_completions` with this processor's tokenizer and ``V``."""
        return parse_completions(
            ids,
            tokenizer=self.tokenizer,
            vocab_size=self.vocab_size,
            attention_mask=attention_mask,
            eos_token_ids=eos_token_ids,
            layout=layout,
        )


__all__ = [
    "DEMO_MAX_SIDE",
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "PaDTBatch",
    "PaDTProcessor",
    "ParsedCompletion",
    "ParsedObject",
    "build_qwen2_5_vl_processor",
    "load_image",
    "parse_completion",
    "parse_completions",
    "vrt_run",
]
