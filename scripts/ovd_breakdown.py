"""Where a model's OVD answers go wrong on the synthetic world: finding objects, or naming them.

    padt eval --data synthetic:task=ovd,n=500,seed=1001 --task ovd --out runs/eval_ovd --max-new-tokens 192
    python scripts/ovd_breakdown.py runs/eval_ovd

Class-agnostic first: a predicted box is *on an object* when it is matched to a ground-truth object of the image
(IoU ≥ 0.5, one to one, greedily by IoU: :func:`padt.evaluation.metrics.greedy_match`), and an object is *found*
when a predicted box matches it. Then, of the boxes on an object, how many carry that object's kind (the label
mAP scores), how many of the boxes of the wrong kind repeat a name written earlier in their answer, and in how
many images there are fewer boxes than objects. Also the confusion between kinds (rows: true kind, columns: predicted label) among matched
boxes, and the counts the answers state (``2 "star" (...)``) against the objects of each kind in the image:
right, lower, higher, or the kind not named; and how many answers name a kind twice (the answer format names
each kind once, with its count). Prints Markdown; ``--json`` writes the numbers too.

``--teacher-forced`` asks whether the model can count at all, apart from what it wrote: it runs the model on
each record's right answer (teacher forcing, as in training) and reads, at each count of that answer, whether
its most likely next token is that count and the probability it gives it. A model that has learnt to count
but loses track while writing gets these right; one that has not does not.

    python scripts/ovd_breakdown.py runs/eval_ovd --teacher-forced            # the model eval.json names

``--one-kind`` (with ``--teacher-forced``) takes away the choice of which kind comes next: each record becomes
one record per kind in its image, whose prompt lists that kind alone, so the answer is ``There is 1 "star"
(...) in this image.`` or ``There are 2 "star" (...)``, and the word that holds the count is the verb. It reads,
at the verb, whether the model's most likely token is the right one and the probability it gives it: a model
that can tell one object of a kind from several gets these right.

    python scripts/ovd_breakdown.py runs/eval_ovd --teacher-forced --one-kind
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from collections import Counter
from pathlib import Path

from padt.data.synthetic import SHAPES
from padt.errors import PaDTError
from padt.evaluation.data import SYNTHETIC_FOLDER, SYNTHETIC_PREFIX
from padt.evaluation.driver import SETTINGS_FILE, evaluated_records, read_prediction_lines
from padt.evaluation.metrics import greedy_match
from padt.prompts import OVD_COUNT_PATTERN, OVD_PROMPT, ovd_answer_counts, ovd_answer_template, ovd_prompt

COUNT_ROWS = ("1", "2", "3+")
COUNT_OUTCOMES = ("right", "lower", "higher", "not named")
# the verb of a one-kind answer: "There is 1 ..." or "There are 2 ..."
ONE_KIND_VERB = re.compile(r"^There (is|are) (\d+) ")


def breakdown(eval_dir: Path) -> dict:
    records = evaluated_records(eval_dir)
    predictions = {p["index"]: p for p in read_prediction_lines(eval_dir / "predictions.jsonl")}
    boxes = matched = named = objects = 0
    confusion: Counter[tuple[str, str]] = Counter()
    stated = {row: Counter() for row in COUNT_ROWS}
    answers = entries = several = repeating = 0
    wrong_kind = wrong_kind_repeating = short = 0
    for index, record in enumerate(records):
        pred = predictions.get(index)
        if pred is None:
            continue
        kinds = [o.label for o in record.objects]
        if "text" in pred:
            said = ovd_answer_counts(pred["text"])
            answers += 1
            entries += len(said)
            several += sum(n > 1 for _, n in said)
            repeating += len({name for name, _ in said}) < len(said)
            first: dict[str, int] = {}
            for name, n in said:
                first.setdefault(name, n)
            for kind, k in Counter(kinds).items():
                n = first.get(kind)
                outcome = "not named" if n is None else "right" if n == k else "lower" if n < k else "higher"
                stated[count_row(k)][outcome] += 1
        w, h = pred["width"], pred["height"]
        truth = [[o.bbox[0] * w, o.bbox[1] * h, o.bbox[2] * w, o.bbox[3] * h] for o in record.objects]
        ours = [o for o in pred["objects"] if o.get("duplicate_of") is None]  # duplicates are not detections
        boxes += len(ours)
        objects += len(truth)
        short += len(ours) < len(truth)
        if not ours or not truth:
            continue
        matches = greedy_match([o["bbox"] for o in ours], truth)
        for i, j in matches:
            label = ours[i].get("label", "")
            named += label == kinds[j]
            confusion[(kinds[j], label)] += 1
            if label != kinds[j]:
                wrong_kind += 1
                wrong_kind_repeating += any(o.get("label", "") == label for o in ours[:i])
        matched += len(matches)
    return {
        "images": len(predictions),
        "objects": objects,
        "boxes": boxes,
        "boxes_on_an_object": matched / max(boxes, 1),
        "objects_found": matched / max(objects, 1),
        "kind_right_when_on_an_object": named / max(matched, 1),
        "boxes_of_the_wrong_kind": wrong_kind,
        "of_them_a_name_written_earlier_in_the_answer": wrong_kind_repeating,
        "images_with_fewer_boxes_than_objects": short,
        "confusion": {f"{t} -> {p}": n for (t, p), n in sorted(confusion.items())},
        "counts": {
            "answers": answers,
            "kinds_named": entries,
            "kinds_named_with_a_count_above_1": several,
            "answers_naming_a_kind_twice": repeating,
            "by_objects_of_the_kind": {
                row: {o: stated[row][o] for o in COUNT_OUTCOMES} for row in COUNT_ROWS
            },
        },
    }


def count_row(k: int) -> str:
    return COUNT_ROWS[min(k, 3) - 1]


def one_kind_records(records: list) -> list:
    """Per OVD record, one record per kind its answer names (in that order), whose prompt lists that kind
    alone and whose answer and objects are that kind's."""
    prefix = OVD_PROMPT.split("{}")[0]
    out = []
    for record in records:
        human = record.conversations[0]["value"]
        if prefix not in human:
            raise PaDTError(f"record {record.id}: not an OVD prompt ({human[:60]!r})")
        for kind, count in ovd_answer_counts(record.answer_template):
            one = copy.deepcopy(record)
            one.conversations[0]["value"] = human[: human.index(prefix)] + ovd_prompt([kind])
            one.answer_template = ovd_answer_template([kind], [count])
            one.objects = [o for o in one.objects if o.label == kind]
            out.append(one)
    return out


def teacher_forced_counts(
    eval_dir: Path,
    model: str | None = None,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    one_kind: bool = False,
) -> dict:
    """At every count of every record's right answer, with the answer up to it given: is the model's most
    likely next token that count, and what probability does it give it. Returns per row (objects of the kind)
    ``{"counts", "right", "mean_probability"}`` and ``entries``: ``(record, entry, row, right, probability)``.

    ``one_kind``: the records of :func:`one_kind_records` instead, read at the verb (``is`` / ``are``)."""
    import numpy as np
    import torch

    from padt.inference import PaDT
    from padt.training.batch import PaDTCollator, PaDTDataset, teacher_force

    settings = json.loads((eval_dir / SETTINGS_FILE).read_text())
    if not str(settings.get("data", "")).startswith(SYNTHETIC_PREFIX):
        raise PaDTError(
            f"{eval_dir}: --teacher-forced reads synthetic data only (padt eval --data synthetic:...)"
        )
    model = model or settings.get("model")
    if not model:
        raise PaDTError(f"{eval_dir / SETTINGS_FILE} names no model; give one with --model")
    records = evaluated_records(eval_dir)[:limit]
    if one_kind:
        records = one_kind_records(records)
    pipe = PaDT.from_pretrained(model, device="cpu", dtype="fp32")
    tokenizer, vocab = pipe.processor.tokenizer, pipe.model.vocab_size
    dataset = PaDTDataset(records, eval_dir / SYNTHETIC_FOLDER)
    collate = PaDTCollator(pipe.processor, patches="recompute", with_masks=False)
    entries = []
    for start in range(0, len(records), batch_size):
        indices = range(start, min(len(records), start + batch_size))
        with torch.no_grad():
            forced = teacher_force(
                pipe.model, pipe.processor, collate([dataset[i] for i in indices]), np.random.default_rng(0)
            )
        for b, index in enumerate(indices):
            positions = forced.completion_mask[b].nonzero().flatten()
            ids = forced.completion_ids[b, positions].tolist()
            # the completion as text, token by token (a VRT as a stand-in holding neither digits nor quotes)
            pieces = [tokenizer.decode([t]) if t < vocab else "<VRT>" for t in ids]
            owner = [t for t, piece in enumerate(pieces) for _ in piece]
            text = "".join(pieces)
            matches = [ONE_KIND_VERB.match(text)] if one_kind else OVD_COUNT_PATTERN.finditer(text)
            for entry, match in enumerate(matches):
                if match is None:
                    raise PaDTError(f"record {index}: the answer does not start with 'There is/are N'")
                count = int(match.group(2) if one_kind else match.group(1))
                t = owner[match.start(1)]
                if "".join(pieces[t:]).lstrip()[: len(match.group(1))] != match.group(1):
                    raise PaDTError(f"record {index}: {match.group(1)!r} does not start a token")
                probabilities = forced.logits[b, positions[t]].float().softmax(-1)
                right = int(probabilities.argmax()) == ids[t]
                entries.append((index, entry, count_row(count), right, float(probabilities[ids[t]])))
    rows = {}
    for row in COUNT_ROWS:
        mine = [e for e in entries if e[2] == row]
        rows[row] = {
            "counts": len(mine),
            "right": sum(e[3] for e in mine),
            "mean_probability": sum(e[4] for e in mine) / len(mine) if mine else None,
        }
    return {"records": len(records), "by_objects_of_the_kind": rows, "entries": entries}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "eval_dir", type=Path, help="folder written by padt eval --task ovd on synthetic data"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument(
        "--teacher-forced",
        action="store_true",
        help="also run the model on the right answers and read its counts (module docstring)",
    )
    parser.add_argument("--model", help="with --teacher-forced: this checkpoint instead of eval.json's")
    parser.add_argument(
        "--one-kind",
        action="store_true",
        help="with --teacher-forced: one prompt per kind in the image, read at the verb (module docstring)",
    )
    args = parser.parse_args()
    if args.one_kind and not args.teacher_forced:
        parser.error("--one-kind reads the model: add --teacher-forced")
    table = breakdown(args.eval_dir)
    print(f"{table['images']} images, {table['objects']} objects, {table['boxes']} predicted boxes\n")
    print("| boxes on an object (IoU ≥ 0.5) | objects found | kind right, of the boxes on an object |")
    print("|---:|---:|---:|")
    print(
        f"| {table['boxes_on_an_object']:.3f} | {table['objects_found']:.3f} "
        f"| {table['kind_right_when_on_an_object']:.3f} |"
    )
    print(
        f"\n{table['boxes_of_the_wrong_kind']} boxes on an object carry another kind; "
        f"{table['of_them_a_name_written_earlier_in_the_answer']} of them a name written earlier in their answer. "
        f"In {table['images_with_fewer_boxes_than_objects']} images there are fewer boxes than objects."
    )
    pairs = Counter({tuple(k.split(" -> ")): n for k, n in table["confusion"].items()})
    predicted = sorted(
        {p for _, p in pairs}, key=lambda p: (p not in SHAPES, SHAPES.index(p) if p in SHAPES else 0)
    )
    print("\n| true \\ predicted | " + " | ".join(p or "(none)" for p in predicted) + " |")
    print("|---" * (len(predicted) + 1) + "|")
    for kind in SHAPES:
        print(f"| {kind} | " + " | ".join(str(pairs.get((kind, p), 0)) for p in predicted) + " |")
    counts = table["counts"]
    if counts["answers"]:
        print(
            f"\nCounts stated in the {counts['answers']} answers: {counts['kinds_named']} kinds named, "
            f"{counts['kinds_named_with_a_count_above_1']} of them with a count above 1; "
            f"{counts['answers_naming_a_kind_twice']} answers name a kind twice.\n"
        )
        print("| objects of the kind | kinds | count right | lower | higher | kind not named |")
        print("|---|---:|---:|---:|---:|---:|")
        for row, outcomes in counts["by_objects_of_the_kind"].items():
            total = sum(outcomes.values())
            print(f"| {row} | {total} | " + " | ".join(str(outcomes[o]) for o in COUNT_OUTCOMES) + " |")
    if args.teacher_forced:
        forced = teacher_forced_counts(args.eval_dir, args.model, one_kind=args.one_kind)
        key = "teacher_forced_one_kind" if args.one_kind else "teacher_forced"
        table[key] = {"records": forced["records"], **forced["by_objects_of_the_kind"]}
        if args.one_kind:
            print(
                f"\nOne kind per prompt, with the right answer given up to its verb (teacher forcing, "
                f"{forced['records']} prompts):\n"
            )
            print(
                "| objects of the kind | prompts | most likely next token is the verb | mean probability of it |"
            )
        else:
            print(
                f"\nWith the right answer given up to each count (teacher forcing, {forced['records']} answers):\n"
            )
            print(
                "| objects of the kind | counts | most likely next token is the count | mean probability of it |"
            )
        print("|---|---:|---:|---:|")
        for row, numbers in forced["by_objects_of_the_kind"].items():
            if numbers["counts"]:
                print(
                    f"| {row} | {numbers['counts']} | {numbers['right']} | {numbers['mean_probability']:.3f} |"
                )
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
