"""The analysis scripts the README quotes: the ablation's statistics and the OVD breakdown."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from padt.data.records import read_records
from padt.data.synthetic import generate_dataset
from padt.errors import PaDTError

SCRIPTS = Path(__file__).parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_ablation_means_standard_errors_and_resolved_differences():
    ablation = _script("ablation")
    assert ablation.mean_and_se([0.2, 0.3]) == {"mean": pytest.approx(0.25), "se": pytest.approx(0.05)}
    assert ablation.mean_and_se([0.4]) == {"mean": 0.4, "se": None}
    assert ablation.mean_and_se([None]) is None
    # Seed-paired: differences -0.30 and -0.20 -> mean -0.25, SE 0.05: resolved (same sign, 5 SE).
    clear = ablation.difference([0.1, 0.2], [0.4, 0.4])
    assert clear["mean"] == pytest.approx(-0.25) and clear["se"] == pytest.approx(0.05) and clear["resolved"]
    # Differences +0.05 and -0.03: signs disagree -> not resolved whatever the size.
    mixed = ablation.difference([0.45, 0.37], [0.4, 0.4])
    assert mixed["per_seed"] == pytest.approx([0.05, -0.03]) and not mixed["resolved"]
    # Same sign but within 2 SE: not resolved.
    assert not ablation.difference([0.41, 0.5], [0.4, 0.4])["resolved"]
    assert ablation.difference([0.5], [0.4]) is None  # one seed: no standard error


def test_ovd_breakdown_counts_found_objects_and_right_kinds(tmp_path):
    """Predictions made from the ground truth: every object found and named, except one box given the wrong
    kind, one given the kind named before it in its answer, one box on empty space and one object left out."""
    generate_dataset("ovd", 4, 4, tmp_path / "data", max_objects=3, progress=False)
    records = read_records(tmp_path / "data" / "records.jsonl")
    mixed = next(
        i for i, r in enumerate(records) if i > 0 and len({o.label for o in r.objects[:2]}) == 2
    )  # an image whose first two objects differ in kind
    lines, total = [], 0
    for index, record in enumerate(records):
        w, h = Image.open(tmp_path / "data" / record.images[0]).size
        objects = [
            {
                "bbox": [o.bbox[0] * w, o.bbox[1] * h, o.bbox[2] * w, o.bbox[3] * h],
                "label": o.label,
                "score": 0.9,
            }
            for o in record.objects
        ]
        total += len(objects)
        if index == 0:
            objects[0]["label"] = "cross" if objects[0]["label"] != "cross" else "circle"
            objects.append({"bbox": [0, 0, 2, 2], "label": "circle", "score": 0.1})
        if index == mixed:
            objects[1]["label"] = objects[0]["label"]
        if index == 2:
            objects.pop()  # not found
        lines.append(json.dumps({"index": index, "width": w, "height": h, "objects": objects}))
    (tmp_path / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "eval.json").write_text(json.dumps({"data": "synthetic:task=ovd,n=4,seed=4", "task": "ovd"}))

    table = _script("ovd_breakdown").breakdown(tmp_path)
    assert (table["images"], table["objects"], table["boxes"]) == (4, total, total)
    assert table["objects_found"] == pytest.approx((total - 1) / total)
    assert table["boxes_on_an_object"] == pytest.approx((total - 1) / total)
    assert table["kind_right_when_on_an_object"] == pytest.approx((total - 3) / (total - 1))
    assert sum(table["confusion"].values()) == total - 1
    assert (table["boxes_of_the_wrong_kind"], table["of_them_a_name_written_earlier_in_the_answer"]) == (2, 1)
    assert table["images_with_fewer_boxes_than_objects"] == 1  # image 2 (image 0 has one box more)

    assert table["counts"]["answers"] == 0  # no answer texts, no counts table


def test_ovd_breakdown_reads_the_counts_the_answers_state(tmp_path):
    """Answers written by hand against four scenes whose kinds are known: each stated count is right, lower,
    higher or missing, sorted by how many objects of that kind the scene holds."""
    generate_dataset("ovd", 4, 4, tmp_path / "data", max_objects=6, progress=False)
    records = read_records(tmp_path / "data" / "records.jsonl")
    assert [dict(Counter(o.label for o in r.objects)) for r in records] == [
        {"triangle": 1, "square": 2, "cross": 1, "diamond": 2},
        {"star": 1, "hexagon": 1, "square": 1},
        {"diamond": 1, "hexagon": 1, "star": 2, "circle": 2},
        {"hexagon": 3, "triangle": 1},
    ]
    texts = [
        'In this image, there are 1 "triangle" (<|VRT_1|>), 2 "square" (<|VRT_2|>, <|VRT_3|>), '
        '1 "square" (<|VRT_4|>), 3 "diamond" (<|VRT_5|>, <|VRT_6|>, <|VRT_7|>).',
        'In this image, there are 1 "star" (<|VRT_1|>), 1 "hexagon" (<|VRT_2|>), 1 "square" (<|VRT_3|>), '
        '1 "circle" (<|VRT_4|>).',  # circle is not in the scene
        'In this image, there are 1 "diamond" (<|VRT_1|>), 1 "star" (<|VRT_2|>), 1 "star" (<|VRT_3|>).',
        'There are 2 "hexagon" (<|VRT_1|>, <|VRT_2|>) in this image.',
    ]
    lines = [
        json.dumps({"index": i, "width": 100, "height": 100, "objects": [], "text": text})
        for i, text in enumerate(texts)
    ]
    (tmp_path / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "eval.json").write_text(json.dumps({"data": "synthetic:task=ovd,n=4,seed=4", "task": "ovd"}))

    counts = _script("ovd_breakdown").breakdown(tmp_path)["counts"]
    assert counts == {
        "answers": 4,
        "kinds_named": 12,
        "kinds_named_with_a_count_above_1": 3,
        "answers_naming_a_kind_twice": 2,
        "by_objects_of_the_kind": {
            # 1: triangle, star, hexagon, square, diamond right; cross, hexagon, triangle not named
            "1": {"right": 5, "lower": 0, "higher": 0, "not named": 3},
            # 2: square right (its first count), diamond higher, star lower, circle not named
            "2": {"right": 1, "lower": 1, "higher": 1, "not named": 1},
            "3+": {"right": 0, "lower": 1, "higher": 0, "not named": 0},  # 2 of 3 hexagons
        },
    }


@pytest.mark.slow
def _next_token_logits(pipe, record, image_root: Path, answer_start: str):
    """A plain forward of the record's prompt followed by ``answer_start``: the logits of the next token."""
    import torch

    batch = pipe.processor([record.prompt], [[str(image_root / record.images[0])]]).inputs
    prefix = torch.tensor([pipe.processor.tokenizer.encode(answer_start, add_special_tokens=False)])
    inputs = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    with torch.no_grad():
        return pipe.model(
            input_ids=torch.cat([batch["input_ids"], prefix], 1),
            attention_mask=torch.cat([batch["attention_mask"], torch.ones_like(prefix)], 1),
            **inputs,
        ).logits[0, -1]


def test_ovd_breakdown_teacher_forced_counts_read_the_model_at_each_count(tmp_path):
    """The bundled model run on the right answers of the four scenes above: one entry per count of each answer,
    in the answer's order and sorted into the row of its true count; the probability read at the first count
    of each answer, and whether the count is the most likely token there, are what a plain forward of the prompt and
    the answer's words before it gives."""

    from padt.inference import BUNDLED_MODEL, PaDT
    from padt.prompts import ovd_answer_counts

    generate_dataset("ovd", 4, 4, tmp_path / "data", max_objects=6, progress=False)
    records = read_records(tmp_path / "data" / "records.jsonl")
    (tmp_path / "eval.json").write_text(
        json.dumps({"data": "synthetic:task=ovd,n=4,seed=4", "task": "ovd", "model": str(BUNDLED_MODEL)})
    )
    script = _script("ovd_breakdown")
    forced = script.teacher_forced_counts(tmp_path, batch_size=3)  # two batches, the second of one record
    entries = forced["entries"]
    assert [(e[0], e[1], e[2]) for e in entries] == [
        (i, k, script.count_row(n))
        for i, record in enumerate(records)
        for k, (_, n) in enumerate(ovd_answer_counts(record.answer_template))
    ]
    rows = forced["by_objects_of_the_kind"]
    assert [rows[r]["counts"] for r in ("1", "2", "3+")] == [8, 4, 1]

    pipe = PaDT.from_pretrained(BUNDLED_MODEL, device="cpu", dtype="fp32")
    tokenizer = pipe.processor.tokenizer
    for i, record in enumerate(records):
        before = record.answer_template[
            : record.answer_template.index(str(ovd_answer_counts(record.answer_template)[0][1]))
        ]
        logits = _next_token_logits(pipe, record, tmp_path / "data", before)
        count = tokenizer.encode(
            str(ovd_answer_counts(record.answer_template)[0][1]), add_special_tokens=False
        )
        probability = float(logits.softmax(-1)[count[0]])
        first = next(e for e in entries if e[0] == i and e[1] == 0)
        assert first[4] == pytest.approx(probability, abs=1e-4), (i, before)
        assert first[3] == (int(logits.argmax()) == count[0]), (i, before)


def test_ovd_breakdown_one_kind_prompts_read_the_model_at_the_verb(tmp_path):
    """Each record becomes one record per kind, prompt and answer of that kind alone; the model is read at the verb
    ("is" for one object, "are" for several), with what a plain forward of the prompt and "There" gives."""

    from padt.inference import BUNDLED_MODEL, PaDT
    from padt.prompts import ovd_answer_counts, ovd_prompt

    generate_dataset("ovd", 3, 4, tmp_path / "data", max_objects=6, progress=False)
    records = read_records(tmp_path / "data" / "records.jsonl")
    (tmp_path / "eval.json").write_text(
        json.dumps({"data": "synthetic:task=ovd,n=3,seed=4", "task": "ovd", "model": str(BUNDLED_MODEL)})
    )
    script = _script("ovd_breakdown")
    ones = script.one_kind_records(records)
    kinds = [(r.id, kind, n) for r in records for kind, n in ovd_answer_counts(r.answer_template)]
    assert [(o.id, *ovd_answer_counts(o.answer_template)[0]) for o in ones] == kinds
    for one, (_, kind, n) in zip(ones, kinds):
        assert one.prompt.endswith(ovd_prompt([kind]))
        assert one.answer_template.startswith(f'There is 1 "{kind}"' if n == 1 else f'There are {n} "{kind}"')
        assert [o.label for o in one.objects] == [kind] * n
    assert {n == 1 for _, _, n in kinds} == {True, False}  # single objects and several
    assert records[0].answer_template.startswith("In this image")  # the originals are untouched
    with pytest.raises(PaDTError, match="not an OVD prompt"):
        script.one_kind_records([_rec_prompt(records[0])])

    forced = script.teacher_forced_counts(tmp_path, batch_size=4, one_kind=True)
    entries = forced["entries"]
    assert forced["records"] == len(kinds) and [(e[0], e[1], e[2]) for e in entries] == [
        (i, 0, script.count_row(n)) for i, (_, _, n) in enumerate(kinds)
    ]
    pipe = PaDT.from_pretrained(BUNDLED_MODEL, device="cpu", dtype="fp32")
    tokenizer = pipe.processor.tokenizer
    for i in range(len(ones)):
        logits = _next_token_logits(pipe, ones[i], tmp_path / "data", "There")
        verb = tokenizer.encode(" is" if kinds[i][2] == 1 else " are", add_special_tokens=False)
        assert len(verb) == 1
        assert entries[i][4] == pytest.approx(float(logits.softmax(-1)[verb[0]]), abs=1e-4)
        assert entries[i][3] == (int(logits.argmax()) == verb[0])


def _rec_prompt(record):
    import copy

    other = copy.deepcopy(record)
    other.conversations[0]["value"] = "Please find the red circle."
    return other


def test_shape_probe_several_pools_each_kinds_patches(tmp_path):
    """Per kind of each image: the mean, sum and max of the image features over the patches of all its objects,
    their number, and whether there are several objects, against the features computed here."""
    import torch

    from padt.inference import BUNDLED_MODEL, PaDT

    generate_dataset("ovd", 4, 4, tmp_path, min_size=112, max_size=196, max_objects=6, progress=False)
    records = read_records(tmp_path / "records.jsonl")
    pipe = PaDT.from_pretrained(BUNDLED_MODEL, device="cpu", dtype="fp32")
    feats, several = _script("shape_probe").kind_features(pipe, records, tmp_path)
    row = 0
    for record in records:
        batch = pipe.processor(["x"], [Image.open(tmp_path / record.images[0]).convert("RGB")])
        with torch.no_grad():
            embeds = pipe.model.encode_images(
                batch.inputs["pixel_values"], batch.inputs["image_grid_thw"]
            ).image_embeds
        for kind in dict.fromkeys(o.label for o in record.objects):
            objects = [o for o in record.objects if o.label == kind]
            patches = sorted({p for o in objects for p in o.patches})
            rows = embeds[patches]
            torch.testing.assert_close(feats["mean"][row], rows.mean(0))
            torch.testing.assert_close(feats["sum"][row], rows.sum(0))
            torch.testing.assert_close(feats["max"][row], rows.max(0).values)
            assert feats["patches"][row].item() == len(patches)
            assert several[row] == (len(objects) > 1)
            row += 1
    assert row == len(several) and True in several and False in several

    # A processor that enlarges the scenes puts them on a finer grid: the objects' patches are recomputed there.
    from padt.data.patches import foreground_patches
    from padt.processing import PaDTProcessor

    pipe.processor = PaDTProcessor.from_pretrained(
        BUNDLED_MODEL, pipe.model.vocab_size, min_pixels=4 * 196 * 196, max_pixels=4 * 224 * 224
    )
    vision, patches = _script("shape_probe").encode_image(pipe, records[0], tmp_path)
    image = Image.open(tmp_path / records[0].images[0])
    rows, cols = pipe.processor.vrt_grid(image.width, image.height)
    assert rows * cols == len(vision.image_embeds) >= 4 * 16
    assert patches == [foreground_patches(dict(o.rle), (rows, cols)) for o in records[0].objects]
    assert patches != [list(o.patches) for o in records[0].objects]
    for own, obj in zip(patches, records[0].objects):  # every cell named overlaps the object's box
        x1, y1, x2, y2 = obj.bbox  # normalised
        for p in own:
            r, c = divmod(p, cols)
            assert c / cols < x2 and (c + 1) / cols > x1 and r / rows < y2 and (r + 1) / rows > y1, (
                p,
                obj.bbox,
            )


def test_spatial_words_tells_a_model_that_reads_the_word_from_one_that_ignores_it():
    spatial = _script("spatial_words")
    queries = spatial.extreme_queries(80, 77, max_objects=6, min_size=112, max_size=196)
    assert len(queries) >= 5
    for q in queries:
        assert q.expression.resolve(q.scene) == [q.target]
        assert q.target != q.opposite_target and {q.target, q.opposite_target} <= set(q.matching)
        key = {"leftmost": 0, "rightmost": 0, "topmost": 1, "bottommost": 1}[q.expression.extreme]
        centres = {i: q.scene.objects[i].centre[key] for i in q.matching}
        low, high = min(centres, key=centres.get), max(centres, key=centres.get)
        assert (q.target, q.opposite_target) in ((low, high), (high, low))

    def free_patches(q, index):  # the object's patches that no object painted later covers
        later = set().union(*(set(o.patches) for o in q.scene.objects[index + 1 :]))
        return [p for p in q.scene.objects[index].patches if p not in later]

    queries = [q for q in queries if all(free_patches(q, i) for i in q.matching)]
    assert len(queries) >= 5

    def patch_of(q, index):
        return free_patches(q, index)[0]

    def oracle(images, texts):
        return [patch_of(q, q.target if t == q.text else q.opposite_target) for q, t in zip(queries, texts)]

    def noun_phrase_only(images, texts):  # the first object the noun phrase matches, whatever the word
        return [patch_of(q, q.matching[0]) for q in queries]

    right = spatial.spatial_words(queries, oracle)
    assert right["as written"]["target"] == 1.0 and right["opposite word"]["target"] == 1.0
    assert right["same_object_both_ways"] == 0.0
    deaf = spatial.spatial_words(queries, noun_phrase_only)
    assert deaf["same_object_both_ways"] == 1.0
    expected = sum(q.matching[0] == q.target for q in queries) / len(queries)
    assert deaf["as written"]["target"] == pytest.approx(expected)
    assert deaf["as written"]["target"] + deaf["as written"]["matching"] == pytest.approx(1.0)
    assert spatial.place(queries[0].scene, None, queries[0].target, queries[0].matching) == "no VRT"
    silent = spatial.spatial_words(queries, lambda images, texts: [None] * len(texts))
    assert silent["as written"]["no VRT"] == 1.0 and silent["same_object_both_ways"] == 0.0


def test_shape_probe_accuracy_by_size_by_hand():
    """Held-out hits in thirds by area, smallest first; the probe's accuracy is the mean of its hits."""
    import torch

    from padt.evaluation.probe import linear_probe, linear_probe_hits

    hits = torch.tensor([True, False, True, True, False, True])
    areas = torch.tensor([900.0, 100.0, 500.0, 120.0, 480.0, 2000.0])
    by_size = _script("shape_probe").accuracy_by_size(hits, areas)
    assert by_size == [(100.0, 120.0, 0.5), (480.0, 500.0, 0.5), (900.0, 2000.0, 1.0)]

    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.nn.functional.one_hot(y, 3).float() * 2 + torch.randn(60, 3, generator=g)
    train = torch.arange(60) < 40
    right = linear_probe_hits(x, y, train, 3)
    assert right.shape == (20,) and right.dtype == torch.bool and 0.6 < right.float().mean() < 1.0
    assert linear_probe(x, y, train, 3) == right.float().mean().item()
