"""Recipes in stages: vision pretraining's dense labels and learning, and one command that runs, resumes and skips
stages (padt.training.vision_pretrain, padt.training.stages)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from padt.cli import main
from padt.data.patches import foreground_patches
from padt.data.synthetic import SHAPES, Scene, SceneObject, make_scene
from padt.errors import PaDTError
from padt.tiny import tiny_processor
from padt.training.config import VisionStageConfig
from padt.training.stages import resolve_stages
from padt.training.trainer import build_model_and_processor
from padt.training.vision_pretrain import (
    HEADS,
    PretrainScenes,
    VisionPretrainModel,
    cell_targets,
    collate,
    evaluate_vision,
    load_vision_from,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {
    "hidden_size": 64,
    "vision_hidden_size": 64,
    "vision_num_heads": 4,
    "decoder_ordering": "raster",
    "decoder_absolute_position": True,
    "image_position_code": True,
    "seed": 0,
}
PIXELS = 112 * 112


def _build(model: dict, processor: dict | None = None):
    config = VisionStageConfig.model_validate(
        {"model": model, "processor": processor or {}, "seed": 0, "training": {"output_dir": "unused"}}
    )
    return build_model_and_processor(config)


def _object(shape: str, mask: np.ndarray, size: str = "large") -> SceneObject:
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return SceneObject(shape, "red", size, mask, box, tuple(foreground_patches(mask)))


# ------------------------------------------------------------------------------------------------ labels
def test_cell_targets_by_hand():
    """A 112-px scene (4x4 merged patches): a square over patches 5 and 6, a sliver of a star in patch 7."""
    square = np.zeros((112, 112), dtype=bool)
    square[28:56, 28:84] = True
    star = np.zeros((112, 112), dtype=bool)
    star[28:56, 84:90] = True  # 6 of 28 columns of patch 7
    scene = Scene(
        Image.new("RGB", (112, 112)), (_object("square", square), _object("star", star, "small")), "noise"
    )
    t = cell_targets(scene, (4, 4))
    expected = np.zeros(16, dtype=int)
    expected[[5, 6]] = SHAPES.index("square") + 1
    expected[7] = SHAPES.index("star") + 1
    assert t["shape"].tolist() == expected.tolist()
    assert t["size"][[5, 7]].tolist() == [2, 1] and t["colour"][0] == 0 and t["fg"].sum() == 3
    # Patch 5 has its centre at (42, 42); the square spans x 28-84, y 28-56: distances in patches.
    assert t["box"][5].tolist() == pytest.approx([0.5, 0.5, 1.5, 0.5])
    assert t["box"][6].tolist() == pytest.approx([1.5, 0.5, 0.5, 0.5])
    assert t["box"][0].tolist() == [0, 0, 0, 0]
    # Sub-cells of 7 px: the square fills patches 5 and 6; the star covers 6 of the 7 columns of sub-cell 0 of
    # each row of patch 7.
    assert t["mask"][5].tolist() == [1.0] * 16 and t["mask"][0].tolist() == [0.0] * 16
    assert t["mask"][7].reshape(4, 4)[:, 0].tolist() == pytest.approx([6 / 7] * 4)
    assert t["mask"][7].reshape(4, 4)[:, 1:].max() == 0
    assert t["owner"].tolist() == [-1] * 5 + [0, 0, 1] + [-1] * 8
    assert t["patches"] == [[5, 6], [7]]
    # One object of each kind: every foreground patch counts 1, background 0.
    assert t["count"].tolist() == [0] * 5 + [1, 1, 1] + [0] * 8
    # Box centres: the square's (56, 42) lies in patch 6, the star's (87, 42) in patch 7.
    sq, st = SHAPES.index("square") + 1, SHAPES.index("star") + 1
    assert t["centre"].tolist() == [0] * 6 + [sq, st] + [0] * 8

    # A second square, hidden under the first (it owns no patch), still counts: the OVD answer counts every
    # object of the kind in the scene, so each patch of either kind says how many the answer states.
    hidden = np.zeros((112, 112), dtype=bool)
    hidden[30:40, 30:40] = True
    scene = Scene(Image.new("RGB", (112, 112)), (*scene.objects, _object("square", hidden, "small")), "noise")
    t = cell_targets(scene, (4, 4))
    assert t["count"].tolist() == [0] * 5 + [2, 2, 1] + [0] * 8
    assert t["centre"].tolist() == [0] * 5 + [sq, sq, st] + [0] * 8  # the hidden square's centre: (35, 35)


@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl"])
def test_cell_targets_follow_the_processor_grid_and_the_foreground_rule(backbone):
    """A 120 x 180 scene on the processor's grid of the base (28-px cells: 6 x 4; Qwen3-VL's 32-px cells:
    6 x 4 of 192 x 128 px): each object's patches are exactly the project's foreground patches there."""
    from padt.backbones import get_backbone

    base = get_backbone(backbone)
    geometry = base.geometry
    for seed in range(5):
        scene = make_scene(np.random.default_rng(seed), width=120, height=180, max_objects=6)
        grid = geometry.vrt_grid(180, 120, base.min_pixels, base.max_pixels)
        assert grid == (6, 4)
        t = cell_targets(scene, grid, geometry)
        assert len(t["shape"]) == grid[0] * grid[1]
        for obj, patches in zip(scene.objects, t["patches"], strict=True):
            assert patches == foreground_patches(obj.mask, grid, geometry=geometry)
        owned = t["owner"] >= 0
        assert owned.tolist() == t["fg"].tolist()
        for j in np.flatnonzero(owned):  # a patch is labelled with an object whose foreground patch it is
            obj = scene.objects[t["owner"][j]]
            assert j in t["patches"][t["owner"][j]] and t["shape"][j] == SHAPES.index(obj.shape) + 1


class _Constant(torch.nn.Module):
    """Heads that give every patch the same class per head (the other heads' outputs are zeros)."""

    def __init__(self, classes: dict[str, int]) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.classes = classes
        self.heads = self._heads

    def features(self, pixel_values, image_grid_thw):
        return torch.zeros(int(image_grid_thw.prod(-1).sum()) // 4, 4)

    def _heads(self, f):
        out = {name: torch.zeros(len(f), width) for name, width in HEADS.items()}
        for name, k in self.classes.items():
            out[name][:, k] = 1.0
        return out


def test_count_and_centre_metrics_by_hand():
    """The by-hand scene with a hidden second square: foreground patches 5, 6 (square, count 2) and 7 (star,
    count 1); centres in patches 5, 6 (squares) and 7 (star)."""
    square = np.zeros((112, 112), dtype=bool)
    square[28:56, 28:84] = True
    star = np.zeros((112, 112), dtype=bool)
    star[28:56, 84:90] = True
    hidden = np.zeros((112, 112), dtype=bool)
    hidden[30:40, 30:40] = True
    scene = Scene(
        Image.new("RGB", (112, 112)),
        (_object("square", square), _object("star", star, "small"), _object("square", hidden, "small")),
        "noise",
    )
    scenes = PretrainScenes(tiny_processor(max_pixels=PIXELS).image_processor, [scene])
    sq = SHAPES.index("square") + 1
    m = evaluate_vision(_Constant({"count": 1, "centre": sq}), scenes)
    assert m["count"] == pytest.approx(1 / 3) and m["count_several"] == 0.0
    assert m["centre"] == pytest.approx(2 / 3) and m["centre_false"] == 1.0  # the 13 other patches marked
    m = evaluate_vision(_Constant({"count": 2, "centre": 0}), scenes)
    assert m["count"] == pytest.approx(2 / 3) and m["count_several"] == 1.0
    assert m["centre"] == 0.0 and m["centre_false"] == 0.0


def test_collate_lists_each_objects_patches_with_batch_wide_indices():
    processor = tiny_processor(max_pixels=PIXELS).image_processor
    scenes = PretrainScenes.generate(processor, n=3, seed=5, min_size=112, max_size=112, progress=False)
    batch = collate(scenes.items)
    objects = batch["objects"]
    assert batch["pixel_values"].shape[0] == 3 * 64 and batch["targets"]["shape"].shape == (3 * 16,)
    expected_cells, expected_owner, shapes = [], [], []
    for s, item in enumerate(scenes.items):
        for (shape, _, _), patches in item["objects"]:
            expected_cells += [16 * s + p for p in patches]
            expected_owner += [len(shapes)] * len(patches)
            shapes.append(shape)
    assert objects["cell"].tolist() == expected_cells and objects["object"].tolist() == expected_owner
    assert objects["shape"].tolist() == shapes and len(shapes) > 3
    # Patches shared by two objects are listed for both.
    assert len(expected_cells) >= int(batch["targets"]["fg"].sum())


# ------------------------------------------------------------------------------------------------ learning
def test_a_few_seconds_of_vision_pretraining_teach_the_tower():
    """Stage 1 alone on a tiny tower, for seconds: the per-patch heads learn what one patch shows (colour) far
    above the untrained tower. (Shape takes minutes: see test_bundled's probe of the shipped stage-1 tower.)"""
    torch.manual_seed(0)
    model, processor = _build({"tiny": TINY}, {"max_pixels": PIXELS})
    for name, param in model.named_parameters():
        param.requires_grad_(model.component_of(name) == "vision")
    wrapper = VisionPretrainModel(model, {"object": 1.0})
    scene_args = {"min_size": 112, "max_size": 112, "max_objects": 2}
    train = PretrainScenes.generate(processor.image_processor, n=160, seed=1, progress=False, **scene_args)
    held_out = PretrainScenes.generate(processor.image_processor, n=60, seed=2, progress=False, **scene_args)
    before = evaluate_vision(wrapper, held_out)
    optimizer = torch.optim.AdamW([p for p in wrapper.parameters() if p.requires_grad], lr=2e-3)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(STEPS):
        batch = collate([train[int(i)] for i in rng.integers(len(train), size=16)])
        loss = wrapper(**batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    after = evaluate_vision(wrapper, held_out)
    assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:20]), losses
    assert after["colour"] > before["colour"] + 0.4, (before, after)
    assert after["background"] > 0.9 and after["mask_iou"] > before["mask_iou"] + 0.2, (before, after)


STEPS = 80


# ------------------------------------------------------------------------------------------------ stages
def _recipe(tmp_path: Path) -> Path:
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "model": {"tiny": TINY},
        "processor": {"max_pixels": PIXELS},
        "seed": 0,
        "stages": {
            "vision": {
                "kind": "vision",
                "data": {"synthetic": {"n": 8, "seed": 3, "min_size": 112, "max_size": 112}},
                "vision": {"eval_scenes": 6, "loss_weights": {"object": 1.0}},
                "training": {"max_steps": 2, "per_device_train_batch_size": 4},
            },
            "padt": {
                "model": {"vision_from": "vision"},
                "data": {"synthetic": {"task": "all", "n": 6, "seed": 4, "min_size": 112, "max_size": 112}},
                "padt": {"warmup_steps": 1},
                "training": {"max_steps": 2, "per_device_train_batch_size": 2},
                "generation": {"vrt_repeat_penalty": 3.0},
            },
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


COMMON = [
    "training.report_to=[]",
    "training.disable_tqdm=true",
    "training.save_steps=1",
    "training.logging_steps=1",
]


def test_stage_overrides_and_references(tmp_path):
    recipe = _recipe(tmp_path)
    root, stages = resolve_stages(
        recipe,
        ["training.max_steps=5", "stages.padt.training.learning_rate=3e-4", "output_dir=elsewhere", "seed=9"],
    )
    assert root == Path("elsewhere")
    (name1, kind1, vision), (name2, kind2, padt) = stages
    assert (name1, kind1, name2, kind2) == ("vision", "vision", "padt", "padt")
    assert vision.training.max_steps == padt.training.max_steps == 5  # everywhere
    assert padt.training.learning_rate == pytest.approx(3e-4) and vision.training.learning_rate != 3e-4
    assert vision.training.output_dir == "elsewhere/vision" and padt.model.vision_from == "elsewhere/vision"
    assert padt.model.tiny == vision.model.tiny and padt.model.tiny.hidden_size == TINY["hidden_size"]
    assert vision.seed == padt.seed == 9  # shared sections, overridden
    with pytest.raises(PaDTError, match=r"stages\.NAME"):
        resolve_stages(recipe, ["stages.nope.training.max_steps=1"])
    with pytest.raises(PaDTError, match=r"override 'seed\.x=1': 'seed' is not a section"):
        resolve_stages(recipe, ["seed.x=1"])
    # Every stage is checked against its kind's schema before any runs: a typo names the stage and the key.
    with pytest.raises(
        PaDTError,
        match=r"stages\.vision: unknown key 'vision\.loss_weight'; did you mean 'vision\.loss_weights'",
    ):
        resolve_stages(recipe, ["stages.vision.vision.loss_weight={object: 1}"])
    with pytest.raises(PaDTError, match=r"stages\.vision: vision\.loss_weights: unknown loss term 'objects'"):
        resolve_stages(recipe, ["stages.vision.vision.loss_weights={objects: 1}"])
    raw = yaml.safe_load(recipe.read_text())
    # A stage that continues an earlier stage's model names it in model.path; the shared tiny spec is dropped.
    raw["stages"]["tune"] = {
        "model": {"path": "padt"},
        "components": {"vision": "train"},
        "data": raw["stages"]["padt"]["data"],
        "training": {"max_steps": 1},
    }
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    _, stages = resolve_stages(recipe)
    tune = stages[2][2]
    assert tune.model.path == str(tmp_path / "run" / "padt") and tune.model.tiny is None
    assert tune.components.vision == "train"
    # data.synthetic.out may name an earlier stage: the dataset that stage generated is read again (also in a
    # list); a folder stays a folder, and a later stage is refused.
    spec = raw["stages"]["padt"]["data"]["synthetic"]
    raw["stages"]["tune"]["data"] = {"synthetic": [spec | {"out": "padt"}, spec | {"seed": 5, "out": "mine"}]}
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    tune = resolve_stages(recipe)[1][2][2]
    assert [d.out for d in tune.data.synthetic_datasets()] == [
        str(tmp_path / "run" / "padt" / "data"),
        "mine",
    ]
    raw["stages"]["padt"]["data"] = {"synthetic": spec | {"out": "tune"}}
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(
        PaDTError, match=r"stages\.padt\.data\.synthetic\.out names stage 'tune', which runs later"
    ):
        resolve_stages(recipe)
    raw["stages"]["padt"]["data"] = {"synthetic": spec}
    del raw["stages"]["tune"]
    raw["stages"] = {"padt": raw["stages"]["padt"], "vision": raw["stages"]["vision"]}
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(PaDTError, match="runs later"):
        resolve_stages(recipe)
    raw["stages"] = {"vision": raw["stages"]["vision"] | {"kind": "language"}, "padt": raw["stages"]["padt"]}
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(PaDTError, match="kind must be one of"):
        resolve_stages(recipe)


def test_one_command_runs_resumes_and_skips_stages(tmp_path, capsys):
    recipe = _recipe(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--config", str(recipe), *COMMON]) == 0
    out = capsys.readouterr().out
    assert "stage 1/2 'vision' (vision pretraining)" in out and "stage 2/2 'padt' (PaDT training)" in out
    vision, padt = run / "vision", run / "padt"
    summary = json.loads((vision / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and {"shape", "colour", "probe"} <= set(summary["held_out"])
    assert (vision / "vision_heads.safetensors").is_file()
    times = json.loads((run / "stages.json").read_text())
    assert list(times) == ["vision", "padt"] and all(
        t["seconds"] > 0 and t["runs"] == 1 for t in times.values()
    )
    # The PaDT stage's resolved config is a plain padt train config naming the vision stage's folder.
    stage = yaml.safe_load((padt / "stage_config.yaml").read_text())
    assert stage["model"]["vision_from"] == str(vision) and "kind" not in stage

    # Rerunning skips both finished stages and trains nothing.
    assert main(["train", "--config", str(recipe), *COMMON]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 2 and json.loads((run / "stages.json").read_text()) == times

    # An unfinished PaDT stage resumes at its checkpoint: drop the final summary, keep checkpoint-1.
    (padt / "train_summary.json").unlink()
    shutil.rmtree(padt / "checkpoint-2")
    assert main(["train", "--config", str(recipe), *COMMON]) == 0
    out = capsys.readouterr().out
    assert "'vision' (vision pretraining): finished earlier" in out and "resuming from" in out
    assert json.loads((padt / "train_summary.json").read_text())["global_step"] == 2
    assert json.loads((run / "stages.json").read_text())["padt"]["runs"] == 2

    # A stage file written before an option existed (the option at its default) still matches: drop one such
    # option from the PaDT stage's file, as an earlier padt wrote it; the rerun skips both stages.
    text = (padt / "stage_config.yaml").read_text()
    assert "  count_token_weight: 1.0\n" in text
    (padt / "stage_config.yaml").write_text(text.replace("  count_token_weight: 1.0\n", ""))
    assert main(["train", "--config", str(recipe), *COMMON]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 2
    # Set to something else, the same option is a difference.
    assert main(["train", "--config", str(recipe), *COMMON, "stages.padt.padt.count_token_weight=2"]) == 2
    assert "stage 'padt':" in (err := capsys.readouterr().err) and "trained with another config" in err

    # A finished stage trained with another config is refused, not silently reused.
    assert main(["train", "--config", str(recipe), *COMMON, "stages.vision.training.learning_rate=0.1"]) == 2
    assert "trained with another config" in capsys.readouterr().err

    # Decoding settings are not training: changed, the finished stage is kept and its model takes them.
    times = json.loads((run / "stages.json").read_text())
    assert (
        main(["train", "--config", str(recipe), *COMMON, "stages.padt.generation.vrt_repeat_penalty=5"]) == 0
    )
    out = capsys.readouterr().out
    assert "'padt' (PaDT training): generation settings changed" in out and out.count("finished earlier") == 2
    assert json.loads((padt / "generation_config.json").read_text())["vrt_repeat_penalty"] == 5.0
    assert yaml.safe_load((padt / "stage_config.yaml").read_text())["generation"]["vrt_repeat_penalty"] == 5.0
    assert json.loads((run / "stages.json").read_text()) == times


def test_vision_from_copies_only_the_vision_component(tmp_path):
    source, _ = _build({"tiny": TINY | {"seed": 1}})
    source.save_pretrained(tmp_path / "vision")
    fresh, _ = _build({"tiny": TINY})
    loaded, _ = _build({"tiny": TINY, "vision_from": str(tmp_path / "vision")})
    theirs, before, after = source.state_dict(), fresh.state_dict(), loaded.state_dict()
    vision = [k for k in after if loaded.component_of(k) == "vision"]
    assert any(k.startswith("image_position.") for k in vision) and len(vision) > 10
    for key, value in after.items():
        expected = theirs[key] if loaded.component_of(key) == "vision" else before[key]
        assert torch.equal(value, expected), key
    assert not torch.equal(
        theirs["model.visual.patch_embed.proj.weight"], before["model.visual.patch_embed.proj.weight"]
    )

    with pytest.raises(PaDTError, match="not a folder"):
        load_vision_from(fresh, tmp_path / "missing")
    wide, _ = _build({"tiny": TINY | {"vision_hidden_size": 32}})
    with pytest.raises(PaDTError, match="does not match"):
        load_vision_from(wide, tmp_path / "vision")


def test_average_checkpoints_by_hand(tmp_path):
    from safetensors.torch import load_file

    from padt.modeling import PaDTForConditionalGeneration
    from padt.training.average import average_checkpoints

    for seed in (1, 2):
        model, processor = _build({"tiny": TINY | {"seed": seed}})
        model.save_pretrained(tmp_path / f"m{seed}")
        processor.save_pretrained(tmp_path / f"m{seed}")
    out = average_checkpoints([tmp_path / "m1", tmp_path / "m2"], tmp_path / "avg", [1, 3])
    a, b, avg = (load_file(tmp_path / name / "model.safetensors") for name in ("m1", "m2", "avg"))
    assert set(avg) == set(a) and len(avg) > 50
    differ = 0
    for key, value in avg.items():
        assert value.dtype == a[key].dtype, key
        torch.testing.assert_close(value, 0.25 * a[key] + 0.75 * b[key], rtol=1e-6, atol=1e-7)
        differ += not torch.equal(a[key], b[key])
    assert differ > 10  # the two seeds are different models
    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "m1" / "tokenizer.json").read_bytes()
    # It loads as a model whose every parameter is the weighted mean of the two models' parameters.
    states = [
        PaDTForConditionalGeneration.from_pretrained(tmp_path / f).state_dict() for f in ("m1", "m2", "avg")
    ]
    for key, value in states[2].items():
        torch.testing.assert_close(value, 0.25 * states[0][key] + 0.75 * states[1][key], rtol=1e-6, atol=1e-7)
    # The plain mean when no weights are given; a model saved in another dtype is the same architecture, and the
    # average keeps the first model's dtype.
    half = PaDTForConditionalGeneration.from_pretrained(tmp_path / "m2").to(torch.bfloat16)
    half.save_pretrained(tmp_path / "m2_bf16")
    average_checkpoints([tmp_path / "m1", tmp_path / "m2_bf16"], tmp_path / "mean")
    for key, value in load_file(tmp_path / "mean" / "model.safetensors").items():
        assert value.dtype == a[key].dtype
        torch.testing.assert_close(value, 0.5 * (a[key] + b[key].bfloat16().float()))

    wide, processor = _build({"tiny": TINY | {"hidden_size": 32}})
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(PaDTError, match="different architectures"):
        average_checkpoints([tmp_path / "m1", tmp_path / "wide"], tmp_path / "bad")
    with pytest.raises(PaDTError, match="one positive weight per model"):
        average_checkpoints([tmp_path / "m1", tmp_path / "m2"], tmp_path / "bad", [1])
    with pytest.raises(PaDTError, match="model folder not found"):
        average_checkpoints([tmp_path / "m1", tmp_path / "nope"], tmp_path / "bad")
    with pytest.raises(PaDTError, match="one of the models being averaged"):
        average_checkpoints([tmp_path / "m1", tmp_path / "m2"], tmp_path / "m2")
    (tmp_path / "m2" / "model.safetensors").write_bytes(b"")
    with pytest.raises(PaDTError, match="empty or cut short"):
        average_checkpoints([tmp_path / "m1", tmp_path / "m2"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_a_recipe_averages_its_stages(tmp_path, capsys):
    from safetensors.torch import load_file

    raw = yaml.safe_load(_recipe(tmp_path).read_text())
    padt = raw["stages"]["padt"]
    raw["stages"] = {
        "padt": padt | {"model": {}},
        "tune": {"model": {"path": "padt"}, "data": padt["data"], "training": {"max_steps": 1}},
        "soup": {"kind": "average", "average": {"models": ["padt", "tune"], "weights": [1, 1]}},
        "again": {
            "model": {"path": "soup"},
            "data": padt["data"],
            "training": {"max_steps": 1, "learning_rate": 1.0e-7},
        },
    }
    recipe = tmp_path / "soup.yaml"
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    # The shared sections and the overrides of every stage do not reach the averaging stage.
    root, stages = resolve_stages(recipe, ["training.max_steps=2", "seed=3"])
    soup = stages[2][2]
    assert stages[2][1] == "average" and soup.average.models == [str(root / "padt"), str(root / "tune")]
    assert soup.training.output_dir == str(root / "soup")
    assert stages[3][2].model.path == str(root / "soup")  # a stage goes on from an average
    bad = tmp_path / "bad.yaml"
    raw["stages"]["soup"]["average"]["weights"] = [1]
    bad.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(PaDTError, match=r"stages\.soup: .*weights has 1 entries for 2 models"):
        resolve_stages(bad)
    raw["stages"] = {"soup": raw["stages"]["soup"], **{k: v for k, v in raw["stages"].items() if k != "soup"}}
    bad.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(PaDTError, match=r"average\.models names stage 'padt', which runs later"):
        resolve_stages(bad)

    assert main(["train", "--config", str(recipe), *COMMON]) == 0
    assert "stage 3/4 'soup' (weight averaging)" in capsys.readouterr().out
    run = tmp_path / "run"
    a, b, avg = (load_file(run / name / "model.safetensors") for name in ("padt", "tune", "soup"))
    assert sum(not torch.equal(a[k], b[k]) for k in a) > 10
    for key in avg:
        torch.testing.assert_close(avg[key], 0.5 * (a[key] + b[key]))
    summary = json.loads((run / "soup" / "train_summary.json").read_text())
    assert summary["models"] == [str(run / "padt"), str(run / "tune")] and summary["weights"] == [0.5, 0.5]
    assert yaml.safe_load((run / "soup" / "stage_config.yaml").read_text())["kind"] == "average"
    assert json.loads((run / "soup" / "generation_config.json").read_text())["vrt_repeat_penalty"] == 3.0
    # the stage after the average starts from its weights (one tiny step away from them, far from stage 1's)
    again = load_file(run / "again" / "model.safetensors")
    near, far = (sum(float((again[k].float() - m[k].float()).abs().sum()) for k in again) for m in (avg, a))
    assert 0 < near < far / 10
    assert main(["train", "--config", str(recipe), *COMMON]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 4


def test_growing_keeps_what_the_model_computes_and_gives_it_room(tmp_path):
    from padt.modeling import PaDTForConditionalGeneration
    from padt.training.grow import grow_checkpoint

    model, processor = _build({"tiny": TINY | {"seed": 5}})
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    grow_checkpoint(
        tmp_path / "m",
        tmp_path / "g",
        intermediate_size=320,
        insert_after=[0, 1],
        vision_intermediate_size=300,
        seed=1,
    )
    small = PaDTForConditionalGeneration.from_pretrained(tmp_path / "m")
    big = PaDTForConditionalGeneration.from_pretrained(tmp_path / "g")
    text = big.config.text_config
    layers = small.config.text_config.num_hidden_layers
    assert (text.num_hidden_layers, text.intermediate_size) == (layers + 2, 320)
    assert len(text.layer_types) == layers + 2
    assert big.config.vision_config.intermediate_size == 300
    assert {block.mlp.down_proj.in_features for block in big.model.visual.blocks} == {300}
    assert [layer.self_attn.layer_idx for layer in big.model.language_model.layers] == list(range(layers + 2))
    assert sum(p.numel() for p in big.parameters()) > sum(p.numel() for p in small.parameters())
    assert (tmp_path / "g" / "tokenizer.json").read_bytes() == (
        tmp_path / "m" / "tokenizer.json"
    ).read_bytes()

    # One image of 8 x 8 patches (16 VRT cells), then text: the same logits, VRT logits and decoder output.
    config = small.config
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor(
        [
            [config.vision_start_token_id]
            + [config.image_token_id] * 16
            + [config.vision_end_token_id]
            + torch.randint(10, 200, (6,), generator=g).tolist()
        ]
    )
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(64, 3 * 2 * 14 * 14, generator=g),
        "image_grid_thw": torch.tensor([[1, 8, 8]]),
    }
    with torch.no_grad():
        before, after = small(**batch), big(**batch)
    assert (
        before.logits.shape == after.logits.shape and before.logits.shape[-1] > config.text_config.vocab_size
    )
    torch.testing.assert_close(after.logits, before.logits, rtol=1e-4, atol=1e-5)

    # Every new weight gets a gradient: the inserted layers learn from the first step, the new MLP units as
    # soon as their output weights move.
    big(**batch).logits.square().mean().backward()
    new = big.model.language_model.layers[1]  # inserted after layer 0
    assert not new.self_attn.o_proj.weight.detach().any()
    assert float(new.self_attn.o_proj.weight.grad.abs().max()) > 0
    assert float(new.mlp.down_proj.weight.grad.abs().max()) > 0
    first = big.model.language_model.layers[0].mlp.down_proj
    assert not first.weight.detach()[:, -64:].any() and float(first.weight.grad[:, -64:].abs().max()) > 0
    tower = big.model.visual.blocks[0].mlp.down_proj
    assert not tower.weight.detach()[:, -20:].any() and float(tower.weight.grad[:, -20:].abs().max()) > 0

    with pytest.raises(PaDTError, match=r"insert_after \[9\] names no layer"):
        grow_checkpoint(tmp_path / "m", tmp_path / "bad", insert_after=[9])
    with pytest.raises(PaDTError, match="is below the model's"):
        grow_checkpoint(tmp_path / "m", tmp_path / "bad", intermediate_size=8)
    with pytest.raises(PaDTError, match="vision_intermediate_size 8 is below the model's"):
        grow_checkpoint(tmp_path / "m", tmp_path / "bad", vision_intermediate_size=8)
    with pytest.raises(PaDTError, match="model folder not found"):
        grow_checkpoint(tmp_path / "nope", tmp_path / "bad", insert_after=[0])
    assert not (tmp_path / "bad").exists()


def test_a_recipe_grows_a_stage_and_trains_on(tmp_path, capsys):
    raw = yaml.safe_load(_recipe(tmp_path).read_text())
    padt = raw["stages"]["padt"]
    raw["stages"] = {
        "padt": padt | {"model": {}},
        "grown": {"kind": "grow", "grow": {"model": "padt", "intermediate_size": 320, "insert_after": [1]}},
        "again": {"model": {"path": "grown"}, "data": padt["data"], "training": {"max_steps": 1}},
    }
    recipe = tmp_path / "grow.yaml"
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    root, stages = resolve_stages(recipe, ["training.max_steps=2", "seed=3"])
    assert stages[1][1] == "grow" and stages[1][2].grow.model == str(root / "padt")
    assert stages[2][2].model.path == str(root / "grown")
    bad = tmp_path / "bad.yaml"
    raw["stages"]["grown"]["grow"] = {"model": "padt"}
    bad.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(PaDTError, match="otherwise nothing grows"):
        resolve_stages(bad)
    raw["stages"]["grown"]["grow"] = {"model": "again", "insert_after": [0]}
    bad.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(PaDTError, match=r"stages\.grown\.grow\.model names stage 'again', which runs later"):
        resolve_stages(bad)

    assert main(["train", "--config", str(recipe), *COMMON]) == 0
    assert "stage 2/3 'grown' (growing the model)" in capsys.readouterr().out
    run = tmp_path / "run"
    summary = json.loads((run / "grown" / "train_summary.json").read_text())
    assert summary["num_hidden_layers"][1] == summary["num_hidden_layers"][0] + 1
    assert summary["intermediate_size"][1] == 320
    trained = json.loads((run / "again" / "config.json").read_text())["text_config"]
    assert trained["intermediate_size"] == 320  # the next stage trains the grown model
    assert main(["train", "--config", str(recipe), *COMMON]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 3
