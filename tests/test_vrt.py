"""The VRT id space: local <-> global ids, per-image ranges, and the per-sample logit mask."""

import pytest
import torch

from padt.backbones import get_backbone
from padt.vrt import VRTLayout, vrt_token, vrts_per_image

V = 100
# Three images: 4x4 patches (N=4), 4x6 (N=6), 2x2 (N=1).
GRID = torch.tensor([[1, 4, 4], [1, 4, 6], [1, 2, 2]])
IMAGE = 7
M = 2  # merge size


def layout_of(ids: torch.Tensor, grid: torch.Tensor = GRID) -> VRTLayout:
    return VRTLayout.from_input_ids(ids, grid, vocab_size=V, image_token_id=IMAGE, merge_size=M)


def ids_with_images(counts_per_row: list[list[int]], length: int = 20) -> torch.Tensor:
    rows = []
    for counts in counts_per_row:
        row = [1] * length
        pos = 0
        for n in counts:
            row[pos : pos + n] = [IMAGE] * n
            pos += n + 1
        rows.append(row)
    return torch.tensor(rows)


def test_sizes_and_grid():
    assert vrts_per_image(GRID, M).tolist() == [4, 6, 1]
    assert get_backbone("qwen2_5_vl").geometry.grid_thw_to_vrt_grid(GRID[1]) == (2, 3)
    assert vrt_token(12) == "<|VRT_12|>"


def test_one_image_per_sample_matches_reference_offsets():
    layout = layout_of(ids_with_images([[4], [6], [1]]))
    assert layout.image_global_offset.tolist() == [0, 4, 10]
    assert layout.num_vrts == 11
    local = torch.tensor([[V + 3, 5], [V + 5, V + 0], [V + 0, 9]])
    glob = layout.to_global(local)
    assert glob.tolist() == [[V + 3, 5], [V + 9, V + 4], [V + 10, 9]]
    assert torch.equal(layout.to_local(glob), local)


def test_several_images_and_text_only_samples():
    # Row 0 owns images 0 and 1, row 1 is text-only, row 2 owns image 2.
    ids = ids_with_images([[4, 6], [], [1]])
    layout = layout_of(ids)
    assert layout.image_sample.tolist() == [0, 0, 2]
    assert layout.sample_num_vrts.tolist() == [10, 0, 1]
    assert layout.sample_global_offset.tolist() == [0, 10, 10]
    assert layout.image_local_offset.tolist() == [0, 4, 0]
    # Local index 5 of row 0 is patch 1 of its second image; globally row 10 - V... of the batch.
    assert layout.locate(0, 5) == (1, 1)
    assert layout.locate(2, 0) == (2, 0)
    assert layout.split(0, [5, 0, 3, 4]) == [(1, 1), (0, 0), (0, 3), (1, 0)]
    # Global ids of patches of an image, and local indices within its sample, from the layout alone.
    assert layout.global_ids(1, [0, 5]) == [V + 4, V + 9]
    assert layout.local_ids(1, [0, 5]) == [4, 9]
    assert layout.global_ids(2, [0]) == [V + 10]
    with pytest.raises(ValueError, match="outside image 1's 6 VRTs"):
        layout.global_ids(1, [6])
    local = torch.tensor([[V + 9, 3], [3, 4], [V + 0, 1]])
    glob = layout.to_global(local)
    assert glob.tolist() == [[V + 9, 3], [3, 4], [V + 10, 1]]
    assert torch.equal(layout.to_local(glob), local)
    mask = layout.allowed_mask()
    assert mask.shape == (3, V + 11)
    assert mask[:, :V].all()
    assert mask[0, V : V + 10].all() and not mask[0, V + 10]
    assert not mask[1, V:].any()
    assert mask[2, V + 10] and not mask[2, V : V + 10].any()


def test_out_of_range_vrt_ids_are_refused():
    ids = ids_with_images([[4, 6], [], [1]])
    layout = layout_of(ids)
    with pytest.raises(ValueError, match="local VRT index 10 at sample 0, position 0 is out of range"):
        layout.to_global(torch.tensor([[V + 10], [1], [1]]))
    # Global ids: another row's image, or before the row's own range, are refused by the same check.
    with pytest.raises(ValueError, match="global VRT index 1 at sample 2"):
        layout.check_global_ids(torch.tensor([[1], [1], [V + 11]]))
    with pytest.raises(ValueError, match="was it already local"):
        layout.to_local(torch.tensor([[1], [1], [V + 3]]))
    with pytest.raises(ValueError, match="sample 1"):
        layout.to_global(torch.tensor([[1], [V], [1]]))
    with pytest.raises(ValueError, match="out of range for sample 2"):
        layout.locate(2, 1)


def test_image_tokens_must_match_grids():
    with pytest.raises(ValueError, match="do not match image_grid_thw"):
        layout_of(ids_with_images([[5]]), GRID[:1])
    with pytest.raises(ValueError, match="has 3 images"):
        layout_of(ids_with_images([[4]]))
