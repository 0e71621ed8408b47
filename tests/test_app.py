"""``padt app``: the answer's coloured spans, synthetic scenes, and the page driven in a real browser (Debian's
chromium through Playwright): upload, run, overlay, answer, JSON, decoding options, errors, offline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the app extra is not installed: pip install 'padt[app]'")

from padt.app import answer_spans, new_scene
from padt.postprocess import DetectedObject, Prediction
from padt.visualize import object_colour

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Where to also save the screenshot (the README's is made this way).
SCREENSHOT_ENV = "PADT_APP_SCREENSHOT"


def test_each_vrt_run_is_a_span_coloured_like_its_object():
    objects = [DetectedObject("cat", [1, 2], (0, 0, 1, 1), 0.9), DetectedObject("", [7], (0, 0, 1, 1), 0.8)]
    pred = Prediction(
        text='The "cat" (<|VRT_1|><|VRT_2|>) and <|VRT_7|>.', objects=objects, object_images=[0, 0]
    )
    spans, colours = answer_spans(pred)
    assert spans == [
        ('The "cat" (', None),
        ("<|VRT_1|><|VRT_2|>", "#1 cat"),
        (") and ", None),
        ("<|VRT_7|>", "#2"),
        (".", None),
    ]
    assert colours == {
        "#1 cat": "#{:02x}{:02x}{:02x}".format(*object_colour(0)),
        "#2": "#{:02x}{:02x}{:02x}".format(*object_colour(1)),
    }
    assert "".join(text for text, _ in spans) == pred.text
    unpaired = Prediction(text="<|VRT_1|> x <|VRT_2|>", objects=objects[:1], object_images=[0])
    spans, colours = answer_spans(unpaired)
    assert [c for _, c in spans] == ["VRTs", None, "VRTs"] and colours == {}


def test_new_scenes_come_with_a_text_for_the_task():
    image, text = new_scene("OVD", seed=3)
    again, same = new_scene("OVD", seed=3)
    assert image.tobytes() == again.tobytes() and text == same
    assert len(text.split(", ")) >= 2
    assert new_scene("RIC", seed=3)[1] == ""
    assert new_scene("REC", seed=3)[1].startswith("the ")


# -------------------------------------------------------------------------------------------- the browser
def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: apt-get install chromium (CI installs it; this test then runs)"
    try:
        import playwright.sync_api  # noqa: F401
    except ModuleNotFoundError:
        return "playwright is not installed: pip install 'padt[dev]'"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
def test_the_page_in_a_real_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    from padt.inference import PaDT, default_model
    from serving import assert_same_prediction, padt_process, scene_png

    png, scene = scene_png(2026)
    image_path = tmp_path / "scene.png"
    image_path.write_bytes(png)
    prompt = ", ".join(scene.kinds)
    with (
        padt_process("app", ["--max-new-tokens", "96"], tmp_path, ready_path="/") as app,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(180_000)
        requested = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(app.url)
        page.wait_for_selector("#run")

        # an error is a message in the page, not a stack trace
        page.click("#run")
        toast = page.get_by_text("No image yet")
        toast.wait_for()
        assert "Traceback" not in page.content()
        page.locator(".toast-close").first.click()
        toast.wait_for(state="hidden")

        page.click("#new-scene")  # a synthetic scene with a fitting text
        page.wait_for_selector("#input-image img")
        assert page.locator("#text textarea").input_value()

        page.set_input_files("#input-image input[type=file]", str(image_path))
        page.get_by_label("OVD").check()
        page.locator("#text textarea").fill(prompt)
        page.click("#run")
        page.wait_for_selector("#annotated img")
        page.wait_for_selector("#download", state="visible")
        page.wait_for_selector("#answer span")
        overlay = page.locator("#annotated img")
        natural = overlay.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        scale = max(1, 512 // max(scene.width, scene.height))
        assert natural == [scene.width * scale, scene.height * scale]
        assert "objects" in page.locator("#json").inner_text()
        with page.expect_download() as download:
            page.click("#download")
        shown = json.loads(Path(download.value.path()).read_text())
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        before = overlay.get_attribute("src")
        page.get_by_label("Show the VRT cells of each object").check()
        page.wait_for_function(
            "before => document.querySelector('#annotated img').src !== before", arg=before
        )

        # the Decoding panel shows the checkpoint's penalties, and a changed one is what the model decodes with
        page.get_by_label("RIC").check()
        page.get_by_text("Decoding", exact=True).click()
        reuse = page.locator("#reuse-penalty input")
        reuse.wait_for()
        shown_repeat = float(page.locator("#penalty input").input_value())
        shown_reuse = float(reuse.input_value())
        shown_box_weight = float(page.locator("#mask-box-weight input").input_value())
        shown_end = page.locator("#ovd-end-penalty input").input_value()
        shown_duplicate = page.locator("#ovd-duplicate-iou input").input_value()
        shown_grammar = page.locator("#ovd-grammar input").is_checked()
        reuse.fill("0")
        page.locator("#penalty input").fill("0")
        before = overlay.get_attribute("src")
        page.click("#run")
        page.wait_for_function(
            "before => document.querySelector('#annotated img').src !== before", arg=before
        )
        with page.expect_download() as download:
            page.click("#download")
        shown_ric = json.loads(Path(download.value.path()).read_text())
        browser.close()
        outside = app.outside_connections()

    pipe = PaDT.from_pretrained(default_model())
    [alone] = pipe([scene.image], [prompt], task="ovd", max_new_tokens=96)
    assert_same_prediction(shown, alone.to_json(), [(scene.width, scene.height)])
    config = pipe.model.generation_config
    assert (shown_repeat, shown_reuse) == (config.vrt_repeat_penalty, config.vrt_reuse_penalty)
    assert shown_box_weight == config.mask_box_weight
    assert shown_grammar is config.ovd_grammar is True
    # off, as in the checkpoint
    assert float(shown_end) == float(shown_duplicate) == 0
    assert (
        getattr(config, "ovd_end_penalty", None) is None
        and getattr(config, "ovd_duplicate_iou", None) is None
    )
    [ric] = pipe(
        [scene.image], [""], task="ric", max_new_tokens=96, vrt_reuse_penalty=0.0, vrt_repeat_penalty=0.0
    )
    assert_same_prediction(shown_ric, ric.to_json(), [(scene.width, scene.height)])
    # on this scene the penalties change the caption, so the fields really reached generation
    [ric_default] = pipe([scene.image], [""], task="ric", max_new_tokens=96)
    assert ric.text != ric_default.text
    assert not [u for u in requested if not u.startswith(app.url) and not u.startswith(("data:", "blob:"))]
    assert outside == []
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copy(tmp_path / "app.png", os.environ[SCREENSHOT_ENV])
