"""Synthetic datasets: the records of a scene in the reference schema, and folders of them on disk.

:func:`scene_records` writes the records of one scene in the reference schema (docs/method.md §9.1) with the
reference prompts of :mod:`padt.prompts`: REC/RES (``task: "refering"``, RES being the mask output of the same
records), OVD and RIC. OVD's class list is the shape names, present classes plus a random subset of absent ones,
shuffled; answer objects follow the prompt's class order, and within a class they run left to right (box centre
x, then y, then drawing order). With ``absent_rate`` > 0, that share of the OVD records asks only for kinds the
scene does not hold (a random non-empty subset of them), answered with the reference's "no objects" sentence.

:func:`generate_dataset` writes PNG images and ``records.jsonl``. Scene ``i`` is a pure function of
``(task, seed, i)`` and the size options, so generation can stop and resume anywhere and produces identical
bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from padt.data.synthetic.language import (
    FORM_WEIGHTS,
    check_form_weights,
    reading_order,
    ric_caption,
    sample_referring_expression,
)
from padt.data.synthetic.scenes import (
    DEFAULT_SCENES,
    MAX_OBJECTS,
    SHAPES,
    Scene,
    SceneObject,
    check_sizes,
    make_scene,
)
from padt.errors import PaDTError
from padt.prompts import (
    ovd_answer_template,
    ovd_prompt,
    rec_answer_template,
    rec_prompt,
    ric_prompt,
)

TASK_CHOICES: tuple[str, ...] = ("rec", "res", "ovd", "ric", "all")
# RES shares REC's records (docs/method.md §5.2), so a mixed dataset cycles over these three.
MIXED_TASKS: tuple[str, ...] = ("rec", "ovd", "ric")
RECORDS_FILE = "records.jsonl"
SETTINGS_FILE = "synthetic.json"

_TASK_FIELD = {"rec": "refering", "res": "refering", "ovd": "ovd", "ric": "ric"}  # sic, as the reference
# Independent random streams per task; rec and res share theirs so that they give the same dataset.
_TASK_STREAM = {"rec": 0, "res": 0, "ovd": 1, "ric": 2, "all": 3}


def check_absent_rate(rate: float) -> float:
    """``rate`` as a float if it is a share from 0 to 1, else a one-line error."""
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise PaDTError(f"absent_rate must be a number from 0 to 1 (the share of OVD records), got {rate!r}")
    return float(rate)


# ---------------------------------------------------------------------------------------------- records
def object_record(scene: Scene, obj: SceneObject, label: str) -> dict:
    """An object in the record schema (docs/method.md §9.2): normalised xyxy box, COCO RLE, patches."""
    h, w = scene.height, scene.width
    rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
    x1, y1, x2, y2 = obj.box
    return {
        "bbox": [x1 / w, y1 / h, x2 / w, y2 / h],
        "rle": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
        "patches": list(obj.patches),
        "label": label,
        "iscrowd": 0,
        "area": obj.area,
    }


def _record(image_id: int, image: str, prompt: str, answer: str, objects: list[dict], task: str) -> dict:
    return {
        "id": image_id,
        "image": image,
        "conversations": [{"from": "human", "value": prompt}],
        "answer_template": answer,
        "objects": objects,
        "task": _TASK_FIELD[task],
    }


def scene_records(
    scene: Scene,
    task: str,
    rng: np.random.Generator,
    *,
    image: str,
    image_id: int,
    refs_per_scene: int = 1,
    form_weights: dict[str, float] | None = None,
    absent_rate: float = 0.0,
) -> list[dict]:
    """The records of one scene for ``task`` (``rec``, ``res``, ``ovd`` or ``ric``) in the reference schema.

    REC/RES give up to ``refs_per_scene`` records, each about a different object (fewer if fewer objects can
    be referred to, none if none can), expression forms drawn with ``form_weights``
    (:func:`sample_referring_expression`); OVD and RIC give one. With probability ``absent_rate`` the OVD
    record lists only kinds the scene does not hold and its answer is that none is there (at 0, the default,
    no draw is made for it: the records are those of earlier padt versions).
    """
    task = task.lower()
    if task in ("rec", "res"):
        records = []
        remaining = list(range(len(scene.objects)))
        while len(records) < refs_per_scene:
            pick = sample_referring_expression(scene, rng, remaining, form_weights)
            if pick is None:
                break
            index, expr = pick
            remaining.remove(index)
            sentence = expr.text
            obj = object_record(scene, scene.objects[index], sentence)
            prompt, answer = rec_prompt(sentence), rec_answer_template(sentence)
            records.append(_record(image_id, image, prompt, answer, [obj], task))
        return records
    if task == "ovd":
        present = {o.shape for o in scene.objects}
        absent = [s for s in SHAPES if s not in present]
        if absent_rate > 0 and rng.random() < absent_rate and absent:
            names = [s for s in absent if rng.random() < 0.5] or [absent[int(rng.integers(len(absent)))]]
            names = [names[i] for i in rng.permutation(len(names))]
            prompt, answer = ovd_prompt(names), ovd_answer_template(names, [0] * len(names))
            return [_record(image_id, image, prompt, answer, [], task)]
        # As the reference's drop_rate: half of the prompts list every class, the others a random subset of
        # the absent ones.
        if rng.random() < 0.5:
            absent = [s for s in absent if rng.random() < 0.5]
        names = [s for s in SHAPES if s in present] + absent
        names = [names[i] for i in rng.permutation(len(names))]
        counts = [sum(o.shape == name for o in scene.objects) for name in names]
        objects = [
            object_record(scene, scene.objects[i], name)
            for name in names
            for i in reading_order(scene, [i for i, o in enumerate(scene.objects) if o.shape == name])
        ]
        prompt, answer = ovd_prompt(names), ovd_answer_template(names, counts)
        return [_record(image_id, image, prompt, answer, objects, task)]
    if task == "ric":
        caption, order = ric_caption(scene)
        objects = [object_record(scene, scene.objects[i], "") for i in order]
        return [_record(image_id, image, ric_prompt(), caption, objects, task)]
    raise PaDTError(f"unknown task {task!r} for one scene; choose one of rec, res, ovd, ric")


# ---------------------------------------------------------------------------------------------- datasets
def scene_task(task: str, index: int) -> str:
    """The task of scene ``index`` of a dataset: ``task`` itself, or for ``all`` a cycle over
    :data:`MIXED_TASKS`."""
    return MIXED_TASKS[index % len(MIXED_TASKS)] if task == "all" else task


def image_name(index: int) -> str:
    """File name of scene ``index``."""
    return f"{index:06d}.png"


def synthetic_sample(
    task: str,
    seed: int,
    index: int,
    *,
    min_size: int = DEFAULT_SCENES.min_size,
    max_size: int = DEFAULT_SCENES.max_size,
    max_objects: int = DEFAULT_SCENES.max_objects,
    refs_per_scene: int = 1,
    form_weights: dict[str, float] | None = None,
    absent_rate: float = 0.0,
) -> tuple[Scene, list[dict]]:
    """Scene ``index`` of the dataset ``(task, seed)`` and its records.

    A pure function of its arguments: its random stream is derived from ``(seed, task, index)`` alone, which
    is what makes :func:`generate_dataset` resumable. A scene without a usable referring expression is
    redrawn from the same stream.
    """
    rng = np.random.default_rng([seed, _TASK_STREAM[task], index])
    this_task = scene_task(task, index)
    for _ in range(100):
        scene = make_scene(rng, min_size=min_size, max_size=max_size, max_objects=max_objects)
        records = scene_records(
            scene,
            this_task,
            rng,
            image=image_name(index),
            image_id=index,
            refs_per_scene=refs_per_scene,
            form_weights=form_weights,
            absent_rate=absent_rate,
        )
        if records:
            return scene, records
    raise RuntimeError(f"no scene with a referring expression after 100 draws (seed {seed}, index {index})")


@dataclass(frozen=True)
class GenerationSummary:
    """What :func:`generate_dataset` did."""

    records_path: Path
    scenes: int
    new_scenes: int
    new_records: int


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse to mix scenes generated with different settings in one folder."""
    path = out / SETTINGS_FILE
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != settings:
            raise PaDTError(
                f"{out} holds a synthetic dataset generated with other settings ({previous}); "
                "use another output folder or the same settings"
            )
        return
    if (out / RECORDS_FILE).exists():
        raise PaDTError(
            f"{out / RECORDS_FILE} exists but was not written by this generator; use another output folder"
        )
    path.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")


def _completed_ids(path: Path) -> set[int]:
    """Ids of the scenes whose records are fully written.

    An interrupted run can leave a torn last line; it is cut off together with the other records of the last
    scene, which is then regenerated (identically).
    """
    if not path.exists():
        return set()
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    ids: list[int] = []
    for number, line in enumerate(complete, 1):
        try:
            ids.append(int(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise PaDTError(
                f"{path}:{number} is not a record ({exc}); remove the file to start over"
            ) from exc
    if tail:
        while ids and len(ids) > 1 and ids[-2] == ids[-1]:
            ids.pop()
        if ids:
            ids.pop()
        keep = sum(len(line) + 1 for line in complete[: len(ids)])
        with path.open("r+b") as f:
            f.truncate(keep)
    return set(ids)


def _json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def _save_png(image: Image.Image, path: Path) -> None:
    # Write then rename, so that an interrupted run never leaves a truncated image under the final name.
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def generate_dataset(
    task: str,
    n: int,
    seed: int,
    out_dir: str | os.PathLike,
    *,
    min_size: int = DEFAULT_SCENES.min_size,
    max_size: int = DEFAULT_SCENES.max_size,
    max_objects: int = DEFAULT_SCENES.max_objects,
    refs_per_scene: int = 1,
    form_weights: dict[str, float] | None = None,
    absent_rate: float = 0.0,
    progress: bool = True,
) -> GenerationSummary:
    """Write scenes ``0 .. n-1`` of the dataset ``(task, seed)`` to ``out_dir``: PNGs and ``records.jsonl``.

    Args:
        task: ``rec``, ``res`` (the same records as ``rec``), ``ovd``, ``ric`` or ``all`` (scenes cycle over
            rec, ovd and ric).
        n: number of scenes (images). REC/RES scenes give ``refs_per_scene`` records each when they can.
        seed: non-negative; same arguments, same bytes.
        out_dir: created if needed. Records are appended scene by scene and images written atomically, so an
            interrupted run resumes where it stopped; scenes already recorded are skipped, and a larger ``n``
            extends the dataset. The settings are kept in ``synthetic.json``, and a folder generated with
            other settings is refused.
        min_size, max_size: bounds of the image sides (:func:`image_sides`).
        max_objects: most objects per scene (at least one).
        form_weights: how often REC/RES draw each expression form (``attribute``, ``extreme``, ``relation``;
            default :data:`FORM_WEIGHTS`); a form left out keeps its default weight. Only the expressions
            change, not the scenes.
        absent_rate: the share of OVD records that list only kinds the scene does not hold (answer: none is
            there), from 0 (default) to 1; only the OVD records change, not the scenes.
        progress: show a progress bar.
    """
    task = task.lower()
    if task not in TASK_CHOICES:
        raise PaDTError(f"unknown task {task!r}; choose one of {', '.join(TASK_CHOICES)}")
    if n < 0:
        raise PaDTError(f"the number of scenes must be >= 0, got {n}")
    if seed < 0:
        raise PaDTError(f"the seed must be >= 0, got {seed}")
    check_sizes(min_size, max_size)
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise PaDTError(f"max_objects must be between 1 and {MAX_OBJECTS}, got {max_objects}")
    if refs_per_scene < 1:
        raise PaDTError(f"refs_per_scene must be >= 1, got {refs_per_scene}")
    weights = check_form_weights(form_weights)
    absent_rate = check_absent_rate(absent_rate)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "generator": "padt.data.synthetic",
        "version": 2,
        "task": task,
        "seed": seed,
        "min_size": min_size,
        "max_size": max_size,
        "max_objects": max_objects,
        "refs_per_scene": refs_per_scene,
    }
    if weights != FORM_WEIGHTS:  # folders written with the default mix keep their settings file as before
        settings["form_weights"] = weights
    if absent_rate:  # likewise
        settings["absent_rate"] = absent_rate
    _check_settings(out, settings)
    records_path = out / RECORDS_FILE
    done = _completed_ids(records_path)
    new_scenes = new_records = 0
    with (
        records_path.open("a", encoding="utf-8") as f,
        tqdm(total=n, desc=f"synthetic {task}", unit="scene", disable=not progress) as bar,
    ):
        for index in range(n):
            if index not in done:
                scene, records = synthetic_sample(
                    task,
                    seed,
                    index,
                    min_size=min_size,
                    max_size=max_size,
                    max_objects=max_objects,
                    refs_per_scene=refs_per_scene,
                    form_weights=weights,
                    absent_rate=absent_rate,
                )
                path = out / image_name(index)
                if not path.exists():
                    _save_png(scene.image, path)
                # One write per scene, after its image: a record never points at a missing file.
                f.write("".join(_json_line(r) for r in records))
                f.flush()
                new_scenes += 1
                new_records += len(records)
            bar.update()
    return GenerationSummary(records_path, n, new_scenes, new_records)
