"""The four tasks, each defined once: what the user gives, the prompt, which records are queries, the scorer.

=====  ==============================  ========================  ==================================
task   user text                       queries                   scored by
=====  ==============================  ========================  ==================================
rec    a referring sentence            every record              ``padt.evaluation.score.score_rec``
res    a referring sentence            every record (rec's)      ``padt.evaluation.score.score_res``
ovd    a comma-separated class list    every record              ``padt.evaluation.score.score_ovd``
ric    nothing                         the first record / image  ``padt.evaluation.score.score_ric``
=====  ==============================  ========================  ==================================

RES is REC with masks: it shares REC's records, prompt and answers (docs/method.md §5.2) and is scored on the
masks. Prompt wording lives in :mod:`padt.prompts`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from padt import prompts
from padt.errors import PaDTError


@dataclass(frozen=True)
class Task:
    """One task.

    Attributes:
        name: ``rec``, ``res``, ``ovd`` or ``ric``.
        records: the record ``task`` field its data uses (``res`` reads ``rec`` records).
        user_text: what the user gives for the prompt (``""`` when nothing).
        build_prompt: the reference's prompt from that text.
        one_query_per_image: several records of one image are one query (RIC: one caption per image).
        masks: the task is scored on masks (predictions must keep them).
        refers_to_objects: an answer without any object is a failure worth a warning.
        coco_ground_truth: the ground truth may be a COCO annotation file (OVD), not only records.
        help: one line for ``--help``.
    """

    name: str
    records: str
    user_text: str
    build_prompt: Callable[[str], str]
    one_query_per_image: bool = False
    masks: bool = False
    refers_to_objects: bool = True
    coco_ground_truth: bool = False
    help: str = ""

    def prompt(self, text: str = "") -> str:
        """The task prompt built from the user's text; a :class:`PaDTError` when the text is missing."""
        if self.user_text and not text.strip():
            raise PaDTError(f"task {self.name!r} needs {self.user_text}; pass it as the prompt text")
        return self.build_prompt(text)

    def query_indices(self, records: Sequence[Any]) -> list[int]:
        """Positions of the records that are queries (all, or the first record of each image)."""
        if not self.one_query_per_image:
            return list(range(len(records)))
        seen: set[Any] = set()
        out = []
        for i, rec in enumerate(records):
            if rec.id not in seen:
                seen.add(rec.id)
                out.append(i)
        return out

    def accepts(self, record_task: str) -> bool:
        """Whether records of ``record_task`` can be evaluated as this task."""
        return get_task(record_task).records == self.records

    def score(self, ground_truth: Any, predictions: Sequence[Any], **options: Any) -> dict[str, Any]:
        """Metrics of ``predictions`` against ``ground_truth`` (records; for OVD also a COCO file or dict) with
        the task's scorer; options a scorer does not take are ignored, ``None`` means its default."""
        from padt.evaluation import score

        scorer = getattr(score, f"score_{self.name}")
        accepted = inspect.signature(scorer).parameters
        return scorer(
            ground_truth, predictions, **{k: v for k, v in options.items() if k in accepted and v is not None}
        )


def _ovd_prompt(text: str) -> str:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise PaDTError("task 'ovd' needs a comma-separated class list, e.g. 'person, car, dog'")
    return prompts.ovd_prompt(names)


TASKS: dict[str, Task] = {
    "rec": Task(
        "rec",
        "rec",
        "a referring sentence",
        lambda text: prompts.rec_prompt(text.strip()),
        help="referring expression comprehension: the box of the object a sentence describes",
    ),
    "res": Task(
        "res",
        "rec",
        "a referring sentence",
        lambda text: prompts.rec_prompt(text.strip()),
        masks=True,
        help="referring expression segmentation: the mask of the object a sentence describes",
    ),
    "ovd": Task(
        "ovd",
        "ovd",
        "a comma-separated class list",
        _ovd_prompt,
        refers_to_objects=False,
        coco_ground_truth=True,
        help="open-vocabulary detection: every instance of the listed classes",
    ),
    "ric": Task(
        "ric",
        "ric",
        "",
        lambda text: prompts.ric_prompt(),
        one_query_per_image=True,
        refers_to_objects=False,
        help="referring image captioning: a caption whose phrases are grounded",
    ),
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def get_task(name: str) -> Task:
    """The task called ``name`` (case-insensitive); a one-line error for an unknown one."""
    task = TASKS.get(str(name).lower())
    if task is None:
        raise PaDTError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    return task


def task_of_prompt(text: str) -> Task | None:
    """The task whose prompt wording ``text`` uses, if any (REC's for a REC/RES prompt)."""
    if text.startswith(prompts.REC_PROMPT.split("{}")[0]):
        return TASKS["rec"]
    if text.startswith(prompts.OVD_PROMPT.split("{}")[0]):
        return TASKS["ovd"]
    if text.strip() == prompts.RIC_PROMPT:
        return TASKS["ric"]
    return None


__all__ = ["TASKS", "TASK_NAMES", "Task", "get_task", "task_of_prompt"]
