"""Training (docs/method.md §8): config, the collator and per-step loss, resume, LoRA, two processes, overfitting.

Everything runs a tiny model on 112-px synthetic scenes with one torch thread (two cores are shared here), so
the whole file takes a couple of minutes on a CPU.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

import padt.training.batch as batch_module
from padt.cli import main
from padt.data.records import read_records
from padt.data.synthetic import expression_form, generate_dataset
from padt.errors import PaDTError
from padt.losses import PaDTCriterion
from padt.modeling import PaDTForConditionalGeneration
from padt.processing import PaDTProcessor
from padt.prompts import ovd_answer_counts
from padt.tiny import tiny_model, tiny_processor
from padt.training.batch import PaDTCollator, StepOptions, build_completions, padt_loss
from padt.training.config import ComponentsSection, load_config
from padt.training.trainer import (
    PaDTTrainer,
    apply_components,
    build_dataset,
    build_model_and_processor,
    build_trainer,
    save_final,
    train,
    training_arguments,
)

REPO = Path(__file__).resolve().parents[1]
PIXELS = 112 * 112  # native size of the scenes: 8x8 patches, a 4x4 VRT grid per image
DECODER_PREFIXES = ("vl_decoder.", "vis_norm.", "vis_proj.")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Eight mixed REC/OVD/RIC scenes."""
    out = tmp_path_factory.mktemp("scenes")
    return generate_dataset("all", 8, 1, out, min_size=112, max_size=112, progress=False).records_path


def make_config(records: Path, out: Path, *overrides: str) -> dict:
    return load_config(
        None,
        [
            "model.tiny={hidden_size: 32}",
            f"processor.max_pixels={PIXELS}",
            f"data.train=[{{records: '{records}'}}]",
            "padt.patches=recompute",
            "padt.warmup_steps=2",
            f"training.output_dir='{out}'",
            "training.per_device_train_batch_size=2",
            "training.learning_rate=1e-3",
            "training.max_steps=2",
            "training.save_strategy=no",
            "training.logging_steps=1",
            "training.report_to=[]",
            "training.disable_tqdm=true",
            *overrides,
        ],
    )


# ------------------------------------------------------------------------------------------------ config
def test_overrides_parse_types_and_nested_keys(tmp_path):
    config = make_config(
        tmp_path / "r.jsonl",
        tmp_path / "run",
        "training.max_steps=100",
        "padt.robust_loss=false",
        "training.learning_rate=3e-5",
        "lora.r=8",
        "training.fsdp_config.min_num_params=5",
        "components.vision=freeze",
        "seed=7",
        "resume=false",
        "training.run_name=my run",
    )
    assert config.training.max_steps == 100
    assert config.padt.robust_loss is False
    assert config.training.learning_rate == pytest.approx(3e-5)  # YAML 1.1 reads 3e-5 as a string
    assert config.lora.model_dump() == {"r": 8, "alpha": 32, "dropout": 0.05}  # merged into the defaults
    assert config.training.fsdp_config == {"min_num_params": 5}
    assert (
        config.model.tiny.hidden_size == 32 and config.model.tiny.num_hidden_layers == 2
    )  # the spec's default
    assert [s.records for s in config.data.train] == [str(tmp_path / "r.jsonl")]
    assert config.components.model_dump() == {"vision": "freeze", "llm": "train", "decoder": "train"}
    assert (config.seed, config.resume, config.training.run_name) == (7, False, "my run")
    # YAML reads `no` as false; the *_strategy fields still get transformers' "no".
    args = training_arguments(
        make_config(tmp_path / "r.jsonl", tmp_path / "run", "training.save_strategy=no")
    )
    assert args.save_strategy == "no"


@pytest.mark.parametrize(
    "override, message",
    [
        ("bogus.key=1", "unknown key 'bogus'; known keys: model, processor, data"),
        ("components.llm=half", "components.llm: Input should be 'train', 'freeze' or 'lora', got 'half'"),
        ("components.audio=train", "unknown key 'components.audio'; known keys: vision, llm, decoder"),
        ("training.output_dir=", "set training.output_dir"),
        ("padt.answer_format=xml", "padt.answer_format: Input should be 'vrt' or 'text', got 'xml'"),
        ("model.dtype=int8", "model.dtype: Input should be 'fp32', 'bf16' or 'fp16', got 'int8'"),
        ("padt.robust_los=true", "unknown key 'padt.robust_los'; did you mean 'padt.robust_loss'?"),
        ("lora.rr=4", "unknown key 'lora.rr'; did you mean 'lora.r'?"),
        (
            "processor.max_pixel=100",
            "unknown key 'processor.max_pixel'; did you mean 'processor.max_pixels'?",
        ),
        ("training.max_steps=abc", "training.max_steps: Input should be a valid integer"),
        ("training.learning_rate=-1", "training.learning_rate must be > 0, got -1.0"),
        ("training.warmup_steps=-3", "training.warmup_steps must be >= 0, got -3"),
        (
            "training.leaning_rate=1",
            "not a transformers TrainingArguments field; did you mean 'training.learning_rate'?",
        ),
        ("padt.robust_loss=maybe", "padt.robust_loss: Input should be a valid boolean"),
        ("padt.vrts_per_object=0", "padt.vrts_per_object: must be a positive number of VRTs, or -1"),
        ("padt.count_token_weight=-2", "padt.count_token_weight: Input should be greater than or equal to 0"),
        (
            "padt={answer_format: text, count_token_weight: 3}",
            "count_token_weight weighs the counts of VRT answers; text answers write box coordinates",
        ),
        ("padt.loss_weights={loss_tokn: 1}", "unknown loss term 'loss_tokn'; did you mean 'loss_token'?"),
        ("generation.vrt_repeat_penalty=-1", "vrt_repeat_penalty must be a number >= 0"),
        ("generation.vrt_reuse_penalty=no", "vrt_reuse_penalty must be a number >= 0"),
        ("generation.mask_box_weight=1.5", "mask_box_weight must be a number from 0"),
        ("generation.ovd_end_penalty=-1", "ovd_end_penalty must be a number >= 0"),
        ("generation.ovd_duplicate_iou=2", "ovd_duplicate_iou must be a number from 0"),
        ("generation.ovd_grammar=1", "ovd_grammar must be true or false"),
        ("resume=maybe", "resume: Input should be 'auto', True or False, got 'maybe'"),
        (
            "data.synthetic={n: 3, form_weights: {extremes: 1}}",
            "form_weights.extremes.[key]: Input should be 'attribute', 'extreme' or 'relation', got 'extremes'",
        ),
        (
            "data.synthetic={n: 3, tsk: ovd}",
            "unknown key 'data.synthetic.tsk'; did you mean 'data.synthetic.task'?",
        ),
        (
            "data.synthetic=[{n: 3}, {n: 2, tsk: ovd}]",
            "unknown key 'data.synthetic[1].tsk'; did you mean 'data.synthetic[1].task'?",
        ),
        ("data.synthetic=[{n: 3}, {n: 0}]", "data.synthetic[1].n: Input should be greater than 0, got 0"),
        (
            "data.synthetic=[{n: 3, out: d}, {n: 2, out: d}]",
            "two data.synthetic datasets share one `out` folder; give each its own",
        ),
    ],
)
def test_config_errors_are_one_line(tmp_path, override, message):
    with pytest.raises(PaDTError) as info:
        make_config(tmp_path / "r.jsonl", tmp_path / "run", override)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_print_config_and_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main() rewrites sys.argv
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{tiny: {{hidden_size: 32}}}}\ndata: {{train: [{{records: {tmp_path}/r.jsonl}}]}}\n"
        "training: {output_dir: runs/x, max_steps: 5}\n"
    )
    assert (
        main(
            [
                "train",
                "--config",
                str(config),
                "--print-config",
                "--max-steps",
                "9",
                "--output-dir",
                str(tmp_path / "o"),
                "padt.vrts_per_object=3",
                "--no-resume",
            ]
        )
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    # The resolved config shows PaDT's training defaults next to what was set.
    assert printed["training"]["output_dir"] == str(tmp_path / "o") and printed["training"]["max_steps"] == 9
    assert printed["training"]["learning_rate"] == 2e-5 and printed["training"]["save_steps"] == 100
    assert printed["padt"]["vrts_per_object"] == 3 and printed["resume"] is False

    for argv, message in [
        (["train", "--config", str(tmp_path / "none.yaml")], "config file not found"),
        (["train", "--config", str(config), "padt.robust_loss"], "cannot read override 'padt.robust_loss'"),
        (["train", "--config", str(config), "components.llm=maybe"], "components.llm: Input should be"),
        (["train", "--config", str(config)], "training records not found"),
        (["train", "--config", str(config), "training.no_such_field=1"], "training.no_such_field is not a"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("padt: error: ") and message in err, err


# ------------------------------------------------------------------------------------- collator and loss
class RecordingCriterion(PaDTCriterion):
    """The criterion, remembering the outputs and targets padt_loss gave it."""

    def __call__(self, outputs, targets):
        self.outputs, self.targets = outputs, targets
        return super().__call__(outputs, targets)


@pytest.fixture(scope="module")
def step_batch(scenes, tmp_path_factory):
    """A random tiny model (informative prototypes) and a collated batch of four scenes."""
    model = tiny_model(seed=0, hidden_size=32).train()
    processor = PaDTProcessor(tiny_processor(max_pixels=PIXELS), model.vocab_size)
    dataset = build_dataset(make_config(scenes, tmp_path_factory.mktemp("unused")), Path("unused"))
    collator = PaDTCollator(processor, patches="recompute")
    return model, processor, dataset, collator([dataset[i] for i in range(4)])


def test_completions_draw_vrts_from_each_objects_foreground(step_batch):
    model, processor, dataset, inputs = step_batch
    extra = inputs["targets"]
    assert extra.indices == [0, 1, 2, 3]
    objects = [o for sample in extra.objects for o in sample]
    assert len(objects) > 4  # OVD scenes hold several objects
    # At native resolution the recomputed foreground patches are the record's own lists.
    assert [o.patches for o in objects] == [list(o.patches) for r in extra.records for o in r.objects]
    for vrts in (5, 3, -1):
        texts, runs = build_completions(extra, np.random.default_rng(0), StepOptions(vrts_per_object=vrts))
        for text, sample_runs, sample_objects in zip(texts, runs, extra.objects):
            assert text.endswith("<|im_end|>") and "<|Obj_" not in text
            assert len(re.findall(r"<\|VRT_\d+\|>", text)) == sum(len(run) for run in sample_runs)
            for run, obj in zip(sample_runs, sample_objects):
                local = [v - obj.local_offset for v in run]
                assert set(local) <= set(obj.patches)
                if vrts < 0:
                    assert local == sorted(obj.patches)
                else:
                    assert len(run) == vrts
                    if len(obj.patches) >= vrts:
                        assert len(set(local)) == vrts  # without replacement when there are enough
    # Fresh draws: another generator, other VRTs.
    first = build_completions(extra, np.random.default_rng(0), StepOptions())[0]
    assert build_completions(extra, np.random.default_rng(0), StepOptions())[0] == first
    assert build_completions(extra, np.random.default_rng(1), StepOptions())[0] != first


def test_stored_patch_lists_are_used_only_on_the_grid_they_were_computed_for(step_batch):
    model, _, dataset, _ = step_batch
    items = [dataset[i] for i in range(4)]
    native = PaDTProcessor(tiny_processor(max_pixels=PIXELS), model.vocab_size)
    stored = [list(o.patches) for _, r, _ in items for o in r.objects]

    def lists(processor, mode):
        extra = PaDTCollator(processor, patches=mode)(items)["targets"]
        return [o.patches for sample in extra.objects for o in sample], extra.objects[0][0].grid_cols

    # On the native grid every mode gives the records' own lists.
    for mode in ("record", "auto", "recompute"):
        assert lists(native, mode) == (stored, 4)
    # Scenes enlarged by the processor (112 -> 224 px a side): an 8x8 grid, on which the stored 4x4 lists would
    # name the wrong cells. `record` refuses, `auto` recomputes them on the 8x8 grid.
    enlarged = PaDTProcessor(tiny_processor(min_pixels=4 * PIXELS, max_pixels=4 * PIXELS), model.vocab_size)
    with pytest.raises(
        PaDTError,
        match=r"stored patch list is for a 4x4 VRT grid but the processor puts this "
        r"image on 8x8 .*use padt.patches: recompute or auto",
    ):
        PaDTCollator(enlarged, patches="record")(items)
    auto, cols = lists(enlarged, "auto")
    assert cols == 8 and auto == lists(enlarged, "recompute")[0] and auto != stored
    for big, small in zip(auto, stored):  # each native cell of an object holds some of its enlarged cells
        assert {(p // 8 // 2) * 4 + p % 8 // 2 for p in big} >= set(small) and len(big) >= len(small)
    # Another base's cells (32 px): its grid for these scenes is the same 4x4 (128 px -> 4 cells), but the
    # stored lists are for 28-px cells, so `record` refuses and `auto` recomputes with 32-px cells.
    qwen3 = PaDTProcessor(tiny_processor(max_pixels=128 * 128, backbone="qwen3_vl"), model.vocab_size)
    with pytest.raises(PaDTError, match=r"stored patch list is for 28-px cells but the model's are 32 px"):
        PaDTCollator(qwen3, patches="record")(items)
    assert lists(qwen3, "auto") == lists(qwen3, "recompute")


def test_vrt_targets_carry_their_objects_foreground_sets(step_batch):
    model, processor, _, inputs = step_batch
    vocab = model.vocab_size
    extra = inputs["targets"]
    criterion = RecordingCriterion()
    terms = padt_loss(model, processor, inputs, np.random.default_rng(0), criterion=criterion)
    assert {
        "loss",
        "loss_token",
        "loss_bbox_l1",
        "loss_bbox_giou",
        "loss_score",
        "loss_mask_dice",
        "loss_mask_focal",
    } <= set(terms)
    targets, sets = criterion.targets.tokens, criterion.targets.foreground_sets
    vrt_targets = targets[targets >= vocab]  # row-major: (sample, object, pick)
    objects = [o for sample in extra.objects for o in sample]
    assert vrt_targets.numel() == len(sets) == 5 * len(objects)
    offsets = extra.layout.image_global_offset.tolist()
    for k, (target, fg) in enumerate(zip(vrt_targets.tolist(), sets)):
        obj = objects[k // 5]
        expected = {vocab + offsets[obj.image] + p for p in obj.patches}
        assert set(fg.tolist()) == expected and target in expected
    torch.testing.assert_close(criterion.targets.boxes, torch.tensor([o.bbox for o in objects]))
    assert criterion.outputs.decoded.pred_boxes.shape == (len(objects), 4)


def test_plain_loss_is_cross_entropy_and_robust_loss_is_lower(step_batch):
    model, processor, _, inputs = step_batch
    vocab = model.vocab_size
    plain = RecordingCriterion()
    terms = padt_loss(
        model,
        processor,
        inputs,
        np.random.default_rng(0),
        criterion=plain,
        options=StepOptions(robust_loss=False),
    )
    targets, logits, mask = plain.targets.tokens, plain.outputs.logits, plain.targets.completion_mask
    assert [s.tolist() for s in plain.targets.foreground_sets] == [
        [t] for t in targets[targets >= vocab].tolist()
    ]
    per_sample = [
        F.cross_entropy(logits[b].float(), targets[b], ignore_index=-100, reduction="sum")
        / (mask[b].sum() + 1e-4)
        for b in range(targets.shape[0])
    ]
    torch.testing.assert_close(terms["loss_token"], torch.stack(per_sample).mean(), rtol=1e-5, atol=1e-5)
    # Same draws with the robust loss: the object's other foreground VRTs leave the softmax, never raising a term.
    robust = padt_loss(model, processor, inputs, np.random.default_rng(0))
    assert robust["loss_token"] < terms["loss_token"]
    torch.testing.assert_close(robust["loss_bbox_l1"], terms["loss_bbox_l1"])


def test_count_token_weight_lands_on_the_counts_of_ovd_answers(step_batch):
    model, processor, _, inputs = step_batch
    records = inputs["targets"].records
    assert "ovd" in {r.task for r in records} and {r.task for r in records} - {"ovd"}
    plain = RecordingCriterion()
    base = padt_loss(model, processor, inputs, np.random.default_rng(0), criterion=plain)
    assert plain.targets.token_weights is None
    weighted = RecordingCriterion()
    terms = padt_loss(
        model,
        processor,
        inputs,
        np.random.default_rng(0),
        criterion=weighted,
        options=StepOptions(count_token_weight=5.0),
    )
    weights, tokens = weighted.targets.token_weights, weighted.targets.tokens
    for b, record in enumerate(records):
        marked = [processor.tokenizer.decode([t]).strip() for t in tokens[b][weights[b] == 5.0].tolist()]
        counts = (
            [str(n) for _, n in ovd_answer_counts(record.answer_template)] if record.task == "ovd" else []
        )
        assert marked == counts and set(weights[b][weights[b] != 5.0].tolist()) == {1.0}
    per_token = base["token_loss_per_token"]
    mask = plain.targets.completion_mask * (plain.targets.tokens >= 0)
    by_hand = ((per_token * mask * weights).sum(-1) / (mask.sum(-1) + 1e-4)).mean()
    torch.testing.assert_close(terms["loss_token"], by_hand, rtol=1e-5, atol=1e-6)
    assert terms["loss_token"] > base["loss_token"]
    torch.testing.assert_close(terms["loss_bbox_l1"], base["loss_bbox_l1"])


def test_warmup_feeds_the_decoder_the_ground_truth_prototypes(step_batch):
    model, processor, _, inputs = step_batch
    vocab = model.vocab_size
    # Checkpoint-style N(0, 0.02) weights leave the decoder's outputs near-constant; PyTorch's default
    # (fan-in scaled) initialisation makes them depend visibly on the features.
    model = copy.deepcopy(model)
    for module in model.vl_decoder.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    calls = []
    decode = model.decode_objects

    def recording_decode(features, vision, layout, **kwargs):
        out = decode(features, vision, layout, **kwargs)
        calls.append(
            (torch.cat([f for sample in features for f in sample]).detach(), vision.prototypes.detach(), out)
        )
        return out

    model.decode_objects = recording_decode
    recorded = RecordingCriterion()
    padt_loss(model, processor, inputs, np.random.default_rng(0), warmup=True, criterion=recorded)
    padt_loss(model, processor, inputs, np.random.default_rng(0), warmup=False)
    (warm_feats, prototypes, warm), (feats, _, main_out) = calls
    targets = recorded.targets.tokens
    torch.testing.assert_close(warm_feats, prototypes[targets[targets >= vocab] - vocab], rtol=0, atol=0)
    assert feats.shape == warm_feats.shape and not torch.allclose(feats, warm_feats)
    assert (warm.pred_boxes - main_out.pred_boxes).abs().max() > 1e-3
    assert (warm.pred_mask - main_out.pred_mask).abs().max() > 1e-3


def test_text_answers_write_box_coordinates_and_only_the_token_loss(step_batch):
    model, processor, _, inputs = step_batch
    extra = inputs["targets"]
    options = StepOptions(answer_format="text")
    texts, runs = build_completions(extra, np.random.default_rng(0), options)
    for text, sample_objects, record in zip(texts, extra.objects, extra.records):
        assert "<|VRT_" not in text and "<|Obj_" not in text
        boxes = re.findall(r"\[(\d+),(\d+),(\d+),(\d+)\]", text)
        assert len(boxes) == len(sample_objects) == len(record.objects)
        for box, obj in zip(boxes, sample_objects):
            assert [int(v) / 112 for v in box] == pytest.approx(obj.bbox, abs=0.5 / 112)
    terms = padt_loss(model, processor, inputs, np.random.default_rng(0), options=options)
    assert {k for k, v in terms.items() if k.startswith("loss") and v.ndim == 0} == {"loss", "loss_token"}
    torch.testing.assert_close(terms["loss"], terms["loss_token"])


# ------------------------------------------------------------------------------------------------ resume
class Crash(RuntimeError):
    pass


class StopAt(TrainerCallback):
    """Simulates a crash: raises when the given optimizer step is about to start."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"stopped before step {self.step}")


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(scenes, tmp_path, monkeypatch):
    drawn: list[list[str]] = []  # every step's completions, in call order
    original = batch_module.build_completions

    def recording(*args, **kwargs):
        texts, runs = original(*args, **kwargs)
        drawn.append(texts)
        return texts, runs

    monkeypatch.setattr(batch_module, "build_completions", recording)
    # 8 scenes, batch 2: the run crosses an epoch boundary after step 4 and leaves warm-up after step 3.
    settings = (
        "training.max_steps=6",
        "training.save_strategy=steps",
        "training.save_steps=3",
        "padt.warmup_steps=4",
    )
    generation = ("generation.vrt_repeat_penalty=2.0", "generation.vrt_reuse_penalty=1.5")
    whole = train(make_config(scenes, tmp_path / "whole", *settings, *generation))
    uninterrupted = list(drawn)
    assert len(uninterrupted) == 6
    # The config's generation section lands in the final model's generation_config.
    written = PaDTForConditionalGeneration.from_pretrained(whole).generation_config
    assert written.vrt_repeat_penalty == 2.0 and written.vrt_reuse_penalty == 1.5

    config = make_config(scenes, tmp_path / "resumed", *settings)
    trainer = build_trainer(config)
    trainer.add_callback(StopAt(4))
    drawn.clear()
    with pytest.raises(Crash):
        trainer.train()
    assert len(drawn) == 4 and drawn == uninterrupted[:4]
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-3"]

    drawn.clear()
    resumed = train(config)  # resume: auto finds checkpoint-3
    assert drawn == uninterrupted[3:]  # the VRT draws of steps 3..5, not a fresh stream
    expected, actual = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)

    # The comparison sees the VRT stream: resuming with other draws ends elsewhere.
    wrong = make_config(scenes, tmp_path / "wrong", *settings)
    shutil.copytree(tmp_path / "resumed" / "checkpoint-3", tmp_path / "wrong" / "checkpoint-3")
    fresh = PaDTTrainer.sampling_rngs
    monkeypatch.setattr(
        PaDTTrainer, "sampling_rngs", lambda self, indices: fresh(self, [i + 1000 for i in indices])
    )
    drawn.clear()
    other = load_file(train(wrong) / "model.safetensors")
    assert drawn != uninterrupted[3:]
    assert max((other[k] - expected[k]).abs().max().item() for k in expected) > 1e-4


# ------------------------------------------------------------------------------------------------- LoRA
def test_every_parameter_belongs_to_a_component_and_freezing_follows_it():
    model = tiny_model(seed=0, hidden_size=32, decoder_ordering="raster", image_position_code=True)
    names = [n for n, _ in model.named_parameters()]
    assert "image_position.weight" in names
    frozen = apply_components(model, ComponentsSection(vision="freeze"))
    trainable = {n for n, p in frozen.named_parameters() if p.requires_grad}
    vision = {n for n in names if n.startswith("model.visual.")} | {"image_position.weight"}
    assert trainable == set(names) - vision


@pytest.mark.slow
def test_lora_trains_adapters_and_decoder_only_and_merges(scenes, tmp_path):
    from padt.inference import PaDT

    config = make_config(
        scenes,
        tmp_path / "lora",
        "components={llm: lora, vision: freeze, decoder: train}",
        "training.max_steps=3",
        "training.learning_rate=1e-2",
        "lora.dropout=0.0",
    )
    initial = build_model_and_processor(config)[0].state_dict()
    trainer = build_trainer(config)
    trainer.train()
    peft_model = trainer.model
    state = {
        k.removeprefix("base_model.model."): v.detach().clone() for k, v in peft_model.state_dict().items()
    }

    lora = {k: v for k, v in state.items() if ".lora_" in k}
    assert lora and all(k.startswith("model.language_model.") for k in lora)
    assert all(v.abs().max() > 0 for k, v in lora.items() if ".lora_B." in k)  # lora_B starts at zero
    for key, value in initial.items():
        if key.startswith(DECODER_PREFIXES):  # trained as a full copy next to the untouched original
            module, rest = key.split(".", 1)
            assert torch.equal(state[f"{module}.original_module.{rest}"], value), key
            assert not torch.equal(state[f"{module}.modules_to_save.default.{rest}"], value), key
        else:  # vision, embeddings, norms and the base weights under the adapters: unchanged
            stem, _, leaf = key.rpartition(".")
            assert torch.equal(state.get(key, state.get(f"{stem}.base_layer.{leaf}")), value), key
    assert sum(p.requires_grad for n, p in peft_model.named_parameters() if "visual" in n) == 0

    # The merged folder computes what the adapter model computed.
    model = peft_model.eval()
    processor = trainer.padt_processor
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        before = padt_loss(model, processor, inputs, np.random.default_rng(0))
    folder = save_final(trainer, tmp_path / "lora")
    pipe = PaDT.from_pretrained(folder, device="cpu", dtype="fp32")
    merged = load_file(folder / "model.safetensors")
    assert torch.equal(
        merged["visual.patch_embed.proj.weight"], initial["model.visual.patch_embed.proj.weight"]
    )
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], initial["model.language_model.layers.0.self_attn.q_proj.weight"])
    with torch.no_grad():
        after = padt_loss(pipe.model, pipe.processor, inputs, np.random.default_rng(0))
    for name in ("loss_token", "loss_bbox_l1", "loss_mask_dice"):
        torch.testing.assert_close(after[name], before[name], rtol=1e-4, atol=1e-5)
    record = trainer.train_dataset.records[0]
    [prediction] = pipe([record.images[0]], [record.prompt], max_new_tokens=8)
    assert isinstance(prediction.text, str)


@pytest.mark.slow
# ------------------------------------------------------------------------------------------- two processes
def test_two_processes_with_gloo(scenes, tmp_path):
    out = tmp_path / "ddp"
    config = REPO / "configs" / "cpu.yaml"
    overrides = [
        f"data.train=[{{records: '{scenes}'}}]",
        "data.synthetic=null",
        "model.tiny.hidden_size=32",
        "training.per_device_train_batch_size=2",
        "training.save_strategy=no",
        "training.ddp_backend=gloo",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "padt.cli",
        "train",
        "--config",
        str(config),
        "--output-dir",
        str(out),
        "--max-steps",
        "2",
        *overrides,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model written to" in result.stdout
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 2

    trained = PaDTForConditionalGeneration.from_pretrained(out).state_dict()
    initial = build_model_and_processor(load_config(config, [*overrides, f"training.output_dir={out}"]))[
        0
    ].state_dict()
    assert trained.keys() == initial.keys()
    changed = {
        k.split(".")[0] if not k.startswith("model.") else ".".join(k.split(".")[:2])
        for k in trained
        if not torch.equal(trained[k], initial[k])
    }
    assert {"model.visual", "model.language_model", "vl_decoder", "vis_proj"} <= changed


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes(scenes, tmp_path):
    """configs/fsdp.yaml run for real (FSDP2 fully_shard, gloo, CPU): the loss falls, resume works, and the
    checkpoint the sharded run saved loads in padt predict."""
    out = tmp_path / "fsdp"
    overrides = [
        "model.path=null",
        "model.tiny={hidden_size: 32, decoder_init: torch}",
        "model.dtype=fp32",
        f"processor.max_pixels={PIXELS}",
        f"data.train=[{{records: '{scenes}'}}]",
        "padt.patches=recompute",
        "padt.warmup_steps=2",
        "training.bf16=false",
        "training.use_cpu=true",
        "training.fsdp_config.activation_checkpointing=false",
        "training.per_device_train_batch_size=2",
        "training.learning_rate=2e-3",
        "training.logging_steps=1",
        "training.save_steps=5",
        "training.report_to=[]",
        "training.disable_tqdm=true",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))

    def run(steps: int) -> subprocess.CompletedProcess:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "padt.cli",
            "train",
            "--config",
            str(REPO / "configs" / "fsdp.yaml"),
            "--output-dir",
            str(out),
            "--max-steps",
            str(steps),
            *overrides,
        ]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)

    first = run(5)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run(10)  # resumes from checkpoint-5 under FSDP
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout and (out / "checkpoint-10").is_dir()
    logs = [
        h for h in json.loads((out / "train_summary.json").read_text())["log_history"] if "loss_token" in h
    ]
    assert [h["step"] for h in logs] == list(range(1, 11))
    assert logs[-1]["loss_token"] < logs[0]["loss_token"] - 0.05, [h["loss_token"] for h in logs]
    image = next(scenes.parent.glob("*.png"))
    code = main(
        [
            "predict",
            "--model",
            str(out),
            "--image",
            str(image),
            "--task",
            "rec",
            "--prompt",
            "the shape",
            "--max-new-tokens",
            "6",
            "--json",
            str(tmp_path / "p.json"),
        ]
    )
    assert code == 0 and "text" in json.loads((tmp_path / "p.json").read_text())


def test_synthetic_data_of_a_config_takes_its_form_weights(tmp_path):
    config = make_config(
        tmp_path / "unused.jsonl",
        tmp_path / "run",
        "data.train=[]",
        f"data.synthetic={{task: rec, n: 4, seed: 2, max_size: 112, out: '{tmp_path / 'data'}', "
        "form_weights: {attribute: 0, relation: 0}}",
    )
    dataset = build_dataset(config, tmp_path)
    settings = json.loads((tmp_path / "data" / "synthetic.json").read_text())
    assert settings["form_weights"] == {"attribute": 0.0, "extreme": 0.3, "relation": 0.0}
    labels = [r.objects[0].label for r in dataset.records]
    # (scene 0's target has no extreme form: the only cross is "the orange cross")
    assert [expression_form(label) for label in labels] == ["attribute", "extreme", "extreme", "extreme"]


def test_ovd_records_without_objects_train(tmp_path):
    """A config's synthetic data with ``absent_rate: 1``: every OVD record asks only for absent kinds and answers
    that none is there; training on them runs, the token loss on and the decoder's losses at zero (no object)."""
    from padt.prompts import OVD_ANSWER_NONE

    config = make_config(
        tmp_path / "unused.jsonl",
        tmp_path / "run",
        "data.train=[]",
        "data.synthetic={task: ovd, n: 4, seed: 2, max_size: 112, absent_rate: 1}",
        "padt.patches=record",
    )
    assert config.data.synthetic.absent_rate == 1.0
    out = train(config)
    summary = json.loads((out / "train_summary.json").read_text())
    records = read_records(tmp_path / "run" / "data" / "records.jsonl")
    assert all(r.answer_template == OVD_ANSWER_NONE and not r.objects for r in records)
    assert json.loads((tmp_path / "run" / "data" / "synthetic.json").read_text())["absent_rate"] == 1.0
    history = [h for h in summary["log_history"] if "loss_token" in h]
    assert len(history) == 2 and all(h["loss_token"] > 0 and h["loss_bbox_l1"] == 0 for h in history)


def test_several_synthetic_datasets_are_mixed_into_one(tmp_path):
    """A list under data.synthetic: each dataset generated into its own folder (data, data_1, ...) with its own
    task, size and seed, and all their records trained on together."""
    config = make_config(
        tmp_path / "unused.jsonl",
        tmp_path / "run",
        "data.train=[]",
        "data.synthetic=[{task: rec, n: 3, seed: 2, max_size: 112}, {task: ovd, n: 2, seed: 5, max_size: 112}]",
    )
    dataset = build_dataset(config, tmp_path / "run")
    first = json.loads((tmp_path / "run" / "data" / "synthetic.json").read_text())
    second = json.loads((tmp_path / "run" / "data_1" / "synthetic.json").read_text())
    assert (first["task"], first["seed"]) == ("rec", 2)
    assert (second["task"], second["seed"]) == ("ovd", 5)
    assert [r.task for r in dataset.records] == ["rec"] * 3 + ["ovd"] * 2
    # each record reads its image from its own dataset's folder
    assert [Path(r.image).parent.name for r in dataset.records] == ["data"] * 3 + ["data_1"] * 2
    assert all(Path(r.image).is_file() for r in dataset.records)
    # the second dataset is the one its spec alone generates
    alone = generate_dataset("ovd", 2, 5, tmp_path / "alone", max_size=112, progress=False)
    assert [r.answer_template for r in dataset.records[3:]] == [
        r.answer_template for r in read_records(alone.records_path)
    ]


@pytest.mark.slow
# -------------------------------------------------------------------------------------------------- overfit
def test_overfits_a_few_rec_samples(tmp_path):
    records = generate_dataset(
        "rec", 4, 3, tmp_path / "rec", min_size=112, max_size=112, progress=False
    ).records_path
    config = make_config(records, tmp_path / "run")
    dataset = build_dataset(config, tmp_path)
    model = tiny_model(
        seed=0, hidden_size=32, random_prototypes=False
    ).train()  # PaDT's zero-initialised vis_norm
    processor = PaDTProcessor(tiny_processor(max_pixels=PIXELS), model.vocab_size)
    inputs = PaDTCollator(processor, patches="recompute")([dataset[i] for i in range(len(dataset))])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    token, box = [], []
    for step in range(120):
        terms = padt_loss(model, processor, inputs, np.random.default_rng(step))
        optimizer.zero_grad()
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        token.append(terms["loss_token"].item())
        box.append((terms["loss_bbox_l1"] + terms["loss_bbox_giou"]).item())
    start_token, end_token = np.mean(token[:3]), np.mean(token[-10:])
    start_box, end_box = np.mean(box[:3]), np.mean(box[-10:])
    assert end_token < 0.1 * start_token, (start_token, end_token)
    assert end_box < 0.5 * start_box, (start_box, end_box)
