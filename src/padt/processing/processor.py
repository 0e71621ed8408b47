"""The processor: prompts, images and VRT strings in; model-ready ids out; completions back to objects.

:class:`PaDTProcessor` wraps the base model's transformers processor (:mod:`padt.backbones`):

- prompts are rendered with the base's chat template, images first, then the text, with the default system
  prompt and the generation prompt (docs/method.md §5.1); one or several images per sample, or none;
- VRTs are written ``<|VRT_j|>`` and never looked up in the tokenizer: published tokenizers may or may not hold
  ``<|VRT_i|>``/``<|empty_token_k|>`` added tokens (§3.3). Text is split on the VRT pattern, the text pieces are
  tokenised and the local id ``V + j`` is inserted for each VRT, which is exactly how an added token splits the
  text in the reference tokenizer; ids ``>= V`` decode to ``<|VRT_{id - V}|>``;
- the batch's :class:`~padt.vrt.VRTLayout` is built here once and travels with the inputs to the model,
  generation, parsing and decoding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from padt.backbones import PatchGeometry, get_backbone
from padt.errors import PaDTError
from padt.processing.images import ImageInput, load_image
from padt.processing.parsing import (
    ParsedCompletion,
    as_id_list,
    is_unused_id,
    parse_completion,
    parse_completions,
)
from padt.tasks import Task, get_task, task_of_prompt
from padt.vrt import VRT_PATTERN, VRTLayout, vrt_token, vrts_per_image


def _read_chat_template(path: Path) -> str | None:
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text()).get("chat_template")
    return None


def _read_config(path: Path) -> dict[str, Any] | None:
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError):
        raise PaDTError(f"{config} is not valid JSON; restore the checkpoint's config.json") from None
    if not isinstance(data, dict):
        raise PaDTError(f"{config} does not hold a model config; restore the checkpoint's config.json")
    return data


#: Files of which a tokenizer folder has at least one.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")


def _read_vocab_size(path: Path) -> int | None:
    data = _read_config(path)
    if data is None:
        return None
    text = data.get("text_config") or {}
    value = text.get("vocab_size", data.get("vocab_size"))
    return int(value) if value is not None else None


@dataclass
class PaDTBatch:
    """A tokenised prompt batch.

    Attributes:
        inputs: model-ready ``BatchFeature``: ``input_ids`` (``(B, L)``, VRTs as GLOBAL ids),
            ``attention_mask``, and when the batch has images ``pixel_values``, ``image_grid_thw``;
            ``mm_token_type_ids`` when the transformers processor produces them; ``vrt_layout`` (= ``layout``).
        layout: where each image's VRTs live; converts local <-> global ids. It is the batch's only layout: the
            model's forward, ``generate``, the parser and the decoder all use it.
        prompts: rendered chat-template prompts, before ``<|image_pad|>`` expansion.
        image_sizes: original ``(width, height)`` of each sample's images (before any resizing).
    """

    inputs: BatchFeature
    layout: VRTLayout
    prompts: list[str]
    image_sizes: list[list[tuple[int, int]]]

    def to(self, device: torch.device | str) -> PaDTBatch:
        """Move the tensors (inputs and layout) to ``device``."""
        layout = self.layout.to(device)
        inputs = self.inputs.to(device)
        inputs["vrt_layout"] = layout
        return PaDTBatch(inputs, layout, self.prompts, self.image_sizes)


class PaDTProcessor:
    """Prompts, images and VRT strings in; model-ready ids out; completions back to text and objects.

    Args:
        processor: the base model's transformers processor (its tokenizer, image processor and chat template;
            :meth:`padt.backbones.Backbone.build_processor`).
        vocab_size: ``V``, the model's text vocabulary size (``config.text_config.vocab_size``); VRT ``j``
            of a sample has local id ``V + j``.
        max_side: optional cap on the longer image side in pixels (the reference demo uses 644).
    """

    def __init__(self, processor: Any, vocab_size: int, *, max_side: int | None = None) -> None:
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
        ``chat_template.json``) and the current one. The base model and ``vocab_size`` come from the folder's
        ``config.json`` (Qwen2.5-VL without one). Extra ``kwargs`` go to ``AutoTokenizer.from_pretrained``.
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
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise PaDTError(
                f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the tokenizer files of the "
                "checkpoint's base model (tokenizer.json, tokenizer_config.json, chat template) into it"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        except (OSError, ValueError) as error:
            raise PaDTError(f"cannot load the tokenizer in {folder} ({str(error).splitlines()[0]})") from None
        overrides = {
            k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None
        }
        base = _read_backbone(folder)
        image_processor = base.load_image_processor(os.fspath(folder), **overrides)
        processor = base.build_processor(image_processor, tokenizer, _read_chat_template(folder))
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
    def image_processor(self) -> Any:
        """The wrapped image processor."""
        return self.processor.image_processor

    @property
    def geometry(self) -> PatchGeometry:
        """Patch side, merge size and VRT cell of the images this processor makes (its image processor's)."""
        return PatchGeometry.of(self.image_processor)

    @property
    def merge_size(self) -> int:
        """Spatial merge size ``m``: one VRT per ``m x m`` ViT patches."""
        return self.geometry.merge_size

    @property
    def pixel_limits(self) -> tuple[int, int]:
        """``(min_pixels, max_pixels)`` of the image processor."""
        size = self.image_processor.size
        return int(size["shortest_edge"]), int(size["longest_edge"])

    def vrt_grid(self, width: int, height: int) -> tuple[int, int]:
        """``(rows, cols)`` of the VRT grid this processor gives an image of ``width x height`` pixels."""
        return self.geometry.vrt_grid(height, width, *self.pixel_limits)

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
        for token_id in as_id_list(ids):
            if token_id >= self.vocab_size:
                out.append(self._decode_text(run, skip_special_tokens))
                run = []
                out.append(vrt_token(token_id - self.vocab_size))
            elif not is_unused_id(self.tokenizer, token_id, self.vocab_size):
                run.append(token_id)
        out.append(self._decode_text(run, skip_special_tokens))
        return "".join(out)

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

    @property
    def prompt_end(self) -> str:
        """What a rendered prompt holds after the text of its last user message (end of turn, generation
        prompt)."""
        marker = "\x00padt\x00"
        return self.render_prompt(marker).split(marker, 1)[1]

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
                prompt is built (:meth:`padt.tasks.Task.prompt`).
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
            needs = tasks[b] or task_of_prompt(prompt)
            if needs is not None and not imgs:
                raise PaDTError(f"sample {b}: the {needs.name} task needs an image; pass images=... for it")
        for b, text in enumerate(texts):
            if text is None and tasks[b] is not None:
                texts[b] = text = ""  # the task's prompt needs no text (RIC)
            self._check_user_text(text, b)
        texts = [t.prompt(x) if t else x for t, x in zip(tasks, texts)]

        cell = self.geometry.cell_px
        loaded = [
            [load_image(img, max_side=self.max_side, min_side=cell) for img in imgs] for imgs in sample_images
        ]
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
        data["vrt_layout"] = layout  # the batch's one layout travels with the inputs (model, generate)
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

    @property
    def control_tokens(self) -> tuple[str, ...]:
        """The tokenizer's special tokens (``<|im_end|>``, ``<|image_pad|>``...): the chat template's own."""
        tokens = {t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special}
        tokens |= set(self.tokenizer.all_special_tokens)
        # Tokenizers saved by the reference trainer may hold <|VRT_i|> as added tokens: those stay allowed.
        return tuple(sorted(t for t in tokens if not VRT_PATTERN.fullmatch(t)))

    def _check_user_text(self, text: str, sample: int) -> None:
        """User text must not contain the chat template's control tokens: typed into a prompt, ``<|im_end|>``
        would end the user's turn. VRT strings (``<|VRT_j|>``) are allowed."""
        if not isinstance(text, str):
            raise PaDTError(f"sample {sample}: the prompt must be text, got {type(text).__name__}")
        if "<|" not in text:
            return
        found = [t for t in self.control_tokens if t in text]
        if found:
            raise PaDTError(
                f"sample {sample}: the prompt contains {found[0]}, a control token of the chat template; remove "
                "it (VRTs written <|VRT_j|> are allowed)"
            )

    @staticmethod
    def _normalise_tasks(task, batch_size: int) -> list[Task | None]:
        if task is None or isinstance(task, str):
            tasks = [task] * batch_size
        else:
            tasks = list(task)
            if len(tasks) != batch_size:
                raise PaDTError(f"got {batch_size} prompts but {len(tasks)} tasks; pass one task per prompt")
        return [get_task(t) if t else None for t in tasks]

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
        attention_mask: torch.Tensor | None = None,
        eos_token_ids: int | Collection[int] | None = None,
        layout: VRTLayout | None = None,
        num_vrts: int | None = None,
    ) -> ParsedCompletion | list[ParsedCompletion]:
        """Parse LOCAL completion ids (prompt removed) with this processor's tokenizer and ``V``: one completion
        (1-D ids; ``num_vrts`` bounds its VRT indices) or a ``(B, L)`` batch
        (:func:`~padt.processing.parsing.parse_completions`; ``attention_mask`` and the batch's ``layout``
        apply)."""
        if isinstance(ids, torch.Tensor) and ids.ndim == 2:
            return parse_completions(
                ids,
                tokenizer=self.tokenizer,
                vocab_size=self.vocab_size,
                attention_mask=attention_mask,
                eos_token_ids=eos_token_ids,
                layout=layout,
            )
        if attention_mask is not None or layout is not None:
            raise PaDTError("attention_mask and layout apply to a (B, L) batch of completions")
        return parse_completion(
            ids,
            tokenizer=self.tokenizer,
            vocab_size=self.vocab_size,
            eos_token_ids=eos_token_ids,
            num_vrts=num_vrts,
        )


def _read_backbone(folder: Path) -> Any:
    """The adapter of the base named by a checkpoint folder's ``config.json`` (Qwen2.5-VL without one)."""
    data = _read_config(folder)
    return get_backbone(str(data.get("model_type", "qwen2_5_vl"))) if data is not None else get_backbone()


__all__ = ["PaDTBatch", "PaDTProcessor"]
