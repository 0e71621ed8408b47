"""Answer formats: the text-coordinate baseline writes boxes as ``[x1,y1,x2,y2]``, reads them back and predicts
with them, in each base's convention (pixels of the resized image, or 0-1000)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from padt.answers import NO_MASK_BOXES, TextCoordinateAnswers, VRTAnswers, answer_format, answer_format_of
from padt.errors import PaDTError
from padt.inference import predict
from padt.processing import PaDTProcessor
from padt.tiny import tiny_model, tiny_processor

PIXELS = TextCoordinateAnswers("pixels")
RELATIVE = TextCoordinateAnswers("relative1000")
box_text, parse_text_boxes = PIXELS.box_text, PIXELS.parse_boxes


def test_box_text_rounds_to_resized_pixels_and_clips():
    # 196 x 112 resized image: x scales by 196, y by 112.
    assert box_text([0.1, 0.25, 0.5, 1.0], (112, 196)) == "[20,28,98,112]"
    assert box_text([-0.2, 0.0, 1.3, 0.5], (112, 196)) == "[0,0,196,56]"
    # Qwen3-VL's convention: 0-1000 across the image, whatever its size.
    assert RELATIVE.box_text([0.1, 0.25, 0.5, 1.0], (112, 196)) == "[100,250,500,1000]"
    assert RELATIVE.parse_boxes("[100,250,500,1000]", (112, 196))[0][1] == pytest.approx(
        [0.1, 0.25, 0.5, 1.0]
    )


def test_parse_text_boxes_labels_normalises_and_orders_corners():
    text = (
        'In this image, there are 2 "circle" ([20,28,98,112], [98,56,49,0]), 1 "star" ([0,0,300,-5]).'
        "<|im_end|>"
    )
    parsed = parse_text_boxes(text, (112, 196))
    assert [label for label, _ in parsed] == ["circle", "circle", "star"]
    assert parsed[0][1] == pytest.approx([20 / 196, 28 / 112, 98 / 196, 1.0])
    assert parsed[1][1] == pytest.approx([49 / 196, 0.0, 98 / 196, 56 / 112])
    assert parsed[2][1] == pytest.approx([0.0, 0.0, 1.0, 0.0])
    # The label rule is the VRT parser's: a box inside an open quote gets the phrase so far.
    assert parse_text_boxes('The "red [1,2,3,4]', (10, 10))[0][0] == "red"
    with pytest.raises(PaDTError, match="positive"):
        parse_text_boxes("[1,2,3,4]", (0, 10))


def test_predict_decodes_a_text_coordinate_model_to_original_pixels(monkeypatch):
    model = tiny_model(seed=0)
    model.config.padt_answer_format = "text"
    processor = PaDTProcessor(tiny_processor(max_pixels=196 * 112), model.vocab_size)
    image = Image.new("RGB", (200, 100), "gray")  # resized by the processor to 196 x 112
    answer = processor.encode('The "the cat" refers to [49,28,98,84] in this image.<|im_end|>')

    def fake_generate(input_ids, **kwargs):
        return torch.cat([input_ids, torch.tensor([answer])], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    [pred] = predict(model, processor, [image], ["the cat"], task="rec")
    assert pred.text.startswith('The "the cat" refers to [49,28,98,84]')
    [obj] = pred.objects
    assert obj.label == "the cat" and obj.score == 1.0 and obj.mask is None and obj.vrt_ids == []
    assert obj.box_xyxy == pytest.approx((49 / 196 * 200, 28 / 112 * 100, 98 / 196 * 200, 84 / 112 * 100))
    assert pred.warnings == []
    # A mask-box weight cannot apply to boxes without masks: the answer says so instead of ignoring it silently.
    [blended] = predict(model, processor, [image], ["the cat"], task="rec", mask_box_weight=0.5)
    assert blended.objects[0].box_xyxy == obj.box_xyxy and blended.warnings == [NO_MASK_BOXES]


def test_the_model_config_chooses_the_format():
    model = tiny_model(seed=0)
    assert isinstance(answer_format_of(model), VRTAnswers)
    model.config.padt_answer_format = "text"
    fmt = answer_format_of(model)
    assert (
        isinstance(fmt, TextCoordinateAnswers)
        and fmt.coordinates == model.backbone.text_coordinates == "pixels"
    )
    with pytest.raises(PaDTError, match="unknown answer format 'xml'"):
        answer_format("xml")
