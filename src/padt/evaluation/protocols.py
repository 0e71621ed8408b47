"""Scoring ``padt eval``'s predictions: the task's scorer, the paper protocol and its index files, and the
ground truths of OVD (docs/method.md §10)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from padt.data.records import Record
from padt.errors import PaDTError
from padt.prompts import OVD_PROMPT, ovd_prompt_names
from padt.tasks import get_task


def read_vlmr1_index(path: str | os.PathLike) -> list[str]:
    """Paper keys of a VLM-R1 ``rec_jsons_processed/{split}.json`` index file (docs/method.md §10.5).

    The file is a JSON list (or JSONL) of entries with ``image`` (a COCO file name or path such as
    ``COCO_train2014_000000123456.jpg``) and ``normal_caption``; the key is the image id parsed from the file
    name (its last run of digits) and the caption, as :func:`padt.evaluation.metrics.paper_key`. Other fields
    (``problem``, ``solution``) are not used. Duplicate keys count once, in order of first appearance.
    """
    from padt.evaluation.metrics import paper_key

    path = Path(path)
    if not path.is_file():
        raise PaDTError(
            f"{path}: no such file; give VLM-R1's rec_jsons_processed/<split>.json to --index-file"
        )
    text = path.read_text(encoding="utf-8")
    try:
        entries = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as exc:
        raise PaDTError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    keys: dict[str, None] = {}
    for i, entry in enumerate(entries):
        image = entry.get("image") if isinstance(entry, dict) else None
        caption = entry.get("normal_caption") if isinstance(entry, dict) else None
        if not isinstance(image, str) or not isinstance(caption, str):
            raise PaDTError(
                f"{path}: entry {i} needs 'image' (a COCO file name) and 'normal_caption' strings"
            )
        match = re.search(r"(\d+)\D*$", Path(image).name)
        if match is None:
            raise PaDTError(f"{path}: entry {i}: no image id in the file name {image!r}")
        keys[paper_key(int(match.group(1)), caption)] = None
    return list(keys)


def _score_with_index(
    records: Sequence[Record],
    preds: Sequence[Mapping[str, Any]],
    task: str,
    index_keys: Sequence[str],
    image_root: Path | None,
) -> dict[str, Any]:
    """The paper protocol over the keys of an index file: records outside it are left out, keys without a
    record (no ground truth) or without a prediction count 0."""
    from padt.evaluation.metrics import paper_key

    wanted = set(index_keys)
    subset: dict[str, Record] = {}
    for rec in records:
        if len(rec.objects) == 1:
            key = paper_key(rec.id, rec.objects[0].label)
            if key in wanted:
                subset[key] = rec  # later duplicates win, as in the reference
    # Re-keyed by image id, since record positions change in the subset.
    rekeyed = []
    for p in preds:
        q = {k: v for k, v in p.items() if k != "index"}
        q["id"] = records[p["index"]].id
        rekeyed.append(q)
    scorer = get_task(task).score
    out = (
        scorer(list(subset.values()), rekeyed, protocol="paper", image_root=image_root)
        if subset
        else {
            "task": task,
            "protocol": "paper",
            "acc@0.5": 0.0,
            "acc@0.75": 0.0,
            "num_keys": 0,
            "num_missing": 0,
            **({"miou": 0.0} if get_task(task).masks else {}),
        }
    )
    scale = len(subset) / len(index_keys) if index_keys else 0.0
    for name in ("acc@0.5", "acc@0.75", "miou"):
        if name in out:
            out[name] = out[name] * scale
    out["num_keys"] = len(index_keys)
    out["num_missing"] = out.get("num_missing", 0) + len(index_keys) - len(subset)
    out["num_keys_without_ground_truth"] = len(index_keys) - len(subset)
    return out


def ovd_official_from_records(
    records: Sequence[Record], preds: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Image and category lists for OVD records scored without the official file: the images of the
    records (sizes from the predictions), and every class named in the records' prompts or objects."""
    sizes = {p["index"]: (int(p["width"]), int(p["height"])) for p in preds}
    names: set[str] = set()
    images: dict[Any, dict[str, Any]] = {}
    prefix = OVD_PROMPT.split("{}")[0]
    for i, rec in enumerate(records):
        if isinstance(rec.id, bool) or not isinstance(rec.id, int):
            raise PaDTError(
                f"record id {rec.id!r}: OVD is scored with COCO tools, which need integer image ids"
            )
        names.update(o.label for o in rec.objects)
        if rec.prompt.startswith(prefix):
            names.update(ovd_prompt_names(rec.prompt) or [])
        if i in sizes and rec.id not in images:
            w, h = sizes[i]
            images[rec.id] = {"id": rec.id, "file_name": rec.images[0], "width": w, "height": h}
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(sorted(names))]
    return {"images": list(images.values()), "annotations": [], "categories": categories}


def score_predictions(
    records: Sequence[Record],
    preds: Sequence[Mapping[str, Any]],
    task: str,
    *,
    protocol: str = "padt",
    index_file: str | os.PathLike | None = None,
    coco: str | os.PathLike | Mapping[str, Any] | None = None,
    image_root: str | os.PathLike | None = None,
    meteor: bool = True,
    rebuilt_gt: bool = False,
) -> dict[str, Any]:
    """Metrics of per-query prediction lines with :mod:`padt.evaluation.score`'s functions.

    Lines whose index is not a query of ``records`` are ignored. ``protocol`` ``"paper"`` (REC/RES) is the
    reference's keyed scoring; ``index_file`` (VLM-R1's, :func:`read_vlmr1_index`) restricts it to the keys
    the paper's numbers use. OVD: with ``coco``, the official annotation file, predictions are scored against
    its annotations (the standard number), or with ``rebuilt_gt`` against the reference's ground truth rebuilt
    from the records (§10.3) with its image and category lists; without ``coco`` only the rebuilt ground truth
    exists, its lists taken from the records (:func:`ovd_official_from_records`).
    """
    root = Path(image_root) if image_root is not None else None
    queries = set(get_task(task).query_indices(records))
    preds = [p for p in preds if p.get("index") in queries]
    if protocol not in ("padt", "paper"):
        raise PaDTError(f"unknown protocol {protocol!r}; choose padt or paper")
    spec = get_task(task)
    if (protocol == "paper" or index_file is not None) and spec.records != "rec":
        raise PaDTError(f"--protocol paper and --index-file apply to rec and res, not {task}")
    if index_file is not None:
        return _score_with_index(records, preds, task, read_vlmr1_index(index_file), root)
    ground_truth: Any = list(records)
    coco_file: Any = None
    if spec.coco_ground_truth:  # the official annotation file, or the ground truth rebuilt from the records
        if coco is not None and not rebuilt_gt:
            ground_truth = coco
        else:
            coco_file = coco if coco is not None else ovd_official_from_records(records, preds)
    return spec.score(ground_truth, preds, protocol=protocol, image_root=root, meteor=meteor, coco=coco_file)
