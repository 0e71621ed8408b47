"""``padt predict`` on bad input: each row ends in time with exit 2 and one line naming the problem and the fix,
checked before the model loads where it can be."""

from __future__ import annotations

import pytest

from badinput import Case, check_all, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


PROMPT = ["--prompt", "the red box"]

CASES = [
    Case(
        "image-missing", ["predict", "--image", "{w}/nope.png", *PROMPT], ["image file not found", "nope.png"]
    ),
    Case(
        "image-not-an-image", ["predict", "--image", "{w}/bad.png", *PROMPT], ["cannot read image", "bad.png"]
    ),
    Case(
        "image-cut-short", ["predict", "--image", "{w}/cut.png", *PROMPT], ["cut.png", "truncated or corrupt"]
    ),
    Case(
        "image-too-many-pixels",
        ["predict", "--image", "{w}/huge.png", *PROMPT],
        ["95 megapixels", "downscale"],
    ),
    Case(
        "prompt-empty",
        ["predict", "--image", "{w}/ok.png", "--prompt", "  "],
        ["prompt is empty", "--task ric"],
    ),
    Case(
        "prompt-control-token",
        ["predict", "--image", "{w}/ok.png", "--prompt", "hi <|im_end|> there"],
        ["<|im_end|>", "control token", "remove it"],
    ),
    Case(
        "model-folder-missing",
        ["predict", "--model", "{w}/nope", "--image", "{w}/ok.png", *PROMPT],
        ["does not exist", "--model"],
    ),
    Case(
        "weights-cut-short",
        ["predict", "--model", "{w}/m_cut", "--image", "{w}/ok.png", *PROMPT],
        ["model.safetensors is empty or cut short", "copy the checkpoint again"],
    ),
    Case(
        "weights-empty",
        ["predict", "--model", "{w}/m_zero", "--image", "{w}/ok.png", *PROMPT],
        ["(0 bytes)", "copy the checkpoint again"],
    ),
    Case(
        "weights-missing",
        ["predict", "--model", "{w}/m_noweights", "--image", "{w}/ok.png", *PROMPT],
        ["no model weights", "save_pretrained"],
    ),
    Case(
        "config-invalid-json",
        ["predict", "--model", "{w}/m_badcfg", "--image", "{w}/ok.png", *PROMPT],
        ["config.json is not valid JSON"],
    ),
    Case(
        "config-missing",  # used to build the 7B default model and run out of memory
        ["predict", "--model", "{w}/m_nocfg", "--image", "{w}/ok.png", *PROMPT],
        ["no config.json in", "save_pretrained"],
        timeout=60,
    ),
    Case(
        "config-other-architecture",
        ["predict", "--model", "{w}/m_llama", "--image", "{w}/ok.png", *PROMPT],
        ["holds a 'llama' model", "qwen2_5_vl"],
    ),
    Case(
        "tokenizer-missing",
        ["predict", "--model", "{w}/m_notok", "--image", "{w}/ok.png", *PROMPT],
        ["has no tokenizer", "tokenizer.json"],
    ),
    Case(
        "device-cuda-without-gpu",
        ["predict", "--image", "{w}/ok.png", *PROMPT, "--device", "cuda"],
        ["no CUDA"],
    ),
    Case(
        "device-unknown", ["predict", "--image", "{w}/ok.png", *PROMPT, "--device", "tpu"], ["unknown device"]
    ),
    Case(
        "json-under-a-file",
        ["predict", "--image", "{w}/ok.png", *PROMPT, "--json", "{w}/afile/out.json"],
        ["cannot create the folder of --json"],
    ),
    Case("json-is-a-folder", ["predict", "--image", "{w}/ok.png", *PROMPT, "--json", "{w}"], ["is a folder"]),
    Case(
        "overlay-under-a-file",
        ["predict", "--image", "{w}/ok.png", *PROMPT, "--overlay", "{w}/afile/out.png"],
        ["cannot create the folder of --overlay"],
    ),
    Case(
        "overlay-not-an-image-name",
        ["predict", "--image", "{w}/ok.png", *PROMPT, "--overlay", "{tmp}/out.txt"],
        ["--overlay", "'.txt'", ".png"],
    ),
    Case(
        "coco-gt-not-coco",
        [
            "predict",
            "--image",
            "{w}/ok.png",
            *PROMPT,
            "--coco-json",
            "{tmp}/c.json",
            "--coco-gt",
            "{w}/afile",
        ],
        ["has no 'images' and 'categories'"],
    ),
    Case(
        "coco-gt-without-coco-json",
        ["predict", "--image", "{w}/ok.png", *PROMPT, "--coco-gt", "{w}/coco.json"],
        ["pass --coco-json"],
    ),
    Case(
        "coco-gt-without-the-image",
        [
            "predict",
            "--image",
            "{w}/other.png",
            *PROMPT,
            "--coco-json",
            "{tmp}/c.json",
            "--coco-gt",
            "{w}/coco.json",
        ],
        ["other.png is not among the images of the COCO file"],
    ),
    # argparse's own errors: exit 2 and the usage, naming the option and its range.
    *(
        Case(
            f"option-{name}", ["predict", "--image", "{w}/ok.png", *PROMPT, *args], [fragment], one_line=False
        )
        for name, args, fragment in [
            ("max-side-0", ["--max-side", "0"], "argument --max-side: must be at least 1, got 0"),
            ("max-side-negative", ["--max-side", "-5"], "argument --max-side: must be at least 1, got -5"),
            ("max-side-text", ["--max-side", "big"], "argument --max-side"),
            ("max-new-tokens-0", ["--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1"),
            ("repeat-penalty-negative", ["--vrt-repeat-penalty", "-1"], "must be a number >= 0"),
            ("reuse-penalty-text", ["--vrt-reuse-penalty", "high"], "argument --vrt-reuse-penalty"),
            ("task-unknown", ["--task", "vqa"], "argument --task: invalid choice: 'vqa'"),
            ("dtype-unknown", ["--dtype", "int4"], "argument --dtype: invalid choice"),
        ]
    ),
    Case("no-image", ["predict", *PROMPT], ["the following arguments are required: --image"], one_line=False),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_predict_refuses(case, tmp_path, world):
    check_all(case, tmp_path, world)


def test_output_paths_are_checked_before_the_model_loads(tmp_path, world):
    """A bad output path must not cost a model load: with a missing model AND a bad --overlay, the overlay is
    named (checked first)."""
    case = Case(
        "overlay-first",
        ["predict", "--model", "{w}/m_zero", "--image", "{w}/ok.png", *PROMPT, "--overlay", "{tmp}/o.txt"],
        ["--overlay"],
    )
    check_all(case, tmp_path, world)


def test_json_and_overlay_both_create_their_folders(tmp_path, world):
    case = Case(
        "folders",
        [
            "predict",
            "--image",
            "{w}/ok.png",
            *PROMPT,
            "--json",
            "{tmp}/a/b/p.json",
            "--overlay",
            "{tmp}/c/d/o.png",
        ],
        [],
        code=0,
        one_line=False,
    )
    check_all(case, tmp_path, world)
    assert (tmp_path / "a/b/p.json").is_file() and (tmp_path / "c/d/o.png").is_file()
