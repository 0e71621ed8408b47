"""Which VRTs name an object in a training completion (docs/method.md §8.1).

Every step, each object of a sample is written as a run of VRTs drawn afresh from its foreground patches
(§9.3), and its ``<|Obj_k|>`` placeholder in the answer template is replaced by that run. Drawing anew each
step, together with the robust token loss (§8.3), teaches the model that any foreground patch names the
object.

Randomness comes from an explicit ``numpy`` generator. A ``numpy.random.RandomState`` seeded like the
reference's global RNG reproduces its draws exactly; a ``numpy.random.Generator`` draws from the same
distribution with a different stream.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from padt.data.records import PLACEHOLDER_PATTERN
from padt.errors import PaDTError
from padt.vrt import vrt_token

RandomSource = np.random.Generator | np.random.RandomState

# The reference's default run length (``random_select_patch_num``).
DEFAULT_VRTS_PER_OBJECT = 5


def sample_foreground_vrts(
    foreground_patches: Sequence[int],
    rng: RandomSource,
    num: int = DEFAULT_VRTS_PER_OBJECT,
    *,
    random_select: bool = True,
    grid_cols: int | None = None,
) -> list[int]:
    """Patch indices to write for one object this step.

    Args:
        foreground_patches: the object's foreground patch indices (raster over its image's merged grid).
        rng: the random source.
        num: run length. With ``num >= 0``: ``num`` draws in random order, without replacement when the
            object has at least ``num`` patches and with replacement (duplicates possible) otherwise. With
            ``num < 0``: every foreground patch, in index order.
        random_select: ``False`` selects by position instead (the reference's ``random_select_patch=False``):
            one random patch each from the patches nearest the centroid, the left-most column, the top row,
            the right-most column and the bottom row, in that order (always 5; ``num`` is not used). The
            reference names these five groups without saying how "centre" is found; here it is the cells
            nearest the centroid of the object's cells.
        grid_cols: columns of the merged grid, needed for ``random_select=False``. The reference uses
            ``round(image_width / 28)``, which is wrong when the processor resized the image; pass the real
            grid width.
    """
    patches = [int(p) for p in foreground_patches]
    if not patches:
        raise PaDTError("an object has no foreground patch; drop it from the sample (docs/method.md §9.3)")
    if not random_select:
        if grid_cols is None or grid_cols <= 0:
            raise PaDTError("selecting VRTs by position needs grid_cols, the merged grid's width")
        return _positional_picks(patches, rng, int(grid_cols))
    if num < 0:
        return sorted(patches)
    # The same call as the reference (np.random.choice), so a RandomState in the reference's state draws
    # the same patches in the same order.
    picked = rng.choice(patches, num, replace=len(patches) < num)
    return [int(p) for p in picked]


def _positional_picks(patches: list[int], rng: RandomSource, grid_cols: int) -> list[int]:
    cells = np.asarray(patches)
    rows, cols = cells // grid_cols, cells % grid_cols
    centre_dist = (rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2
    groups = (
        centre_dist == centre_dist.min(),
        cols == cols.min(),
        rows == rows.min(),
        cols == cols.max(),
        rows == rows.max(),
    )
    return [int(rng.choice(cells[group])) for group in groups]


def fill_answer_template(
    answer_template: str, vrt_runs: Sequence[Sequence[int] | str], *, eos: str | None = "<|im_end|>"
) -> str:
    """The training completion: each ``<|Obj_k|>`` replaced by object ``k``'s VRT run, then ``eos``.

    Args:
        answer_template: the record's answer with ``<|Obj_k|>`` placeholders.
        vrt_runs: per object ``k``, the local VRT indices to write (``id - V``: the patch index, plus the
            image's offset within the sample when a sample has several images). A run is written as
            consecutive ``<|VRT_i|>`` strings with nothing between them (§3.3). A string is written as it is
            (how the text-coordinate baseline, :class:`padt.answers.TextCoordinateAnswers`, refers to objects).
        eos: appended after the answer (the tokenizer's eos, ``<|im_end|>``); ``None`` appends nothing.
    """
    used: set[int] = set()

    def run(match: re.Match[str]) -> str:
        k = int(match.group(1))
        if k >= len(vrt_runs):
            raise PaDTError(
                f"the answer template names object {k} but only {len(vrt_runs)} VRT runs were given; "
                "pass one run per object of the record"
            )
        if not vrt_runs[k]:
            raise PaDTError(f"object {k} has an empty VRT run; every object needs at least one VRT")
        used.add(k)
        if isinstance(vrt_runs[k], str):
            return vrt_runs[k]
        return "".join(vrt_token(int(i)) for i in vrt_runs[k])

    text = PLACEHOLDER_PATTERN.sub(run, answer_template)
    unused = sorted(set(range(len(vrt_runs))) - used)
    if unused:
        raise PaDTError(
            f"objects {unused} have no <|Obj_k|> placeholder in the answer template; the template and the "
            "objects must come from the same record"
        )
    return text + (eos or "")
