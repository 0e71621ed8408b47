"""Property tests for the code that takes outside text: whatever it is given, it either parses or raises padt's
own one-line error (:class:`~padt.errors.PaDTError`), in bounded time; never another exception, never a hang.

Covered: the VRT completion parser and the text-box parser, COCO RLE / polygon decoding, the record readers
(PaDT records, the user JSONL format), and the inputs of ``padt score``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from padt.answers import TextCoordinateAnswers
from padt.errors import PaDTError
from padt.masks import check_rle, decode_rle, intersection_union, polygons_to_rle, segmentation_to_rle
from padt.processing.parsing import parse_completion
from padt.tiny import TINY_VOCAB_SIZE, tiny_tokenizer

# Each example is cheap; a deadline catches a slow path, the example cap keeps the module to seconds. The
# default run is derandomised, so the suite is the same on every machine; PADT_HYPOTHESIS_EXAMPLES=5000 runs a
# longer, random search (what to do after changing a parser).
_EXPLORE = int(os.environ.get("PADT_HYPOTHESIS_EXAMPLES", "0"))
FAST = settings(
    max_examples=_EXPLORE or 150,
    deadline=2000,
    derandomize=not _EXPLORE,
    database=None if not _EXPLORE else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow],
)

# JSON-like values, with the numbers that break naive code (NaN, inf, huge, negative).
numbers = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


def refuses_or_works(call, *args, **kwargs):
    """Run ``call``; padt's own error is an accepted outcome (it is the one-line error the CLI prints)."""
    try:
        return call(*args, **kwargs)
    except PaDTError as error:
        assert "\n" not in str(error), f"multi-line error: {error}"
        return None


# ------------------------------------------------------------------------------------------ completions


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


V = TINY_VOCAB_SIZE


@FAST
@given(
    ids=st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=400),  # text
            st.integers(min_value=V - 40, max_value=V + 300),  # unused rows and VRTs
            st.integers(min_value=V + 300, max_value=2**31),  # far out of range
        ),
        max_size=60,
    ),
    num_vrts=st.one_of(st.none(), st.integers(min_value=0, max_value=200)),
)
def test_completion_parser_takes_any_ids(tokenizer, ids, num_vrts):
    parsed = refuses_or_works(parse_completion, ids, tokenizer=tokenizer, vocab_size=V, num_vrts=num_vrts)
    if parsed is None:
        return
    for obj in parsed.objects:
        assert obj.vrt_indices, "an object has at least one VRT"
        assert all(0 <= i < (num_vrts if num_vrts is not None else 2**31) for i in obj.vrt_indices)
        assert [ids[t] - V for t in obj.positions] == obj.vrt_indices


@FAST
@given(
    text=st.text(
        alphabet=st.sampled_from(list('[],0123456789- "abc\n')) | st.characters(codec="utf-8"), max_size=120
    ),
    hw=st.tuples(st.integers(min_value=-2, max_value=2000), st.integers(min_value=-2, max_value=2000)),
    coordinates=st.sampled_from(["pixels", "relative1000"]),
)
def test_text_box_parser_takes_any_text(text, hw, coordinates):
    boxes = refuses_or_works(TextCoordinateAnswers(coordinates).parse_boxes, text, hw)
    for _, (x1, y1, x2, y2) in boxes or []:
        assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1


# ------------------------------------------------------------------------------------------------ masks

sizes = st.lists(st.one_of(st.integers(min_value=-3, max_value=64), numbers, st.text(max_size=3)), max_size=3)
counts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=48, max_codepoint=111), max_size=40),  # the RLE alphabet
    st.lists(st.integers(min_value=-5, max_value=5000), max_size=20),
    json_values,
)


@FAST
@given(size=sizes, counts=counts)
def test_rle_check_takes_any_value_and_what_passes_decodes(size, counts):
    rle = refuses_or_works(check_rle, {"size": size, "counts": counts})
    if rle is None:
        return
    mask = decode_rle(rle)
    h, w = rle["size"]
    assert mask.shape == (h, w)
    # What passes the check is safe for pycocotools (which spins for good on garbage counts).
    api = {
        "size": [h, w],
        "counts": rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"],
    }
    if isinstance(api["counts"], list):
        api = mask_utils.frPyObjects(api, h, w)
    assert int(mask_utils.area(api)) == int(mask.sum())
    inter, union = intersection_union(rle, rle)
    assert inter == union == int(mask.sum())


@FAST
@given(
    mask=st.integers(min_value=1, max_value=24).flatmap(
        lambda h: st.lists(st.lists(st.booleans(), min_size=7, max_size=7), min_size=h, max_size=h)
    )
)
def test_valid_rles_round_trip(mask):
    array = np.asfortranarray(np.array(mask, dtype=np.uint8))
    encoded = mask_utils.encode(array)
    rle = check_rle({"size": encoded["size"], "counts": encoded["counts"].decode()})
    assert np.array_equal(decode_rle(rle), array)


@FAST
@given(
    polygons=st.one_of(
        json_values,
        st.lists(st.lists(numbers, max_size=12), max_size=3),
        st.lists(
            st.lists(st.floats(min_value=-10, max_value=80), min_size=6, max_size=12), min_size=1, max_size=3
        ),
    ),
    hw=st.tuples(st.integers(min_value=-1, max_value=40), st.integers(min_value=-1, max_value=40)),
)
def test_polygons_and_segmentations_take_any_value(polygons, hw):
    h, w = hw
    rle = refuses_or_works(polygons_to_rle, polygons, h, w)
    if rle is not None:
        assert decode_rle(rle).shape == (h, w)
    seg = refuses_or_works(segmentation_to_rle, polygons, h, w)
    if seg is not None:
        assert seg["size"] == [h, w]


# ---------------------------------------------------------------------------------------------- readers

record_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "image": st.one_of(st.just("a.png"), json_values),
        "conversations": st.one_of(
            st.just([{"from": "human", "value": 'Find "x".'}]), st.lists(json_values, max_size=2), json_values
        ),
        "answer_template": st.one_of(st.just('The "x" refers to <|Obj_0|> in this image.'), json_values),
        "objects": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "bbox": st.one_of(st.lists(numbers, max_size=5), json_values),
                    "patches": st.one_of(st.lists(st.integers(-3, 99), max_size=4), json_values),
                    "rle": st.one_of(st.fixed_dictionaries({"size": sizes, "counts": counts}), json_values),
                    "label": json_values,
                    "iscrowd": json_values,
                    "area": json_values,
                },
            ),
            max_size=3,
        ),
        "task": st.one_of(st.sampled_from(["refering", "detection", "caption", "rec", "ovd"]), json_values),
    },
)


def _write(lines: list, suffix: str = ".jsonl") -> Path:
    folder = Path(tempfile.mkdtemp())
    path = folder / f"data{suffix}"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@FAST
@given(lines=st.lists(st.one_of(record_like, json_values, st.text(max_size=30)), min_size=1, max_size=3))
def test_record_reader_takes_any_lines(lines):
    from padt.data.records import read_records

    records = refuses_or_works(read_records, _write(lines))
    for record in records or []:
        for obj in record.objects:
            assert len(obj.bbox) == 4 and all(math.isfinite(v) for v in obj.bbox)
            assert obj.bbox[0] <= obj.bbox[2] and obj.bbox[1] <= obj.bbox[3]


user_line = st.fixed_dictionaries(
    {"image": st.one_of(st.just("a.png"), json_values)},
    optional={
        "task": st.one_of(st.sampled_from(["rec", "res", "ovd"]), json_values),
        "width": st.one_of(st.just(64), json_values),
        "height": st.one_of(st.just(48), json_values),
        "classes": st.one_of(st.lists(st.text(max_size=5), max_size=3), json_values),
        "objects": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "phrase": st.one_of(st.text(max_size=8), json_values),
                        "label": st.one_of(st.text(max_size=8), json_values),
                        "box": st.one_of(st.lists(numbers, min_size=4, max_size=4), json_values),
                        "mask": st.one_of(
                            st.fixed_dictionaries({"size": sizes, "counts": counts}), json_values
                        ),
                    },
                ),
                max_size=3,
            ),
            json_values,
        ),
    },
)


@FAST
@given(lines=st.lists(st.one_of(user_line, json_values), min_size=1, max_size=3))
def test_user_jsonl_reader_takes_any_lines(lines):
    from padt.data.readers import read_user_jsonl

    records = refuses_or_works(read_user_jsonl, _write(lines), with_patches=False)
    for record in records or []:
        for obj in record.objects:
            assert all(0.0 <= v <= 1.0 for v in obj.bbox)


# ------------------------------------------------------------------------------------------------ score


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory):
    """Two REC/RES records on a 64x48 image, with masks."""
    from padt.data.records import read_records

    folder = tmp_path_factory.mktemp("gt")
    mask = np.zeros((48, 64), dtype=np.uint8, order="F")
    mask[10:30, 5:40] = 1
    counts = mask_utils.encode(mask)["counts"].decode()
    rec = {
        "image": "a.png",
        "conversations": [{"from": "human", "value": 'Find "x".'}],
        "answer_template": 'The "x" refers to <|Obj_0|> in this image.',
        "objects": [
            {
                "bbox": [5 / 64, 10 / 48, 40 / 64, 30 / 48],
                "rle": {"size": [48, 64], "counts": counts},
                "patches": [0],
                "label": "x",
            }
        ],
        "task": "refering",
    }
    path = folder / "gt.jsonl"
    path.write_text("".join(json.dumps({**rec, "id": i}) + "\n" for i in range(2)))
    return read_records(path)


pred_object = st.fixed_dictionaries(
    {},
    optional={
        "bbox": st.one_of(st.lists(numbers, min_size=4, max_size=4), json_values),
        "score": json_values,
        "mask": st.one_of(st.fixed_dictionaries({"size": st.just([48, 64]), "counts": counts}), json_values),
        "label": json_values,
    },
)
prediction = st.fixed_dictionaries(
    {},
    optional={
        "index": st.one_of(st.integers(-2, 3), json_values),
        "width": st.one_of(st.just(64), json_values),
        "height": st.one_of(st.just(48), json_values),
        "objects": st.one_of(st.lists(pred_object, max_size=3), json_values),
    },
)


@FAST
@given(
    lines=st.lists(st.one_of(prediction, json_values), min_size=1, max_size=3),
    task=st.sampled_from(["rec", "res"]),
)
def test_score_takes_any_predictions(ground_truth, lines, task):
    from padt.evaluation.score import read_predictions, score_rec, score_res

    preds = refuses_or_works(read_predictions, _write(lines))
    if preds is None:
        return
    metrics = refuses_or_works(score_rec if task == "rec" else score_res, ground_truth, preds)
    if metrics is not None:
        values = [v for k, v in metrics.items() if isinstance(v, float)]
        assert all(0.0 <= v <= 1.0 for v in values), metrics


coco_result = st.fixed_dictionaries(
    {},
    optional={
        "image_id": st.one_of(st.sampled_from([1, 2]), json_values),
        "category_id": st.one_of(st.just(1), json_values),
        "category": st.one_of(st.just("dog"), json_values),
        "bbox": st.one_of(st.lists(numbers, min_size=4, max_size=4), json_values),
        "score": json_values,
    },
)


@FAST
@given(results=st.one_of(st.lists(coco_result, min_size=1, max_size=4), json_values))
def test_ovd_score_takes_any_results(results):
    from padt.evaluation.score import read_predictions, score_ovd

    gt = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "categories": [{"id": 1, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9], "area": 81, "iscrowd": 0}
        ],
    }
    path = _write([], suffix=".json")
    path.write_text(json.dumps(results))
    preds = refuses_or_works(read_predictions, path)
    if preds is None:
        return
    metrics = refuses_or_works(score_ovd, gt, preds)
    if metrics is not None:
        assert -1.0 <= metrics["map"] <= 1.0
