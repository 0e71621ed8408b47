"""Foreground VRT sampling and completion text (docs/method.md §8.1, §3.3): distributions over many draws,
the positional mode, and the reference's own picks and completions from the parity fixtures."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from padt.errors import PaDTError
from padt.training.sampling import fill_answer_template, sample_foreground_vrts
from parity import Settings, fixture_dirs

DRAWS = 6000


def test_five_distinct_patches_uniformly_in_random_order():
    patches = list(range(100, 112))  # 12 patches
    rng = np.random.default_rng(0)
    draws = [sample_foreground_vrts(patches, rng) for _ in range(DRAWS)]
    assert all(len(d) == 5 and len(set(d)) == 5 and set(d) <= set(patches) for d in draws)
    # Each patch is in a draw with probability 5/12; the standard error over 6000 draws is 0.0064.
    counts = Counter(p for d in draws for p in d)
    for p in patches:
        assert abs(counts[p] / DRAWS - 5 / 12) < 0.03
    # The order is random: the first slot is uniform and a draw is sorted with probability 1/5! only.
    first = Counter(d[0] for d in draws)
    assert all(abs(first[p] / DRAWS - 1 / 12) < 0.015 for p in patches)
    sorted_share = sum(d == sorted(d) for d in draws) / DRAWS
    assert sorted_share < 0.03


def test_fewer_than_five_patches_draws_with_replacement():
    patches = [3, 9, 27]
    rng = np.random.default_rng(1)
    draws = [sample_foreground_vrts(patches, rng) for _ in range(DRAWS)]
    assert all(len(d) == 5 and set(d) <= set(patches) for d in draws)
    # Independent uniform slots: each patch in a slot with probability 1/3, two slots equal with 1/3.
    slots = Counter(p for d in draws for p in d)
    assert all(abs(slots[p] / (5 * DRAWS) - 1 / 3) < 0.02 for p in patches)
    same = sum(d[0] == d[1] for d in draws) / DRAWS
    assert abs(same - 1 / 3) < 0.03


def test_exactly_five_patches_is_a_permutation():
    rng = np.random.default_rng(2)
    draws = [sample_foreground_vrts([1, 2, 3, 4, 5], rng) for _ in range(500)]
    assert all(sorted(d) == [1, 2, 3, 4, 5] for d in draws)
    assert len({tuple(d) for d in draws}) > 50  # 120 orders possible


def test_other_run_lengths_and_all_patches():
    rng = np.random.RandomState(3)
    assert len(sample_foreground_vrts([4, 8, 15, 16, 23, 42], rng, num=2)) == 2
    assert sample_foreground_vrts([42, 4, 16], rng, num=-1) == [4, 16, 42]


def test_generator_and_randomstate_are_seedable():
    patches = list(range(40))
    a = sample_foreground_vrts(patches, np.random.default_rng(7))
    assert a == sample_foreground_vrts(patches, np.random.default_rng(7))
    b = sample_foreground_vrts(patches, np.random.RandomState(7))
    assert b == sample_foreground_vrts(patches, np.random.RandomState(7))


def test_positional_picks_on_a_cross():
    # A plus sign on a 5-column grid: centre 12, arms ending at 10 (left), 2 (top), 14 (right), 22 (bottom).
    cross = [2, 7, 10, 11, 12, 13, 14, 17, 22]
    rng = np.random.default_rng(4)
    assert sample_foreground_vrts(cross, rng, random_select=False, grid_cols=5) == [12, 10, 2, 14, 22]


def test_positional_picks_choose_randomly_among_ties():
    # A 2x2 block at the top-left of a 5-column grid: every cell is nearest the centroid, and each side holds
    # two cells.
    block = [0, 1, 5, 6]
    rng = np.random.default_rng(5)
    draws = [sample_foreground_vrts(block, rng, random_select=False, grid_cols=5) for _ in range(2000)]
    allowed = ({0, 1, 5, 6}, {0, 5}, {0, 1}, {1, 6}, {5, 6})
    for slot, options in enumerate(allowed):
        seen = Counter(d[slot] for d in draws)
        assert set(seen) == options
        assert all(abs(n / 2000 - 1 / len(options)) < 0.05 for n in seen.values())


def test_sampling_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(PaDTError):
        sample_foreground_vrts([], rng)
    with pytest.raises(PaDTError, match="grid_cols"):
        sample_foreground_vrts([1, 2], rng, random_select=False)


def test_fill_answer_template():
    template = 'In this image, there are 2 "person" (<|Obj_0|>, <|Obj_1|>), 1 "dog" (<|Obj_2|>).'
    text = fill_answer_template(template, [[3, 3], [12], [7, 8, 9]])
    assert text == (
        'In this image, there are 2 "person" (<|VRT_3|><|VRT_3|>, <|VRT_12|>), 1 "dog" '
        "(<|VRT_7|><|VRT_8|><|VRT_9|>).<|im_end|>"
    )
    assert fill_answer_template("A <|Obj_0|>.", [[1]], eos=None) == "A <|VRT_1|>."
    assert fill_answer_template("No objects.", []) == "No objects.<|im_end|>"
    with pytest.raises(PaDTError, match="object 1"):
        fill_answer_template("<|Obj_0|> <|Obj_1|>", [[1]])
    with pytest.raises(PaDTError, match="no <"):
        fill_answer_template("<|Obj_0|>", [[1], [2]])
    with pytest.raises(PaDTError, match="empty"):
        fill_answer_template("<|Obj_0|>", [[]])


@pytest.mark.parametrize("fixture", fixture_dirs(), ids=lambda p: p.name)
def test_reference_picks_and_completions(fixture: Path):
    meta = json.loads((fixture / "meta.json").read_text())
    settings = Settings.from_meta(meta)
    # The fixture seeded numpy's global RNG with seed + 99 just before compute_loss, which draws each
    # object's run with np.random.choice in (sample, object) order: a RandomState in that state replays it.
    rng = np.random.RandomState(meta["seed"] + 99)
    for sample in meta["samples"]:
        runs = []
        # The reference's positional mode reads the grid width as round(image width / 28).
        grid_cols = round(sample["image_size_wh"][0] / 28)
        for obj in sample["objects"]:
            picked = sample_foreground_vrts(
                obj["patches"],
                rng,
                settings.vrts_per_object,
                random_select=settings.random_select,
                grid_cols=grid_cols,
            )
            assert picked == obj["picked"]
            runs.append(picked)
        assert fill_answer_template(sample["answer_template"], runs) == sample["completion_text"]
