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
"""

from __future__ import annotations

import math
from collections.abc import Callable
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

    def after(template: str, k: int) -> str:  # the text between object k's placeholder and the next one's
        return template.split(prompts.object_placeholder(k), 1)[1].split(
            prompts.object_placeholder(k + 1), 1
        )[0]

    several = prompts.ovd_answer_template(["a", "b"], [1, 1])
    going_on = encode(after(several, 0))
    ends = [encode(after(several, 1)), encode(after(prompts.ovd_answer_template(["a"], [1]), 0))]
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


def ovd_rows(prompt_ids: torch.Tensor, encode: Callable[[str], list[int]]) -> torch.Tensor:
    """``(B,)`` bool: which rows of ``prompt_ids`` ``(B, P)`` hold the OVD prompt (:func:`ovd_prompt_signature`)."""
    signature = torch.tensor(ovd_prompt_signature(encode), device=prompt_ids.device)
    width = signature.numel()
    if width == 0 or prompt_ids.shape[1] < width:
        return torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    return (prompt_ids.unfold(1, width, 1) == signature).all(-1).any(-1)


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
    """

    def __init__(
        self,
        encode: Callable[[str], list[int]],
        vocab_size: int,
        penalty: float,
        prompt_ids: torch.Tensor,
    ) -> None:
        self.vocab_size = int(vocab_size)
        self.penalty = ovd_end_penalty_of(None, penalty)
        self.ends = ovd_list_ends(encode)
        self.rows = ovd_rows(prompt_ids, encode)

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
