"""Completions -> text and objects: the VRT-run parser (docs/method.md §5.5, §6.4).

:func:`parse_completions` turns the local ids of generated completions into objects with a few deliberate
departures from the reference parser, listed in :func:`parse_completion`'s docstring.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from padt.vrt import VRTLayout, vrt_token

_EMPTY_TOKEN = re.compile(r"<\|empty_token_\d+\|>")


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


def as_id_list(ids: torch.Tensor | Sequence[int]) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.ndim != 1:
            raise ValueError(f"expected the ids of one completion (1-D), got shape {tuple(ids.shape)}")
        return [int(v) for v in ids.tolist()]
    return [int(v) for v in ids]


def is_unused_id(tokenizer: PreTrainedTokenizerBase, token_id: int, vocab_size: int) -> bool:
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
        if is_unused_id(tokenizer, token_id, vocab_size):
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
    id_list = as_id_list(ids)
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


__all__ = [
    "ParsedCompletion",
    "ParsedObject",
    "QuoteTracker",
    "as_id_list",
    "is_unused_id",
    "parse_completion",
    "parse_completions",
]
