"""Generation with visual reference tokens, on transformers' own generation loop.

What PaDT adds to stock ``generate`` (docs/method.md §6.1-§6.3, §12):

- the prompt's prototypes, VRT layout and logit mask are computed once at prefill and passed to every decode
  step (:meth:`PaDTForConditionalGeneration._update_model_kwargs_for_generation`);
- the decoder needs, for every generated VRT, the last-layer state of the step that emitted it. Instead of
  keeping every layer's hidden states for every step (``output_hidden_states=True``), a
  :class:`VRTStateRecorder` keeps one ``D``-vector per *emitted VRT*, nothing else;
- prefill logits are computed for the last position only (``logits_to_keep``), as in stock generation;
- optionally (:class:`VRTRepeatPenaltyLogitsProcessor`, ``vrt_repeat_penalty``), a penalty on the VRTs already
  in the object's run. Training runs hold 5 VRTs, distinct for an object with at least 5 foreground patches and
  drawn with replacement for a smaller one (§8.1). A small model decoding greedily tends to write its most
  likely patch five times even for a large object, which leaves the decoder one point of it instead of five;
  with the penalty the next-best patch wins when it is nearly as likely, while a small object's only patches
  still repeat. ``vrt_reuse_penalty`` does the same for the VRTs of the answer's earlier runs: a small model
  listing several objects tends to point at one it has already written.
- optionally (:class:`OVDEndPenaltyLogitsProcessor`, ``ovd_end_penalty``), a penalty on ending an OVD answer's
  list: where an object group has just closed and the answer may go on to another kind or end, the tokens that
  end it are lowered. A small model tends to stop listing before every object is named.
- optionally (:class:`OVDGrammarLogitsProcessor`, ``ovd_grammar``), OVD answers held to the answer format: only
  the prompt's class names, a count's worth of object runs per group, and an end within ``max_new_tokens``, so
  the answer always parses (:class:`OVDAnswerGrammar`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor

from padt import prompts
from padt.errors import PaDTError

FLUSH_EVERY = 16  # steps between the recorder's (only) host synchronisations
#: padt's own generation_config fields (:class:`VRTRepeatPenaltyLogitsProcessor`).
VRT_PENALTIES = ("vrt_repeat_penalty", "vrt_reuse_penalty")
#: The generation_config field of :class:`OVDEndPenaltyLogitsProcessor`.
OVD_END_PENALTY = "ovd_end_penalty"
#: The generation_config field of :class:`OVDGrammarLogitsProcessor`.
OVD_GRAMMAR = "ovd_grammar"


@dataclass
class VRTStateRecorder:
    """Keeps the last-layer hidden state of every step that emitted a VRT.

    The model hands it the ``B x D`` last-position state after every forward; once the token that state produced
    is known (next ``prepare_inputs_for_generation``, or the end of ``generate``) it joins a small window of
    candidates, and every :data:`FLUSH_EVERY` steps the rows whose token is a VRT are kept and the rest dropped.
    Memory: one vector per generated VRT plus the window; one device-to-host sync per window, so decoding stays
    asynchronous (a sync per step costs ~10% of a compiled static-cache step on a GPU).

    Attributes:
        vocab_size: ``V``; ids ``>= V`` are VRTs.
        prompt_length: padded prompt length (sequences index ``prompt_length + step``).
        states: per batch row, ``{step: D-vector}`` (complete after ``finish``).
        vision, vrt_layout: the prefill's vision outputs and VRT layout (what the decoder needs afterwards).
    """

    vocab_size: int
    prompt_length: int
    states: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)
    vision: Any = None
    vrt_layout: Any = None
    _pending: torch.Tensor | None = None
    _pending_step: int = -1
    _forward_calls: int = 0
    _window: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def after_forward(self, last_hidden_state: torch.Tensor) -> None:
        """Called after each forward with its ``B x L x D`` last-layer output: the last position predicts the
        next token (step ``_forward_calls``)."""
        self._pending = last_hidden_state[:, -1].detach()
        self._pending_step = self._forward_calls
        self._forward_calls += 1

    def observe(self, sequences: torch.Tensor) -> None:
        """Called with the sequences so far: pairs the pending state with the token it produced."""
        step = sequences.shape[1] - 1 - self.prompt_length
        if self._pending is None or step != self._pending_step:
            return
        self._window.append((step, self._pending, sequences[:, -1]))
        self._pending = None
        if len(self._window) >= FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if not self._window:
            return
        is_vrt = (torch.stack([t for _, _, t in self._window]) >= self.vocab_size).tolist()  # one sync
        for (step, hidden, _), flags in zip(self._window, is_vrt):
            for row, flag in enumerate(flags):
                if flag:
                    self.states.setdefault(row, {})[step] = hidden[row]
        self._window.clear()

    def finish(self, sequences: torch.Tensor) -> None:
        """End of generation: store the last token's state and drop steps that generation undid."""
        self.observe(sequences)
        self._flush()
        num_steps = sequences.shape[1] - self.prompt_length
        for row in self.states:
            self.states[row] = {s: h for s, h in self.states[row].items() if s < num_steps}

    def features(self, row: int, steps: list[int]) -> torch.Tensor:
        """``len(steps) x D`` states that emitted the VRTs at completion positions ``steps`` of ``row``."""
        try:
            return torch.stack([self.states[row][s] for s in steps])
        except KeyError as exc:
            raise ValueError(f"no recorded state for a VRT at step {exc.args[0]} of sample {row}") from None


class VRTRepeatPenaltyLogitsProcessor(LogitsProcessor):
    """Lowers the logits of the VRTs of the run being written (the VRTs since the last text token) by
    ``penalty``, and those of the VRTs of earlier runs of the answer (earlier objects) by ``reuse_penalty``: a
    VRT repeats only when it is more than ``exp(penalty)`` times likelier than every other token. ``inf``
    forbids it; a VRT both in the run and in an earlier one gets the larger of the two.

    Works on global ids: ids ``>= vocab_size`` are VRTs, and ``scores`` holds the text logits followed by the
    VRT logits (``V + ΣN`` columns). A run ends at any text token. Earlier runs are those after the first
    ``prompt_length`` positions (the answer's): VRTs in a chat's earlier turns are not penalised.
    """

    def __init__(
        self, vocab_size: int, penalty: float, reuse_penalty: float = 0.0, prompt_length: int = 0
    ) -> None:
        for name, value in (("vrt_repeat_penalty", penalty), ("vrt_reuse_penalty", reuse_penalty)):
            if not value >= 0:
                raise PaDTError(f"{name} must be >= 0 (0: off, inf: never), got {value}")
        self.vocab_size = int(vocab_size)
        self.penalty = float(penalty)
        self.reuse_penalty = float(reuse_penalty)
        self.prompt_length = int(prompt_length)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        is_vrt = input_ids >= self.vocab_size
        in_run = is_vrt.flip(1).long().cumprod(1).flip(1).bool()  # the trailing VRTs of each row
        earlier = is_vrt & ~in_run
        earlier[:, : self.prompt_length] = False
        lowered = torch.zeros_like(scores)
        for which, by in ((in_run, self.penalty), (earlier, self.reuse_penalty)):
            if by == 0 or not bool(which.any()):
                continue
            ids = torch.where(which, input_ids, torch.zeros_like(input_ids)).clamp(max=scores.shape[-1] - 1)
            columns = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, ids, which)
            lowered = torch.where(columns, lowered.clamp(min=by), lowered)
        return scores - lowered


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def ovd_list_ends(encode: Callable[[str], list[int]]) -> list[tuple[tuple[int, ...], int]]:
    """Where an OVD answer (:func:`padt.prompts.ovd_answer_template`) chooses, after an object group, between
    going on and ending, for the tokenizer behind ``encode``: ``(context, token)`` pairs, ``context`` the text
    tokens between the group's last VRT and the choice (``)`` alone, or nothing when the tokenizer merges ``)``
    with what follows) and ``token`` the one that ends the answer there. The text after a VRT is tokenized on
    its own (:meth:`~padt.processing.PaDTProcessor.encode`), as in training, so these are the answer's tokens."""

    several = prompts.template_texts(prompts.ovd_answer_template(["a", "b"], [1, 1]))
    going_on = encode(several[1])  # between the first group's run and the second's
    ends = [encode(several[2]), encode(prompts.template_texts(prompts.ovd_answer_template(["a"], [1]))[1])]
    out = []
    for end in ends:
        n = _common_prefix(going_on, end)
        if n < len(end) and (tuple(end[:n]), end[n]) not in out:
            out.append((tuple(end[:n]), end[n]))
    return out


def ovd_prompt_signature(encode: Callable[[str], list[int]]) -> list[int]:
    """Tokens every OVD prompt holds (:func:`padt.prompts.ovd_prompt`, the class list left out, and its last
    token, which may merge with the list's first characters)."""
    return encode(prompts.OVD_PROMPT.split("{}", 1)[0])[:-1]


def decoding_setting(
    generation_config: Any,
    name: str,
    override: float | None = None,
    *,
    maximum: float = math.inf,
    zero: str = "off",
) -> float:
    """A padt decoding setting: ``override`` when given, else the checkpoint's ``generation_config`` field
    ``name``, else 0 (off, as the reference). A value that is no number from 0 to ``maximum`` is a one-line
    error naming the setting; ``zero`` says what 0 means."""
    value = override if override is not None else getattr(generation_config, name, None)
    value = 0.0 if value is None else value
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= maximum:
        bound = ">= 0" if maximum == math.inf else f"from 0 to {maximum:g}"
        raise PaDTError(f"{name} must be a number {bound} (0: {zero}), got {value!r}")
    return float(value)


def ovd_end_penalty_of(generation_config: Any, override: float | None = None) -> float:
    """The OVD end penalty to decode with (:func:`decoding_setting`)."""
    return decoding_setting(generation_config, OVD_END_PENALTY, override)


def ovd_rows(
    prompt_ids: torch.Tensor,
    encode: Callable[[str], list[int]],
    *,
    decode: Callable[[list[int]], str] | None = None,
    prompt_end: str | None = None,
) -> torch.Tensor:
    """``(B,)`` bool: which rows of ``prompt_ids`` ``(B, P)`` hold the OVD prompt (:func:`ovd_prompt_signature`).

    With ``decode`` (the processor's) and ``prompt_end`` (the chat template's text after the last user message,
    ``processor.prompt_end``), a row counts only when its last user message is the OVD prompt with a readable
    list of names (:func:`padt.prompts.ovd_prompt_names`): an OVD prompt of an earlier turn, or one followed by
    more text, does not make the answer an OVD answer."""
    signature = torch.tensor(ovd_prompt_signature(encode), device=prompt_ids.device)
    width = signature.numel()
    if width == 0 or prompt_ids.shape[1] < width:
        return torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    rows = (prompt_ids.unfold(1, width, 1) == signature).all(-1).any(-1)
    if decode is not None and prompt_end is not None:
        for row in rows.nonzero().flatten().tolist():
            text = decode(prompt_ids[row].tolist())
            rows[row] = prompts.ovd_prompt_names(text, followed_by=prompt_end) is not None
    return rows


class OVDEndPenaltyLogitsProcessor(LogitsProcessor):
    """Lowers by ``penalty`` the logits of the tokens that would end an OVD answer right after one of its object
    groups closes (:func:`ovd_list_ends`): the answer then ends only when that is more than ``exp(penalty)``
    times likelier than going on. Rows whose prompt does not hold the OVD prompt (:func:`ovd_prompt_signature`)
    are left alone, so a batch may mix tasks.

    Args:
        encode: the processor's ``encode`` (text -> token ids, no special tokens).
        vocab_size: ids ``>= vocab_size`` are VRTs.
        penalty: ``>= 0``; 0 is off.
        prompt_ids: ``(B, P)`` the prompts, in the batch's order.
        decode, prompt_end: the processor's ``decode`` and ``prompt_end``, when known: a row is then an OVD row
            only when its last user message is the OVD prompt (:func:`ovd_rows`).
    """

    def __init__(
        self,
        encode: Callable[[str], list[int]],
        vocab_size: int,
        penalty: float,
        prompt_ids: torch.Tensor,
        *,
        decode: Callable[[list[int]], str] | None = None,
        prompt_end: str | None = None,
    ) -> None:
        self.vocab_size = int(vocab_size)
        self.penalty = ovd_end_penalty_of(None, penalty)
        self.ends = ovd_list_ends(encode)
        self.rows = ovd_rows(prompt_ids, encode, decode=decode, prompt_end=prompt_end)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.penalty == 0 or not bool(self.rows.any()):
            return scores
        for context, token in self.ends:
            n = len(context)
            if input_ids.shape[1] < n + 1:
                continue
            here = self.rows & (input_ids[:, -n - 1] >= self.vocab_size)  # a VRT, then the context
            if n:
                here &= (input_ids[:, -n:] == torch.tensor(context, device=input_ids.device)).all(-1)
            if bool(here.any()):
                scores[here, token] -= self.penalty
        return scores


# ---------------------------------------------------------------------------------------------------- OVD grammar
#: Kinds of the text pieces an OVD answer is made of (:class:`OVDAnswerGrammar`).
GROUP, MORE, END, NONE = "group", "more", "end", "none"
#: The largest count :class:`OVDAnswerGrammar` lets an answer state (the reference's cap on objects of one class
#: per image, ``max_bboxes_per_class_per_image``).
OVD_MAX_COUNT = 50
#: VRTs a run is budgeted when the grammar decides whether another object still fits in ``max_new_tokens``.
RUN_BUDGET = 8


@dataclass
class _Node:
    next: dict[int, _Node] = field(default_factory=dict)
    piece: tuple[str, int, str] | None = None  # (kind, count, form) of the piece that ends here


def _trie(pieces: Sequence[tuple[list[int], tuple[str, int, str]]]) -> _Node:
    root = _Node()
    for ids, piece in pieces:
        node = root
        for token in ids:
            node = node.next.setdefault(token, _Node())
        node.piece = piece
    return root


class OVDAnswerGrammar:
    """The OVD answers a prompt's class list allows, as tries over the text pieces between object runs.

    An answer is a start piece, then runs and the pieces between them. Pieces come from
    :func:`padt.prompts.ovd_answer_template` (nothing is worded here), each tokenized on its own as the text
    after a VRT is in training:

    - start: ``There is 1 "NAME" (``, ``There are N "NAME" (``, ``In this image, there are N "NAME" (`` (a group of
      N runs opens) or the answer for no objects;
    - after a run of a group that needs more: ``, `` (MORE);
    - after a group's last run: ``), N "NAME" (`` (another group, in the several-classes form) or the end,
      ``).`` or ``) in this image.`` as the form asks.

    NAME is one of the prompt's names, N from 1 to ``max_count``. A name may come back in a later group (a small
    model lists a second object of a kind that way); counts match runs, the class order is the model's.
    """

    def __init__(
        self, names: Sequence[str], encode: Callable[[str], list[int]], max_count: int = OVD_MAX_COUNT
    ) -> None:
        texts = prompts.template_texts
        names = list(dict.fromkeys(names))
        other = "b" if "a" in names else "a"  # a stand-in class: only text beside it is kept
        start, groups = [], []
        for name in names:
            for n in range(1, max_count + 1):
                start.append((texts(prompts.ovd_answer_template([name], [n]))[0], (GROUP, n, "one")))
                several = texts(prompts.ovd_answer_template([name, other], [n, 1]))[0]
                start.append((several, (GROUP, n, "several")))
                groups.append(
                    (
                        texts(prompts.ovd_answer_template([other, name], [1, n]))[1],
                        (GROUP, n, "several"),
                    )
                )
        start.append((prompts.OVD_ANSWER_NONE, (NONE, 0, "")))
        one = texts(prompts.ovd_answer_template([other], [2]))
        ends = {
            "one": one[2],
            "several": texts(prompts.ovd_answer_template([other, other + "x"], [1, 1]))[2],
        }

        def trie(entries: list[tuple[str, tuple[str, int, str]]]) -> tuple[_Node, int]:
            encoded = [(encode(text), piece) for text, piece in entries]
            return _trie(encoded), max((len(ids) for ids, _ in encoded), default=0)

        self.start, _ = trie(start)
        self.more, self.more_length = trie([(one[1], (MORE, 0, ""))])
        self.groups, self.group_length = trie(groups)
        built = {form: trie([(text, (END, 0, form))]) for form, text in ends.items()}
        self.ends = {form: node for form, (node, _) in built.items()}
        self.end_length = max(length for _, length in built.values())

    def allowed(
        self, completion: Sequence[int], vocab_size: int, remaining: int
    ) -> tuple[set[int], bool] | None:
        """What may follow ``completion`` (local or global ids; ids ``>= vocab_size`` are VRTs) with room for
        ``remaining`` more tokens: ``(text ids, whether a VRT may)``, the end of the answer being the empty
        set, False. None when ``completion`` has left the grammar."""
        nodes, form, need, have, in_run = [self.start], "", 0, 0, False
        for i, token in enumerate(completion):
            if token >= vocab_size:
                if in_run:
                    continue
                piece = next((n.piece for n in nodes if n.piece and n.piece[0] in (GROUP, MORE)), None)
                if piece is None:
                    return None
                if piece[0] == GROUP:
                    form, need, have = piece[2], piece[1], 1
                else:
                    have += 1
                nodes, in_run = [], True
                continue
            if in_run:  # what could follow the run was decided with the room there was then
                nodes, in_run = self._after_run(form, need, have, remaining + len(completion) - i), False
            nodes = [n.next[token] for n in nodes if token in n.next]
            if not nodes:
                return None
        if in_run:
            return {t for n in self._after_run(form, need, have, remaining) for t in n.next}, (
                remaining > self.end_length + 1
            )
        text = {t for n in nodes for t in n.next}
        vrt = any(n.piece and n.piece[0] in (GROUP, MORE) for n in nodes)
        return text, vrt

    def _after_run(self, form: str, need: int, have: int, remaining: int) -> list[_Node]:
        room = remaining - self.end_length - 1  # tokens left once the answer's end is kept
        if have < need:
            return [self.more] if room > self.more_length + RUN_BUDGET else [self.ends[form]]
        if form == "several" and room > self.group_length + RUN_BUDGET:
            return [self.ends[form], self.groups]
        return [self.ends[form]]


@functools.lru_cache(maxsize=64)
def _grammar(encode: Callable[[str], list[int]], names: tuple[str, ...], max_count: int) -> OVDAnswerGrammar:
    return OVDAnswerGrammar(names, encode, max_count)


def ovd_grammar_of(generation_config: Any, override: bool | None = None) -> bool:
    """Whether OVD answers are held to their grammar: ``override`` when given, else the checkpoint's
    ``generation_config`` field ``ovd_grammar``, else False (off, as the reference)."""
    value = override if override is not None else getattr(generation_config, OVD_GRAMMAR, None)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise PaDTError(f"{OVD_GRAMMAR} must be true or false (false: off), got {value!r}")
    return value


class OVDGrammarLogitsProcessor(LogitsProcessor):
    """Holds the answers to OVD prompts to :class:`OVDAnswerGrammar` for the class names of their prompt: every
    token that would leave it gets ``-inf``. Near ``max_new_tokens`` no further object is begun and the answer
    closes, so it ends with its end-of-sequence token instead of being cut off. Rows without an OVD prompt
    (:func:`ovd_rows`), or whose list of names cannot be read, are left alone.

    Args:
        encode: the processor's ``encode`` (text -> token ids, no special tokens).
        decode: the processor's ``decode`` (ids -> text), to read each prompt's list of names.
        vocab_size: ids ``>= vocab_size`` are VRTs.
        prompt_ids: ``(B, P)`` the prompts, in the batch's order.
        eos_token_ids: the ids that end an answer.
        max_new_tokens: the answer's token budget.
        prompt_end: the text a prompt holds after its last user message (the chat template's), when known: a row
            is held to the grammar only when its last message is the OVD prompt, not an earlier turn.
    """

    def __init__(
        self,
        encode: Callable[[str], list[int]],
        decode: Callable[[list[int]], str],
        vocab_size: int,
        prompt_ids: torch.Tensor,
        eos_token_ids: int | Collection[int],
        max_new_tokens: int,
        max_count: int = OVD_MAX_COUNT,
        prompt_end: str | None = None,
    ) -> None:
        self.vocab_size = int(vocab_size)
        self.prompt_length = prompt_ids.shape[1]
        self.batch_size = prompt_ids.shape[0]
        self.eos = sorted(
            {int(eos_token_ids)} if isinstance(eos_token_ids, int) else set(map(int, eos_token_ids))
        )
        if not self.eos:
            raise PaDTError("the OVD grammar needs the model's eos_token_id (generation_config)")
        self.max_new_tokens = int(max_new_tokens)
        self.grammars: dict[int, OVDAnswerGrammar] = {}
        # ovd_rows by the OVD prompt's words; the names read with prompt_end then keep only the rows whose last
        # message it is (ovd_rows' own rule, without decoding each prompt twice).
        for row in ovd_rows(prompt_ids, encode).nonzero().flatten().tolist():
            names = prompts.ovd_prompt_names(decode(prompt_ids[row].tolist()), followed_by=prompt_end)
            if names:
                self.grammars[row] = _grammar(encode, tuple(sorted(set(names))), max_count)  # order is free

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.grammars:
            return scores
        completions = input_ids[:, self.prompt_length :].tolist()
        remaining = self.max_new_tokens - len(completions[0])
        beams = max(1, input_ids.shape[0] // self.batch_size)
        eos = set(self.eos)
        for row, completion in enumerate(completions):
            grammar = self.grammars.get(row // beams)
            if grammar is None or eos.intersection(completion):
                continue
            allowed = grammar.allowed(completion, self.vocab_size, remaining)
            if allowed is None:
                continue
            text, vrt = allowed
            keep = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
            keep[sorted(text) if text or vrt else self.eos] = True
            keep[self.vocab_size :] = vrt
            scores[row] = scores[row].masked_fill(~keep, -math.inf)
        return scores
