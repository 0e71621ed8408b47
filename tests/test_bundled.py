"""The bundled model: it ships, loads, reaches its targets on fresh scenes, and drives ``padt demo``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from padt.cli import main
from padt.data.synthetic import BUNDLED_SCENES, FORM_WEIGHTS
from padt.evaluation.driver import evaluate
from padt.inference import PaDT, default_model

# Fresh scenes from the bundled model's training distribution: seed 4242 is used neither by the training data
# nor by the README's evaluation.
SPEC = "synthetic:n={n},seed=4242," + ",".join(
    f"{k}={v}" for k, v in dataclasses.asdict(BUNDLED_SCENES).items()
)
SCENES = 24
# Measured on 500 fresh scenes per task (README, seed 5150): REC acc@0.5 0.91, RES mIoU 0.82, OVD mAP 0.60, RIC
# greedy recall 0.87. On these 24 scenes the model gives 0.88 / 0.79 / 0.68 / 0.89; the thresholds leave a margin
# for another machine's arithmetic and catch a broken or untrained model (all of these are ~0 at random init).
THRESHOLDS = {
    "rec": ("acc@0.5", 0.77),
    "res": ("miou", 0.72),
    "ovd": ("map", 0.62),
    "ric": ("greedy_recall", 0.82),
}
MAX_NEW_TOKENS = {"rec": 64, "res": 64, "ovd": 192, "ric": 192}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    return PaDT.from_pretrained(default_model(), device="cpu")


def test_bundled_model_ships_small_and_loads(pipe):
    folder = default_model()
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert size < 12 * 2**20, f"bundled model is {size / 2**20:.1f} MiB"
    assert getattr(pipe.model.config, "padt_answer_format", "vrt") == "vrt"
    assert pipe.model.config.image_position_code is True and pipe.model.image_position is not None
    assert pipe.model.config.prototype_position_code is True and pipe.model.prototype_position is not None
    assert pipe.model.config.prototype_position_init_std == 0.005  # the recipe's choice (docs)
    generation = pipe.model.generation_config  # what configs/bundled.yaml writes
    assert generation.vrt_repeat_penalty == 4.0 and generation.vrt_reuse_penalty == 10.0
    assert generation.mask_box_weight == 0.4
    assert 1e6 < sum(p.numel() for p in pipe.model.parameters()) < 2e7


def test_bundled_scene_options_are_the_recipe_s():
    """``padt demo`` and these tests draw from BUNDLED_SCENES: it must be what every stage trained on."""
    from padt.training.stages import resolve_stages

    _, stages = resolve_stages(Path(__file__).parents[1] / "configs" / "bundled.yaml")
    assert [(name, kind) for name, kind, _ in stages] == [
        ("vision", "vision"),
        ("padt", "padt"),
        ("fresh", "padt"),
        ("more_a", "padt"),
        ("more_b", "padt"),
        ("average", "average"),
        ("more_c", "padt"),
        ("mean_c", "average"),
        ("more_d", "padt"),
        ("more_e", "padt"),
        ("mean_e", "average"),
        ("more_f", "padt"),
        ("more_g", "padt"),
        ("more_h", "padt"),
        ("more_i", "padt"),
        ("final", "padt"),
    ]
    trained = [config for _, kind, config in stages if kind != "average"]
    for config in trained:
        scenes = config.data.synthetic
        assert dataclasses.asdict(BUNDLED_SCENES) == {
            k: getattr(scenes, k) for k in ("min_size", "max_size", "max_objects")
        }
    # The shipped generation_config is the recipe's (the average keeps its first model's).
    shipped = json.loads((default_model() / "generation_config.json").read_text())
    final = trained[1].generation
    assert final and all(config.generation == final for config in trained[1:])
    assert final == {k: shipped.get(k) for k in final}
    assert stages[1][2].components.vision == "freeze"  # stage 2 learns to use stage 1's tower as trained
    # The prototype position term starts with stage 2 (it is not part of the vision tower stage 1 trains).
    assert (
        stages[1][2].model.tiny.prototype_position_code
        and not stages[0][2].model.tiny.prototype_position_code
    )
    # stage 3 continues stage 2's model, tower unfrozen, on scenes no earlier stage generated
    fresh = stages[2][2]
    assert fresh.model.path == str(stages[1][2].training.output_dir) and fresh.components.vision == "train"
    assert fresh.data.synthetic.seed not in {config.data.synthetic.seed for _, _, config in stages[:2]}
    assert fresh.training.learning_rate < stages[1][2].training.learning_rate
    # stages 4 and 5 continue stage 3's model on one set of scenes no earlier stage saw, with two seeds, at a
    # lower rate; stage 6 averages stages 3-5.
    (more_a, more_b, average, more_c, mean_c, more_d, more_e, mean_e, *rounds, final) = (
        config for _, _, config in stages[3:]
    )
    for more in (more_a, more_b):
        assert more.model.path == fresh.training.output_dir and more.components.vision == "train"
        assert more.data.synthetic.seed not in {config.data.synthetic.seed for config in trained[:3]}
        assert more.training.learning_rate < fresh.training.learning_rate
    assert more_b.data.synthetic.out == str(Path(more_a.training.output_dir) / "data")  # stage 4's scenes
    assert more_b.data.synthetic.seed == more_a.data.synthetic.seed and more_a.seed != more_b.seed
    assert average.average.models == [c.training.output_dir for c in (fresh, more_a, more_b)]
    assert average.average.weights is None  # the plain mean
    # stage 7 continues stage 6's mean on scenes no earlier stage saw; stage 8 averages stages 6 and 7.
    assert more_c.model.path == average.training.output_dir
    assert more_c.training.learning_rate == more_a.training.learning_rate < fresh.training.learning_rate
    assert more_c.data.synthetic.seed not in {config.data.synthetic.seed for config in trained[:5]}
    assert mean_c.average.models == [average.training.output_dir, more_c.training.output_dir]
    assert mean_c.average.weights is None
    # stages 9 and 10 go on from stage 8's mean, one after the other, each on new scenes whose referring
    # expressions lean to extremes and relations; stage 11 averages them; stages 12-16 go on from there the
    # same way, one after the other, and stage 16, a cool-down at a lower rate, is the final model.
    assert more_d.model.path == mean_c.training.output_dir and more_e.model.path == more_d.training.output_dir
    assert len(rounds) == 4 and rounds[0].model.path == mean_e.training.output_dir
    for before, after in zip(rounds, [*rounds[1:], final]):
        assert after.model.path == before.training.output_dir
    assert final.training.learning_rate < more_a.training.learning_rate
    assert final.training.max_steps == more_a.training.max_steps
    seeds = [config.data.synthetic.seed for config in trained]
    for more in (more_d, more_e, *rounds, final):
        assert more.components.vision == "train"
        assert more is final or more.training.learning_rate == more_a.training.learning_rate
        assert seeds.count(more.data.synthetic.seed) == 1  # scenes no other stage saw
        weights = more.data.synthetic.form_weights
        assert (
            weights["attribute"] < FORM_WEIGHTS["attribute"]
            and weights["relation"] > FORM_WEIGHTS["relation"]
        )
    assert mean_e.average.models == [more_d.training.output_dir, more_e.training.output_dir]
    continued = trained[2:]  # stages 3 on: each its own batch order
    assert len({config.seed for config in continued}) == len(continued)


def test_the_stage_1_tower_knows_each_object_s_kind(pipe):
    """The shipped vision tower is stage 1's (frozen in stage 2, fine-tuned with the rest in stage 3): a linear
    probe of the kind on each object's image features, fitted on 70% of fresh scenes, names the kind of the rest
    far above the majority rate."""
    from padt.training.vision_pretrain import PretrainScenes, VisionPretrainModel, evaluate_vision

    scenes = PretrainScenes.generate(
        pipe.processor.image_processor, n=100, seed=4243, progress=False, **dataclasses.asdict(BUNDLED_SCENES)
    )
    metrics = evaluate_vision(VisionPretrainModel(pipe.model, {}), scenes)
    assert metrics["probe"] > metrics["probe_chance"] + 0.5, metrics


def test_ovd_end_penalty_lists_more_of_the_objects(pipe, tmp_path):
    """The OVD end penalty (off in the shipped generation_config: docs/bundled-model.md): on 8 fresh scenes the
    answers go on to name more objects than without it and find more of the true ones; pushed hard, the answers
    still end in time under the shipped OVD grammar, and not without it; an answer to any other prompt is the same
    with any penalty."""
    from padt.evaluation.data import load_data
    from padt.evaluation.metrics import greedy_match
    from padt.prompts import ovd_prompt_names

    assert getattr(pipe.model.generation_config, "ovd_end_penalty", 0) == 0
    data = load_data(SPEC.format(n=8), "ovd", out_dir=tmp_path)
    images = [[Image.open(data.image_root / r.images[0])] for r in data.records]
    prompts = [r.prompt for r in data.records]

    def listed_and_found(**options):
        listed = found = 0
        predictions = pipe(images, prompts, max_new_tokens=192, **options)
        for record, [image], pred in zip(data.records, images, predictions, strict=True):
            w, h = image.size
            truth = [[o.bbox[0] * w, o.bbox[1] * h, o.bbox[2] * w, o.bbox[3] * h] for o in record.objects]
            listed += len(pred.objects)
            found += len(greedy_match([o.box_xyxy for o in pred.objects], truth)) if pred.objects else 0
        return listed, found

    (listed, found), (listed_plain, found_plain) = listed_and_found(ovd_end_penalty=4.0), listed_and_found()
    assert listed > listed_plain and found > found_plain, (listed, found, listed_plain, found_plain)
    # Pushed hard, the penalty would have the model write past its budget; the shipped OVD grammar ends every
    # answer in time, in the answer format, with the prompt's names only.
    assert pipe.model.generation_config.ovd_grammar is True
    pushed = dict(max_new_tokens=96, ovd_end_penalty=8.0)
    held, loose = pipe(images, prompts, **pushed), pipe(images, prompts, ovd_grammar=False, **pushed)
    assert sum(not p.finished or bool(p.warnings) for p in loose) >= 2, [p.text for p in loose]
    for record, prediction in zip(data.records, held, strict=True):
        assert prediction.finished and not prediction.warnings, prediction.text
        assert {o.label for o in prediction.objects} <= set(ovd_prompt_names(record.prompt)), prediction.text
    [ric] = pipe(images[:1], [""], task="ric", max_new_tokens=96, ovd_end_penalty=float("inf"))
    [ric_plain] = pipe(images[:1], [""], task="ric", max_new_tokens=96, ovd_end_penalty=0.0)
    assert ric.text == ric_plain.text and ric.objects


@pytest.mark.slow
@pytest.mark.parametrize("task", list(THRESHOLDS))
def test_bundled_model_reaches_its_targets_on_fresh_scenes(pipe, task, tmp_path):
    key, threshold = THRESHOLDS[task]
    metrics = evaluate(
        pipe,
        SPEC.format(n=SCENES),
        task,
        tmp_path,
        batch_size=12,
        max_new_tokens=MAX_NEW_TOKENS[task],
        meteor=False,
        progress=False,
    )
    assert metrics[key] >= threshold, metrics


@pytest.mark.slow
def test_demo_answers_its_first_scenes(tmp_path, capsys):
    """``make demo``'s first two scenes (its default seed): the referred object is found and every OVD box on an
    object carries that object's kind. The scenes are rebuilt from the seed the way the demo draws them."""
    import numpy as np

    from padt.data.synthetic import make_scene, sample_referring_expression
    from padt.evaluation.metrics import box_iou_matrix

    assert main(["demo", "--out", str(tmp_path), "--scenes", "2"]) == 0
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert [item["task"] for item in summary] == ["rec", "res", "ovd", "ric"] * 2
    assert "bundled model" in capsys.readouterr().out
    rng = np.random.default_rng(2026)
    for s in range(2):
        scene = make_scene(rng, **dataclasses.asdict(BUNDLED_SCENES))
        target, _ = sample_referring_expression(scene, rng)
        rec, ovd = summary[4 * s], summary[4 * s + 2]
        assert len(rec["objects"]) == 1 and rec["objects"][0]["score"] > 0.3
        assert box_iou_matrix([rec["objects"][0]["box_xyxy"]], [scene.objects[target].box])[0, 0] >= 0.5, s
        boxes = [o.box for o in scene.objects]
        for obj in ovd["objects"]:
            iou = box_iou_matrix([obj["box_xyxy"]], boxes)[0]
            assert iou.max() >= 0.5 and obj["label"] == scene.objects[int(iou.argmax())].shape, (s, obj)
        size = Image.open(tmp_path / f"scene{s}.png").size
        assert all(
            Image.open(tmp_path / f"scene{s}_{t}.png").size == size for t in ("rec", "res", "ovd", "ric")
        )


def test_duplicates_of_an_ovd_answer_are_marked_and_left_out_of_the_detections(pipe, tmp_path):
    """On the demo's first scene the OVD end penalty makes the answer go on after the objects it lists plainly,
    and some of what it adds lies on an object already listed. Duplicate marking marks each box that overlaps a
    higher-scored box of the answer by IoU above 0.5 (worked out here from the boxes and scores), keeps it in the
    answer's objects (paired with its VRT run) and leaves it out of COCO results, supervision detections, the
    overlay and the OVD score."""
    from padt.data.records import Record
    from padt.data.synthetic import make_scene
    from padt.evaluation.metrics import box_iou_matrix
    from padt.evaluation.predictions import prediction_line
    from padt.evaluation.score import score_ovd

    rng = np.random.default_rng(2026)  # the demo's first scene, drawn as the demo test above draws it
    scene = make_scene(rng, **dataclasses.asdict(BUNDLED_SCENES))
    shapes = scene.kinds
    assert shapes == ["circle", "hexagon"]
    prompt = ", ".join(shapes)  # the demo's OVD prompt
    options = dict(task="ovd", max_new_tokens=192, ovd_end_penalty=8.0)
    [plain] = pipe([scene.image], [prompt], **options)
    [marked] = pipe([scene.image], [prompt], ovd_duplicate_iou=0.5, **options)
    assert marked.text == plain.text and [o.box_xyxy for o in marked.objects] == [
        o.box_xyxy for o in plain.objects
    ]
    [without] = pipe([scene.image], [prompt], task="ovd", max_new_tokens=192)
    assert len(plain.objects) > len(without.objects)  # the penalty makes it go on
    overlap = box_iou_matrix([o.box_xyxy for o in plain.objects], [o.box_xyxy for o in plain.objects])
    kept, expected = [], [None] * len(plain.objects)
    for k in sorted(range(len(plain.objects)), key=lambda i: -plain.objects[i].score):
        over = [j for j in kept if overlap[k, j] > 0.5]
        if over:
            expected[k] = max(over, key=lambda j: overlap[k, j])
        else:
            kept.append(k)
    duplicates = [k for k, d in enumerate(expected) if d is not None]
    assert duplicates, plain.text  # the scene shows what it is meant to
    assert [o.duplicate_of for o in marked.objects] == expected
    assert all(o.duplicate_of is None for o in plain.objects)
    n = len(plain.objects)
    assert len(marked.to_coco([7])) == n - len(duplicates) and len(plain.to_coco([7])) == n
    assert list(marked.to_supervision().data["object_index"]) == sorted(kept)
    # the answer's other rows: a REC prompt in the same batch is never marked
    [rec, _] = pipe([scene.image] * 2, ["the circle", prompt], task=["rec", "ovd"], ovd_duplicate_iou=0.01)
    assert all(o.duplicate_of is None for o in rec.objects)

    coco = {
        "images": [{"id": 0, "width": scene.width, "height": scene.height}],
        "categories": [{"id": k, "name": name} for k, name in enumerate(shapes)],
        "annotations": [
            {
                "id": k + 1,  # COCO ids start at 1
                "image_id": 0,
                "category_id": shapes.index(o.shape),
                "bbox": [o.box[0], o.box[1], o.box[2] - o.box[0], o.box[3] - o.box[1]],
                "area": float(o.mask.sum()),
                "iscrowd": 0,
            }
            for k, o in enumerate(scene.objects)
        ],
    }
    record = Record.from_dict(
        {
            "id": 0,
            "image": "scene.png",
            "task": "ovd",
            "conversations": [{"from": "human", "value": "x"}],
            "answer_template": "",
            "objects": [],
        }
    )
    size = (scene.width, scene.height)
    lines = [
        prediction_line(0, record, "ovd", p, size, masks=False) | {"image_id": 0} for p in (plain, marked)
    ]
    assert [o.get("duplicate_of") for o in lines[1]["objects"]] == expected
    scored = [score_ovd(coco, [line]) for line in lines]
    assert [m["num_detections"] for m in scored] == [n, n - len(duplicates)]  # duplicates are not scored
