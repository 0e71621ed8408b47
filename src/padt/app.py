"""``padt app``: a web demo (Gradio) of a PaDT model — drop an image, pick a task, see boxes, masks and the answer.

    padt app                                   # the bundled model on http://127.0.0.1:7860
    padt app --model PATH --device cuda --port 7860

Inputs: an image (upload, paste, or "New scene" for a synthetic one), the task (REC, RES, OVD, RIC or a free
prompt), its text, decoding options. Outputs: the annotated image (a toggle shows the VRT cells of each object),
the answer with each VRT run coloured like its object, and ``padt predict``'s JSON to copy or download.

It runs offline: analytics off, no share link unless ``--share``, fonts served by the app itself. Needs
``pip install 'padt[app]'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from padt.commands import port_number, positive_int
from padt.errors import PaDTError

log = logging.getLogger("padt.app")

#: Task choices as shown -> ``task`` argument of the pipeline (None: the text is the prompt as written).
TASK_CHOICES = {"REC": "rec", "RES": "res", "OVD": "ovd", "RIC": "ric", "Free prompt": None}
TEXT_LABELS = {
    "REC": ("Referring expression", "the small red circle"),
    "RES": ("Referring expression", "the small red circle"),
    "OVD": ("Class names, comma-separated", "circle, star, square"),
    "RIC": ("No text needed: the model describes the image", ""),
    "Free prompt": ("Prompt", "How many shapes are in this image?"),
}
_VRT_RUN = re.compile(r"(?:<\|VRT_\d+\|>)+")
#: Images smaller than this (longer side, px) are drawn enlarged by a whole factor.
DISPLAY_SIDE = 512
#: Both images fill their panels (small synthetic scenes would otherwise show at their own few hundred pixels).
CSS = "#input-image img, #annotated img {width: 100%; height: 100%; object-fit: contain;}"


def answer_spans(prediction: Any) -> tuple[list[tuple[str, str | None]], dict[str, str]]:
    """The answer as ``(text, category)`` spans for ``gr.HighlightedText``: each VRT run is a span named after its
    object (``#k label``) and coloured like it in the overlay; text between runs has no category.

    The parser makes one object per VRT run, so the k-th run is object k. If their counts differ (a run split by
    a token that is neither text nor VRT), runs are shown uncoloured as ``VRTs``."""
    from padt.visualize import object_colour

    runs = list(_VRT_RUN.finditer(prediction.text))
    paired = len(runs) == len(prediction.objects)
    spans: list[tuple[str, str | None]] = []
    colours: dict[str, str] = {}
    start = 0
    for k, run in enumerate(runs):
        if run.start() > start:
            spans.append((prediction.text[start : run.start()], None))
        if paired:
            label = prediction.objects[k].label
            name = f"#{k + 1} {label}".strip()
            colours[name] = "#{:02x}{:02x}{:02x}".format(*object_colour(k))
        else:
            name = "VRTs"
        spans.append((run.group(), name))
        start = run.end()
    if start < len(prediction.text):
        spans.append((prediction.text[start:], None))
    return spans, colours


def new_scene(task_label: str, seed: int | None = None) -> tuple[Any, str]:
    """A synthetic scene and a text for ``task_label`` that fits it."""
    from padt.data.synthetic import BUNDLED_SCENES, SHAPES, make_scene, sample_referring_expression

    rng = np.random.default_rng(seed)
    scene = make_scene(rng, **dataclasses.asdict(BUNDLED_SCENES))  # the bundled model's training distribution
    task = TASK_CHOICES.get(task_label)
    if task in ("rec", "res"):
        picked = sample_referring_expression(scene, rng)
        text = picked[1].text if picked else f"the {scene.objects[0].shape}"
    elif task == "ovd":
        present = scene.kinds
        absent = [s for s in SHAPES if s not in present]
        text = ", ".join(present + list(rng.choice(absent, size=min(1, len(absent)), replace=False)))
    elif task == "ric":
        text = ""
    else:
        text = TEXT_LABELS["Free prompt"][1]
    return scene.image, text


def example_rows(folder: Path, seed: int = 2026) -> list[list[Any]]:
    """One synthetic example per task, saved as PNG in ``folder``: rows of (image path, task, text)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, task_label in enumerate(("REC", "OVD", "RIC", "RES")):
        image, text = new_scene(task_label, seed + k)
        path = folder / f"example_{k}_{task_label.lower()}.png"
        image.save(path)
        rows.append([str(path), task_label, text])
    return rows


class _TokenProgress:
    """A ``generate`` streamer that only counts new tokens, to drive the page's progress bar."""

    def __init__(self, progress: Any, total: int) -> None:
        self.progress, self.total, self.count, self.prompt_seen = progress, total, 0, False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt
            self.prompt_seen = True
            return
        self.count += 1
        self.progress((self.count, self.total), desc="generating", unit="tokens")

    def end(self) -> None:
        pass


def build_demo(pipe: Any, *, model_name: str, workdir: Path, max_new_tokens: int = 128) -> Any:
    """The Gradio Blocks of the demo for ``pipe`` (a :class:`~padt.inference.PaDT`)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from padt.generation import ovd_grammar_of
    from padt.visualize import draw_prediction

    def decoding_number(setting: str, label: str, elem_id: str, maximum: float | None = None) -> Any:
        """A field of the Decoding panel for one of padt's decoding settings, showing the checkpoint's value."""
        return gr.Number(
            value=getattr(pipe.model.generation_config, setting, None),
            label=f"{label} (empty: the checkpoint's)",
            minimum=0,
            maximum=maximum,
            elem_id=elem_id,
        )

    device = next(pipe.model.parameters()).device
    outputs_dir = workdir / "outputs"
    outputs_dir.mkdir(parents=True, exist_ok=True)

    def draw(image, prediction, show_vrt: bool):
        scale = max(
            1, DISPLAY_SIDE // max(image.size)
        )  # small images are drawn enlarged, for readable labels
        return draw_prediction(image, prediction, show_vrt=show_vrt, processor=pipe.processor, scale=scale)

    def run(
        image,
        task_label,
        text,
        max_new,
        penalty,
        reuse,
        end,
        duplicate,
        grammar,
        box_weight,
        show_vrt,
        progress=gr.Progress(),  # noqa: B008 (gradio injects it)
    ):
        if image is None:
            raise gr.Error(
                "No image yet: upload one, paste one, or press 'New scene'.", print_exception=False
            )
        task = TASK_CHOICES.get(task_label, "unknown")
        if task == "unknown":
            raise gr.Error(f"Unknown task {task_label!r}.", print_exception=False)
        text = text or ""
        if task != "ric" and not text.strip():
            what = {"rec": "a referring expression", "res": "a referring expression", "ovd": "class names"}
            raise gr.Error(
                f"The text is empty: write {what.get(task, 'a prompt')} first.", print_exception=False
            )
        for name, value in (("repeat", penalty), ("reuse", reuse)):
            if value is not None and not value >= 0:
                raise gr.Error(f"The VRT {name} penalty must be 0 or more.", print_exception=False)
        max_new = int(max_new)
        progress((0, max_new), desc="generating", unit="tokens")
        try:
            [prediction] = pipe(
                [image],
                [text],
                task=task,
                max_new_tokens=max_new,
                vrt_repeat_penalty=penalty,
                vrt_reuse_penalty=reuse,
                mask_box_weight=box_weight,
                ovd_end_penalty=end,
                ovd_duplicate_iou=duplicate,
                ovd_grammar=bool(grammar),
                streamer=_TokenProgress(progress, max_new),
            )
        except PaDTError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:
            log.exception("prediction failed")
            raise gr.Error(
                f"Internal error ({type(error).__name__}); the terminal running padt app has the details.",
                print_exception=False,
            ) from None
        spans, colours = answer_spans(prediction)
        body = prediction.to_json()
        out = Path(tempfile.mkstemp(prefix="prediction_", suffix=".json", dir=outputs_dir)[1])
        out.write_text(json.dumps(body, indent=2))
        duplicates = sum(o.duplicate_of is not None for o in prediction.objects)
        summary = (
            f"{len(prediction.objects)} object(s)"
            + (f", {duplicates} of them duplicate(s), not drawn" if duplicates else "")
            + ("" if prediction.finished else " — stopped at max new tokens before the end")
        )
        return (
            draw(image, prediction, show_vrt),
            gr.update(value=spans, color_map=colours),
            body,
            gr.update(value=str(out), visible=True),
            prediction,
            summary,
        )

    def redraw(image, prediction, show_vrt):
        if image is None or prediction is None:
            return gr.update()
        return draw(image, prediction, show_vrt)

    def on_task(task_label):
        label, placeholder = TEXT_LABELS[task_label]
        if task_label == "RIC":
            return gr.update(label=label, placeholder=placeholder, interactive=False, value="")
        return gr.update(label=label, placeholder=placeholder, interactive=True)

    def on_new_scene(task_label):
        image, text = new_scene(task_label)
        return image, text, None, gr.update(value=[]), None, gr.update(visible=False), None, ""

    with gr.Blocks(title="padt — PaDT demo", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## PaDT: patches as decodable tokens\nModel **{model_name}** on `{device}`. The model writes "
            "visual reference tokens (VRTs, image patches) between words; each run of VRTs is decoded into "
            "a box, a mask and a score."
        )
        prediction_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    type="pil",
                    label="Image",
                    sources=["upload", "clipboard"],
                    elem_id="input-image",
                    height=360,
                )
                scene_button = gr.Button("New scene", elem_id="new-scene")
                task = gr.Radio(list(TASK_CHOICES), value="REC", label="Task", elem_id="task")
                text = gr.Textbox(
                    label=TEXT_LABELS["REC"][0], placeholder=TEXT_LABELS["REC"][1], elem_id="text"
                )
                with gr.Accordion("Decoding", open=False):
                    max_new = gr.Slider(
                        1,
                        1024,
                        value=max_new_tokens,
                        step=1,
                        label="Max new tokens",
                        elem_id="max-new-tokens",
                    )
                    penalty = decoding_number("vrt_repeat_penalty", "VRT repeat penalty", "penalty")
                    reuse = decoding_number(
                        "vrt_reuse_penalty", "VRT reuse penalty, on earlier objects' patches", "reuse-penalty"
                    )
                    end = decoding_number(
                        "ovd_end_penalty",
                        "OVD end penalty, on ending the list after an object group",
                        "ovd-end-penalty",
                    )
                    duplicate = decoding_number(
                        "ovd_duplicate_iou",
                        "OVD duplicate IoU: a box overlapping a higher-scored one by more is a duplicate",
                        "ovd-duplicate-iou",
                        maximum=1,
                    )
                    grammar = gr.Checkbox(
                        value=ovd_grammar_of(pipe.model.generation_config),
                        label="OVD grammar: only the prompt's class names, a well-formed answer (default: the "
                        "checkpoint's)",
                        elem_id="ovd-grammar",
                    )
                    box_weight = decoding_number(
                        "mask_box_weight",
                        "Mask-box weight: 0 = the box head's box, 1 = the mask's tight box",
                        "mask-box-weight",
                        maximum=1,
                    )
                show_vrt = gr.Checkbox(
                    value=False, label="Show the VRT cells of each object", elem_id="show-vrt"
                )
                run_button = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column(scale=1):
                annotated = gr.Image(
                    type="pil",
                    label="Annotated image",
                    interactive=False,
                    elem_id="annotated",
                    format="png",
                    height=360,
                )
                summary = gr.Markdown(elem_id="summary")
                answer = gr.HighlightedText(
                    label="Answer (VRT runs coloured like their objects)",
                    elem_id="answer",
                    show_legend=False,
                    combine_adjacent=False,
                )
                with gr.Accordion("JSON (padt predict's schema)", open=True):
                    as_json = gr.JSON(label="Prediction", elem_id="json")
                    download = gr.DownloadButton("Download JSON", visible=False, elem_id="download")
        gr.Examples(example_rows(workdir / "examples"), inputs=[image, task, text], label="Synthetic scenes")

        task.change(on_task, task, text)
        scene_button.click(
            on_new_scene, task, [image, text, annotated, answer, as_json, download, prediction_state, summary]
        )
        run_button.click(
            run,
            [image, task, text, max_new, penalty, reuse, end, duplicate, grammar, box_weight, show_vrt],
            [annotated, answer, as_json, download, prediction_state, summary],
        )
        show_vrt.change(redraw, [image, prediction_state, show_vrt], annotated)
    return demo


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument(
        "--max-side", type=positive_int, default=None, help="cap the longer image side (px) first"
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=128, help="the slider's starting value"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    parser.add_argument("--port", type=port_number, default=7860)
    parser.add_argument(
        "--share",
        action="store_true",
        help="also open a public gradio.live link (off by default; needs the internet)",
    )


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except ModuleNotFoundError:
        raise PaDTError("padt app needs gradio; install it with: pip install 'padt[app]'") from None
    from padt.inference import PaDT, default_model

    path = Path(args.model) if args.model else default_model()
    name = "padt-bundled" if args.model is None else path.resolve().name
    pipe = PaDT.from_pretrained(path, device=args.device, dtype=args.dtype, max_side=args.max_side)
    workdir = Path(tempfile.mkdtemp(prefix="padt-app-"))
    demo = build_demo(pipe, model_name=name, workdir=workdir, max_new_tokens=args.max_new_tokens)
    demo.queue(default_concurrency_limit=1)  # one model: one prediction at a time, the others wait in line
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        ssr_mode=False,
        mcp_server=False,
        enable_monitoring=False,
        allowed_paths=[str(workdir)],
        theme=gr.themes.Default(),
        footer_links=[],
        css=CSS,
        max_file_size="50mb",
    )
    return 0
