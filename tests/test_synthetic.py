"""The synthetic grounding world: determinism, exact masks and patches, and answers that are right by
construction, re-checked here with independent code."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from padt.cli import main as cli_main
from padt.data import synthetic as syn
from padt.errors import PaDTError
from padt.prompts import OVD_ANSWER_NONE, RIC_PROMPT, ovd_answer_counts, ovd_answer_template

foreground_patches = pytest.importorskip(
    "padt.data.patches", reason="padt.data.patches (the patch-assignment rule) is not available"
).foreground_patches

N_SCENES = 24  # per task; enough to meet every expression form, occlusion and background


def samples(task: str, seed: int = 7, n: int = N_SCENES):
    return [syn.synthetic_sample(task, seed, i) for i in range(n)]


@pytest.fixture(scope="module")
def rec_samples():
    return samples("rec")


@pytest.fixture(scope="module")
def ovd_samples():
    return samples("ovd")


@pytest.fixture(scope="module")
def ric_samples():
    return samples("ric")


# ---------------------------------------------------------------------------------------------- helpers
def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def mask_centre(mask: np.ndarray) -> tuple[float, float]:
    x1, y1, x2, y2 = mask_box(mask)
    return (x1 + x2) / 2, (y1 + y2) / 2


def scene_index_of(scene: syn.Scene, obj: dict) -> int:
    """The scene object a record object stands for, found by its mask."""
    mask = decode(obj["rle"])
    hits = [i for i, o in enumerate(scene.objects) if np.array_equal(o.mask, mask)]
    assert len(hits) == 1
    return hits[0]


def cell_coverage(mask: np.ndarray) -> np.ndarray:
    """Area fraction of each merged patch, with the 28-px cells of the resized image mapped back onto the
    original pixels (an area average, not the rule's bilinear resize, hence the tolerances below)."""
    h, w = mask.shape
    rows, cols = max(round(h / 28), 1), max(round(w / 28), 1)
    ys = np.minimum((np.arange(h) + 0.5) * rows / h, rows - 1).astype(int)
    xs = np.minimum((np.arange(w) + 0.5) * cols / w, cols - 1).astype(int)
    cell = (ys[:, None] * cols + xs[None, :]).ravel()
    cover = np.bincount(cell, weights=mask.ravel().astype(float), minlength=rows * cols)
    return cover / np.bincount(cell, minlength=rows * cols)


def check_schema(rec: dict) -> None:
    """docs/method.md §9.1 / §9.2."""
    assert set(rec) == {"id", "image", "conversations", "answer_template", "objects", "task"}
    assert isinstance(rec["id"], int) and isinstance(rec["image"], str) and rec["image"].endswith(".png")
    assert rec["conversations"] == [{"from": "human", "value": rec["conversations"][0]["value"]}]
    assert rec["task"] in ("refering", "ovd", "ric")
    found = [int(k) for k in re.findall(r"<\|Obj_(\d+)\|>", rec["answer_template"])]
    assert found == list(range(len(rec["objects"])))
    for obj in rec["objects"]:
        assert set(obj) == {"bbox", "rle", "patches", "label", "iscrowd", "area"}
        assert len(obj["bbox"]) == 4 and all(isinstance(v, float) and 0 <= v <= 1 for v in obj["bbox"])
        assert isinstance(obj["rle"]["counts"], str) and len(obj["rle"]["size"]) == 2
        assert obj["patches"] == sorted(set(obj["patches"])) and obj["patches"]
        assert isinstance(obj["label"], str) and obj["iscrowd"] == 0 and isinstance(obj["area"], int)
    try:  # the shared record reader, when present, must accept the record as well
        from padt.data.records import Record
    except ImportError:
        return
    Record.from_dict(json.loads(json.dumps(rec)))


def check_objects(scene: syn.Scene, rec: dict) -> None:
    h, w = scene.height, scene.width
    for obj in rec["objects"]:
        mask = decode(obj["rle"])
        assert mask.shape == (h, w) and obj["rle"]["size"] == [h, w]
        assert obj["area"] == int(mask.sum()) > 0
        x, y, bw, bh = mask_utils.toBbox({"size": [h, w], "counts": obj["rle"]["counts"].encode()})
        assert np.allclose(np.array(obj["bbox"]) * [w, h, w, h], [x, y, x + bw, y + bh])
        assert obj["patches"] == [int(p) for p in foreground_patches(mask)]
        coverage = cell_coverage(mask)
        assert max(obj["patches"]) < coverage.size
        assert all(coverage[p] >= 0.5 / 28 for p in obj["patches"])
        assert set(np.flatnonzero(coverage >= 3 / 28)) <= set(obj["patches"])


# ---------------------------------------------------------------------------------------------- scenes
def test_scene_is_deterministic_and_seed_dependent():
    a = syn.make_scene(np.random.default_rng(5))
    b = syn.make_scene(np.random.default_rng(5))
    c = syn.make_scene(np.random.default_rng(6))
    assert a.image.tobytes() == b.image.tobytes() and a.image.size == b.image.size
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.objects, b.objects, strict=True))
    assert a.image.size != c.image.size or a.image.tobytes() != c.image.tobytes()


def test_scene_objects_are_exact(rec_samples):
    sides = set(syn.image_sides())
    seen_sizes, n_occluded, backgrounds = set(), 0, set()
    for scene, _ in rec_samples:
        assert scene.width in sides and scene.height in sides
        assert 1 <= len(scene.objects) <= 8
        backgrounds.add(scene.background)
        seen_sizes.add((scene.width, scene.height))
        pixels = np.asarray(scene.image, dtype=float)
        union = np.zeros((scene.height, scene.width), dtype=int)
        for k, obj in enumerate(scene.objects):
            assert obj.shape in syn.SHAPES and obj.colour in syn.COLOURS and obj.size in syn.SIZES
            assert obj.mask.dtype == bool and obj.mask.any()
            assert obj.box == mask_box(obj.mask)
            assert obj.patches == tuple(foreground_patches(obj.mask))
            assert all(j > k for j in obj.occluders)
            n_occluded += bool(obj.occluders)
            union += obj.mask
            # The visible pixels are painted in the object's colour and its tint: the mask is what the image shows.
            colours = np.array([syn.COLOURS[obj.colour], syn.tint(obj.colour)], dtype=float)
            nearest = np.abs(pixels[obj.mask][:, None] - colours[None]).sum(-1).argmin(1)
            for k2 in np.unique(nearest):
                assert np.abs(pixels[obj.mask][nearest == k2].mean(axis=0) - colours[k2]).max() < 30
        assert union.max() <= 1  # visible masks never overlap
    assert n_occluded > 0 and len(backgrounds) >= 4 and len(seen_sizes) > 10


def _agreement(kind: str, box: tuple[int, int, int, int], inside: np.ndarray, tinted: np.ndarray) -> float:
    """How well the kind's pattern, at the best of its integer phases, explains which pixels are tinted."""
    x1, y1, x2, y2 = box
    period = syn.PATTERN_PERIOD
    return max(
        (syn.surface_pattern(kind, y2 - y1, x2 - x1, (x1 + dx, y1 + dy))[inside] == tinted).mean()
        for dx in range(period)
        for dy in range(period)
    )


def test_every_kind_shows_its_own_surface_pattern(rec_samples):
    """Inside an object, the pixels in the tint colour are where its kind's pattern says (at the best of the
    integer phases; an object's phase is random), better than any other kind's pattern explains them."""
    patterns = {kind: syn.surface_pattern(kind, 64, 64) for kind in syn.SHAPES}
    assert len({p.tobytes() for p in patterns.values()}) == len(syn.SHAPES)
    assert not patterns["circle"].any()  # plain
    assert patterns["triangle"][:, 0].tolist() == patterns["triangle"][:, 5].tolist()  # horizontal stripes
    assert patterns["hexagon"][0].tolist() == patterns["hexagon"][5].tolist()  # vertical stripes
    assert all(0.1 < patterns[k].mean() < 0.6 for k in syn.SHAPES if k != "circle")
    checked = 0
    for scene, _ in rec_samples[:8]:
        pixels = np.asarray(scene.image, dtype=float)
        for obj in scene.objects:
            colours = np.array([syn.COLOURS[obj.colour], syn.tint(obj.colour)], dtype=float)
            x1, y1, x2, y2 = obj.box
            inside = obj.mask[y1:y2, x1:x2]
            tinted = (np.abs(pixels[y1:y2, x1:x2, None] - colours).sum(-1).argmin(-1) == 1)[inside]

            scores = {kind: _agreement(kind, obj.box, inside, tinted) for kind in syn.SHAPES}
            assert max(scores, key=scores.get) == obj.shape and scores[obj.shape] > 0.9, (obj.shape, scores)
            checked += 1
    assert checked > 15


def test_small_and_large_are_distinct(rec_samples):
    areas = {}  # (shape, size) -> areas of unoccluded objects
    for scene, _ in rec_samples:
        for obj in scene.objects:
            if not obj.occluders:
                areas.setdefault((obj.shape, obj.size), []).append(obj.area)
    compared = 0
    for shape in syn.SHAPES:
        if (shape, "small") in areas and (shape, "large") in areas:
            assert max(areas[shape, "small"]) * 2 < min(areas[shape, "large"])
            compared += 1
    assert compared >= 4


@pytest.mark.parametrize(
    "kwargs",
    [dict(min_size=50), dict(min_size=300, max_size=200), dict(max_size=5000)],
)
def test_bad_sizes_are_refused(kwargs):
    with pytest.raises(PaDTError):
        syn.make_scene(np.random.default_rng(0), **kwargs)


# ---------------------------------------------------------------------------------------------- REC / RES
NP = (
    r"(?:(small|large) )?(?:(red|green|blue|yellow|purple|orange) )?"
    r"(circle|square|triangle|star|diamond|hexagon|cross|shape)"
)
EXPRESSION = re.compile(
    rf"^the (?:(leftmost|rightmost|topmost|bottommost) )?{NP}"
    rf"(?: (above|below|to the left of|to the right of) the {NP})?$"
)


def evaluate_expression(sentence: str, scene: syn.Scene) -> list[int]:
    """Independent reading of the grammar documented in :class:`padt.data.synthetic.ReferringExpression`."""
    m = EXPRESSION.match(sentence)
    assert m, sentence
    extreme, size, colour, shape, relation, a_size, a_colour, a_shape = m.groups()
    margin = syn.SPATIAL_MARGIN

    def denotes(i, sz, col, sh):
        o = scene.objects[i]
        return (
            (sz is None or o.size == sz)
            and (col is None or o.colour == col)
            and (sh in (None, "shape") or o.shape == sh)
        )

    centres = [mask_centre(o.mask) for o in scene.objects]
    matching = [i for i in range(len(scene.objects)) if denotes(i, size, colour, shape)]
    if extreme:
        axis, sign = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1)}[
            extreme
        ]
        key = {i: sign * centres[i][axis] for i in matching}
        return [i for i in matching if all(key[i] + margin < key[j] for j in matching if j != i)]
    if relation:
        anchors = [i for i in range(len(scene.objects)) if denotes(i, a_size, a_colour, a_shape)]
        if len(anchors) != 1:
            return []
        (ax, ay), out = centres[anchors[0]], []
        for i in matching:
            dx, dy = centres[i][0] - ax, centres[i][1] - ay
            along, across = {
                "above": (-dy, dx),
                "below": (dy, dx),
                "to the left of": (-dx, dy),
                "to the right of": (dx, dy),
            }[relation]
            if i != anchors[0] and along > margin and along > abs(across):
                out.append(i)
        return out
    return matching


def test_referring_expressions_denote_exactly_their_object(rec_samples):
    forms = set()
    for scene, recs in rec_samples:
        assert len(recs) == 1
        rec = recs[0]
        check_schema(rec)
        check_objects(scene, rec)
        sentence = rec["objects"][0]["label"]
        assert sentence == sentence.lower()
        assert rec["conversations"][0]["value"] == (
            f'Please carefully check the image and detect the object this sentence describes: "{sentence}".'
        )
        assert rec["answer_template"] == f'The "{sentence}" refers to <|Obj_0|> in this image.'
        assert rec["task"] == "refering"
        assert evaluate_expression(sentence, scene) == [scene_index_of(scene, rec["objects"][0])]
        m = EXPRESSION.match(sentence)
        forms.add("extreme" if m.group(1) else "relation" if m.group(5) else "attribute")
    assert forms == {"attribute", "extreme", "relation"}


def test_every_listed_expression_is_unique(rec_samples):
    for scene, _ in rec_samples[:8]:
        for i in range(len(scene.objects)):
            for form, exprs in syn.referring_expressions(scene, i).items():
                for expr in exprs:
                    assert evaluate_expression(expr.text, scene) == [i], expr.text
                    assert expr.form == syn.expression_form(expr.text) == form, expr.text


def test_res_equals_rec_and_several_refs_per_scene():
    assert syn.synthetic_sample("res", 3, 4)[1] == syn.synthetic_sample("rec", 3, 4)[1]
    scene, recs = syn.synthetic_sample("rec", 3, 4, refs_per_scene=8)
    targets = [scene_index_of(scene, r["objects"][0]) for r in recs]
    assert len(set(targets)) == len(targets) >= 1
    for r, target in zip(recs, targets, strict=True):
        assert evaluate_expression(r["objects"][0]["label"], scene) == [target]


def _forms(recs: list[dict]) -> list[str]:
    return [syn.expression_form(r["objects"][0]["label"]) for r in recs]


def test_form_weights_change_the_expressions_only():
    drawn = {}
    for name, weights in {
        "default": None,
        "explicit": dict(syn.FORM_WEIGHTS),
        "extreme": {"extreme": 5.0},
        "attribute only": {"extreme": 0, "relation": 0},
    }.items():
        pairs = [syn.synthetic_sample("rec", 5, i, refs_per_scene=2, form_weights=weights) for i in range(12)]
        drawn[name] = pairs
    default = drawn["default"]
    # The default mix is the one datasets were always generated with: passing it changes no byte.
    assert [r for _, r in drawn["explicit"]] == [r for _, r in default]
    for name in ("extreme", "attribute only"):
        # Same scenes (the random stream draws the same numbers), other expressions.
        assert all(
            np.array_equal(np.asarray(a.image), np.asarray(b.image))
            for (a, _), (b, _) in zip(drawn[name], default, strict=True)
        )
    count = {
        name: sum(f == "extreme" for _, recs in pairs for f in _forms(recs)) for name, pairs in drawn.items()
    }
    assert count["extreme"] > 1.5 * count["default"] > 0
    # Weight 0: a form is used only by an object that has no other.
    for scene, recs in drawn["attribute only"]:
        for r in recs:
            if syn.expression_form(r["objects"][0]["label"]) != "attribute":
                assert not syn.referring_expressions(scene, scene_index_of(scene, r["objects"][0]))[
                    "attribute"
                ]
            assert evaluate_expression(r["objects"][0]["label"], scene) == [
                scene_index_of(scene, r["objects"][0])
            ]


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({"extremes": 1.0}, "unknown expression form"),
        ({"extreme": -1}, ">= 0"),
        ({f: 0 for f in syn.FORM_WEIGHTS}, "not all 0"),
    ],
)
def test_bad_form_weights_are_refused(weights, match):
    with pytest.raises(PaDTError, match=match):
        syn.check_form_weights(weights)


def test_form_weights_are_kept_with_the_dataset(tmp_path, monkeypatch, capsys):
    syn.generate_dataset("rec", 3, 1, tmp_path / "a", progress=False)
    assert "form_weights" not in json.loads((tmp_path / "a" / "synthetic.json").read_text())
    with pytest.raises(PaDTError, match="other settings"):
        syn.generate_dataset("rec", 3, 1, tmp_path / "a", form_weights={"extreme": 1.0}, progress=False)
    monkeypatch.setattr(sys, "argv", ["padt"])
    args = ["data", "synthetic", "--task", "rec", "--n", "3", "--out", str(tmp_path / "b"), "--no-progress"]
    assert cli_main([*args, "--form-weights", "extreme=0.6, relation=0.3"]) == 0
    settings = json.loads((tmp_path / "b" / "synthetic.json").read_text())
    assert settings["form_weights"] == {"attribute": 0.4, "extreme": 0.6, "relation": 0.3}
    for bad, message in (("extreme", "not FORM=WEIGHT"), ("shape=1", "unknown expression form")):
        with pytest.raises(SystemExit):
            cli_main([*args, "--form-weights", bad])
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- OVD
def test_ovd_answer_counts_read_the_template_back():
    for names, counts in (
        (["star"], [1]),
        (["star"], [3]),
        (["a b", "circle", "x"], [2, 0, 1]),
        (["x"], [0]),
    ):
        answer = ovd_answer_template(names, counts)
        assert ovd_answer_counts(answer) == [(n, c) for n, c in zip(names, counts) if c]
    # what a small model writes: a name twice, with VRTs in place of the placeholders
    text = 'In this image, there are 1 "star" (<|VRT_3|><|VRT_4|>), 1 "star" (<|VRT_9|>), 12 "cross" ().'
    assert ovd_answer_counts(text) == [("star", 1), ("star", 1), ("cross", 12)]


OVD_GROUP = re.compile(r'(\d+) "([a-z]+)" \(((?:<\|Obj_\d+\|>(?:, )?)+)\)')


def test_ovd_answers_parse_back_to_the_counts(ovd_samples):
    saw_absent = False
    for scene, recs in ovd_samples:
        (rec,) = recs
        check_schema(rec)
        check_objects(scene, rec)
        assert rec["task"] == "ovd"
        prompt = rec["conversations"][0]["value"]
        prefix = "Please carefully check the image and detect the following objects: "
        assert prompt.startswith(prefix) and prompt.endswith(".")
        names = json.loads(prompt[len(prefix) : -1])
        truth = {s: sum(o.shape == s for o in scene.objects) for s in syn.SHAPES}
        assert len(names) == len(set(names)) and set(names) <= set(syn.SHAPES)
        assert {s for s, c in truth.items() if c} <= set(names)
        saw_absent |= any(truth[n] == 0 for n in names)

        groups = OVD_GROUP.findall(rec["answer_template"])
        assert rec["answer_template"] != OVD_ANSWER_NONE
        assert [g[1] for g in groups] == [n for n in names if truth[n]]  # prompt order, present classes only
        labels = [o["label"] for o in rec["objects"]]
        k = 0
        for count, name, runs in groups:
            assert int(count) == truth[name] == runs.count("<|Obj_")
            assert labels[k : k + int(count)] == [name] * int(count)
            xs = [mask_centre(decode(o["rle"]))[0] for o in rec["objects"][k : k + int(count)]]
            assert xs == sorted(xs)  # left to right within a class
            k += int(count)
        assert k == len(scene.objects) == len(rec["objects"])
        assert sorted(scene_index_of(scene, o) for o in rec["objects"]) == list(range(len(scene.objects)))
    assert saw_absent


# ---------------------------------------------------------------------------------------------- RIC
def test_ric_caption_mentions_every_object_once_in_order(ric_samples):
    for scene, recs in ric_samples:
        (rec,) = recs
        check_schema(rec)
        check_objects(scene, rec)
        assert rec["task"] == "ric" and rec["conversations"][0]["value"] == RIC_PROMPT
        caption = rec["answer_template"]
        assert re.findall(r"<\|Obj_(\d+)\|>", caption) == [str(k) for k in range(len(scene.objects))]
        assert all(o["label"] == "" for o in rec["objects"])
        order = [scene_index_of(scene, o) for o in rec["objects"]]
        assert sorted(order) == list(range(len(scene.objects)))
        # Each placeholder follows the noun phrase of its own object.
        for k, i in enumerate(order):
            assert f"{scene.objects[i].phrase} (<|Obj_{k}|>)" in caption
        assert caption[0].isupper() and caption.endswith(".")


# ------------------------------------------------------------------------------------------ datasets and CLI
def files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_dataset_is_byte_identical_and_resumable(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    syn.generate_dataset("all", 6, 11, a, progress=False)
    syn.generate_dataset("all", 6, 11, b, progress=False)
    syn.generate_dataset("all", 6, 12, c, progress=False)
    fa = files(a)
    assert fa == files(b)
    assert fa["records.jsonl"] != files(c)["records.jsonl"]
    assert all(fa[n] != files(c).get(n) for n in fa if n.endswith(".png"))
    assert sorted(n for n in fa if n.endswith(".png")) == [syn.image_name(i) for i in range(6)]
    tasks = [json.loads(line)["task"] for line in fa["records.jsonl"].decode().splitlines()]
    assert tasks == ["refering", "ovd", "ric"] * 2

    # Re-running is a no-op; an interrupted run (torn last line) resumes to the same bytes.
    again = syn.generate_dataset("all", 6, 11, b, progress=False)
    assert again.new_scenes == 0 and files(b) == fa
    records = (b / "records.jsonl").read_bytes()
    (b / "records.jsonl").write_bytes(records[: len(records) - 40])
    (b / syn.image_name(5)).unlink()
    resumed = syn.generate_dataset("all", 6, 11, b, progress=False)
    assert resumed.new_scenes >= 1 and files(b) == fa

    # A larger n extends; other settings in the same folder are refused.
    syn.generate_dataset("all", 8, 11, b, progress=False)
    assert (b / "records.jsonl").read_bytes().startswith(fa["records.jsonl"])
    with pytest.raises(PaDTError):
        syn.generate_dataset("all", 6, 99, b, progress=False)


def test_cli_writes_the_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["padt"])
    out = tmp_path / "ovd"
    args = [
        "data",
        "synthetic",
        "--task",
        "ovd",
        "--n",
        "3",
        "--seed",
        "2",
        "--out",
        str(out),
        "--min-size",
        "140",
        "--max-size",
        "200",
        "--no-progress",
    ]
    assert cli_main(args) == 0
    expected = ["000000.png", "000001.png", "000002.png", "records.jsonl", "synthetic.json"]
    assert sorted(p.name for p in out.iterdir()) == expected
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        rec = json.loads(line)
        check_schema(rec)
        h, w = rec["objects"][0]["rle"]["size"]
        assert 140 <= h <= 200 and 140 <= w <= 200
    assert "3 new scene(s)" in capsys.readouterr().out
    assert cli_main(args) == 0 and "3 already present" in capsys.readouterr().out
    assert cli_main([*args[:-5], "--max-size", "336"]) == 2  # other settings, same folder
    assert "other settings" in capsys.readouterr().err


def test_absent_rate_asks_for_kinds_the_scene_does_not_hold():
    """With ``absent_rate`` a share of the OVD records list only absent kinds and answer that none is there; the
    other OVD records list every kind present, as always; the scenes stay as they were, and at 0 no byte
    changes."""
    from padt.prompts import OVD_ANSWER_NONE, ovd_answer_counts, ovd_prompt_names

    plain = [syn.synthetic_sample("ovd", 9, i) for i in range(40)]
    at_zero = [syn.synthetic_sample("ovd", 9, i, absent_rate=0.0) for i in range(40)]
    assert [r for _, r in at_zero] == [r for _, r in plain]
    mixed = [syn.synthetic_sample("ovd", 9, i, absent_rate=0.5) for i in range(40)]
    absent_only = 0
    for (scene, [record]), (same, _) in zip(mixed, plain, strict=True):
        assert np.array_equal(np.asarray(scene.image), np.asarray(same.image))
        names = ovd_prompt_names(record["conversations"][0]["value"])
        present = {o.shape for o in scene.objects}
        assert names and set(names) <= set(syn.SHAPES)
        if record["objects"]:
            assert present <= set(names)
            counts = dict(ovd_answer_counts(record["answer_template"]))
            assert counts == {k: sum(o.shape == k for o in scene.objects) for k in present}
            continue
        absent_only += 1
        assert not present & set(names) and record["answer_template"] == OVD_ANSWER_NONE
    assert 10 <= absent_only <= 30  # about half of 40
    everything = [syn.synthetic_sample("ovd", 9, i, absent_rate=1.0)[1][0] for i in range(10)]
    assert all(r["answer_template"] == OVD_ANSWER_NONE and not r["objects"] for r in everything)
    # Other tasks do not change.
    assert syn.synthetic_sample("rec", 9, 0, absent_rate=1.0)[1] == syn.synthetic_sample("rec", 9, 0)[1]


def test_absent_rate_is_kept_with_the_dataset_and_checked(tmp_path, monkeypatch, capsys):
    from padt.evaluation.data import canonical_data_name, parse_synthetic_spec

    syn.generate_dataset("ovd", 3, 1, tmp_path / "a", progress=False)
    assert "absent_rate" not in json.loads((tmp_path / "a" / "synthetic.json").read_text())
    with pytest.raises(PaDTError, match="other settings"):
        syn.generate_dataset("ovd", 3, 1, tmp_path / "a", absent_rate=0.3, progress=False)
    with pytest.raises(PaDTError, match="absent_rate must be a number from 0 to 1"):
        syn.generate_dataset("ovd", 3, 1, tmp_path / "c", absent_rate=1.5, progress=False)
    monkeypatch.setattr(sys, "argv", ["padt"])
    args = ["data", "synthetic", "--task", "ovd", "--n", "3", "--out", str(tmp_path / "b"), "--no-progress"]
    assert cli_main([*args, "--absent-rate", "0.25"]) == 0
    assert json.loads((tmp_path / "b" / "synthetic.json").read_text())["absent_rate"] == 0.25
    with pytest.raises(SystemExit):
        cli_main([*args, "--absent-rate", "2"])
    assert "not a share from 0 to 1" in capsys.readouterr().err
    # padt eval's data spec: the key is recorded only when set, so folders evaluated before keep their name.
    assert parse_synthetic_spec("synthetic:n=4,absent_rate=0.5", "ovd")["absent_rate"] == 0.5
    assert "absent_rate" not in canonical_data_name("synthetic:n=4", "ovd")
    assert canonical_data_name("synthetic:n=4,absent_rate=1", "ovd").endswith(",absent_rate=1.0")
    with pytest.raises(PaDTError, match="absent_rate must be a share from 0 to 1"):
        parse_synthetic_spec("synthetic:n=4,absent_rate=x", "ovd")
