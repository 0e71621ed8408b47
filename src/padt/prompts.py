"""Task prompts and answer templates, worded exactly as the reference preprocessing writes them (docs/method.md §5).

Answers use ``<|Obj_k|>`` placeholders (numbered in order of appearance); at training time each placeholder
is replaced by a run of VRT strings, at inference the model writes the runs itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

REC_PROMPT = 'Please carefully check the image and detect the object this sentence describes: "{}".'
REC_ANSWER = 'The "{}" refers to {} in this image.'
OVD_PROMPT = "Please carefully check the image and detect the following objects: {}."
OVD_ANSWER_NONE = "No objects from the list are present in the image."
RIC_PROMPT = "Please describe this image."
#: A class of an OVD answer: its stated count and quoted name (``3 "person"``).
OVD_COUNT_PATTERN = re.compile(r'(\d+) "([^"]*)"')


#: An object's placeholder in an answer template (:func:`object_placeholder`); group 1 is its number.
PLACEHOLDER_PATTERN = re.compile(r"<\|Obj_(\d+)\|>")


def object_placeholder(k: int) -> str:
    """The placeholder of the k-th object of an answer template."""
    return f"<|Obj_{k}|>"


def template_texts(template: str) -> list[str]:
    """An answer template's text before its first object, between its objects and after its last (one more
    piece than it has objects)."""
    return PLACEHOLDER_PATTERN.split(template)[::2]


def rec_prompt(sentence: str) -> str:
    """REC/RES prompt for a referring sentence."""
    return REC_PROMPT.format(sentence)


def rec_answer_template(sentence: str) -> str:
    """REC/RES answer template: one object."""
    return REC_ANSWER.format(sentence, object_placeholder(0))


def ovd_prompt(class_names: Sequence[str]) -> str:
    """OVD prompt listing class names as a JSON list (``["person", "car"]``)."""
    return OVD_PROMPT.format(json.dumps(list(class_names)))


def ovd_prompt_names(text: str, *, followed_by: str | None = None) -> list[str] | None:
    """The class names of the last OVD prompt in ``text`` (a prompt, or a whole rendered conversation): the
    inverse of :func:`ovd_prompt`; None when ``text`` holds no OVD prompt with a JSON list of names, or, with
    ``followed_by``, when the prompt is not followed by exactly that to the end of ``text`` (e.g. the chat
    template's text after the last user message, so that an OVD prompt of an earlier turn does not count)."""
    prefix = OVD_PROMPT.split("{}", 1)[0]
    start = text.rfind(prefix)
    if start < 0:
        return None
    try:
        listed, end = json.JSONDecoder().raw_decode(text, start + len(prefix))
    except json.JSONDecodeError:
        return None
    if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
        return None
    rest = OVD_PROMPT.split("{}", 1)[1]
    if followed_by is not None and text[end:] != rest + followed_by:
        return None
    return listed


def ovd_answer_template(class_names: Sequence[str], counts: Sequence[int]) -> str:
    """OVD answer for the classes of the prompt, in prompt order, with their instance counts.

    Classes with a zero count are left out; 0, 1 and several present classes use the reference's three forms.
    """
    present = [(name, int(n)) for name, n in zip(class_names, counts, strict=True) if int(n) > 0]
    k = 0

    def runs(n: int) -> str:
        nonlocal k
        out = ", ".join(object_placeholder(k + i) for i in range(n))
        k += n
        return out

    if not present:
        return OVD_ANSWER_NONE
    if len(present) == 1:
        name, n = present[0]
        verb = "is" if n == 1 else "are"
        return f'There {verb} {n} "{name}" ({runs(n)}) in this image.'
    parts = [f'{n} "{name}" ({runs(n)})' for name, n in present]
    return "In this image, there are " + ", ".join(parts) + "."


def ovd_answer_counts(answer: str) -> list[tuple[str, int]]:
    """The ``(class name, stated count)`` of each class of an OVD answer, in the answer's order; the inverse of
    :func:`ovd_answer_template` for what a model writes (a name may come more than once, which the template
    never does)."""
    return [(name, int(n)) for n, name in OVD_COUNT_PATTERN.findall(answer)]


def ric_prompt() -> str:
    """Referring image captioning prompt."""
    return RIC_PROMPT


def task_prompt(task: str, text: str = "") -> str:
    """Build the prompt of ``task`` from user text (:meth:`padt.tasks.Task.prompt`)."""
    from padt.tasks import get_task

    return get_task(task).prompt(text)


def __getattr__(name: str):
    # ``prompts.TASKS`` was the tuple of task names; the tasks live in padt.tasks now.
    if name == "TASKS":
        from padt.tasks import TASK_NAMES

        return TASK_NAMES
    raise AttributeError(f"module 'padt.prompts' has no attribute {name!r}")
