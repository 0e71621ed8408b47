"""Does a model read the spatial word of an expression such as "the leftmost small square"?

    python scripts/spatial_words.py [--model PATH] [--n 300] [--seed 77]

Takes the REC queries of synthetic scenes ``(seed, n)`` (the bundled model's scene sizes) whose expression is an
*extreme* and asks each twice: as written, and with the opposite word (leftmost <-> rightmost, topmost <->
bottommost), which refers to another object of the scene. For both it reports where the first VRT of the answer
lands: on the referred object, on another object the rest of the expression matches (another "small square"),
on any other object, on the background (or the answer has no VRT). A model that reads the word moves to the other object when the
word flips; one that resolves only the noun phrase picks the same object twice (the last column). Prints a
Markdown table; ``--json`` writes the numbers too.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from padt.data.synthetic import (
    BUNDLED_SCENES,
    ReferringExpression,
    Scene,
    expression_form,
    referring_expressions,
    synthetic_sample,
)

OPPOSITE = {
    "leftmost": "rightmost",
    "rightmost": "leftmost",
    "topmost": "bottommost",
    "bottommost": "topmost",
}
PLACES = ("target", "matching", "other", "background", "no VRT")


@dataclass(frozen=True)
class Query:
    """One extreme expression of a scene and its opposite, with the objects each refers to."""

    scene: Scene
    expression: ReferringExpression
    target: int
    opposite_target: int

    @property
    def text(self) -> str:
        return self.expression.text

    @property
    def opposite_text(self) -> str:
        return ReferringExpression(self.expression.target, OPPOSITE[self.expression.extreme]).text

    @property
    def matching(self) -> list[int]:
        return [i for i, o in enumerate(self.scene.objects) if self.expression.target.matches(o)]


def extreme_of(scene: Scene, text: str) -> tuple[int, ReferringExpression]:
    """The object and the generator's extreme expression behind a record's ``text``."""
    for index in range(len(scene.objects)):
        for expression in referring_expressions(scene, index)["extreme"]:
            if expression.text == text:
                return index, expression
    raise ValueError(f"no extreme expression {text!r} in this scene")


def extreme_queries(n: int, seed: int, **scene_options: int) -> list[Query]:
    """The extreme REC queries among the first ``n`` scenes of ``synthetic:task=rec,seed=SEED`` whose opposite
    expression refers to exactly one other object."""
    queries = []
    for index in range(n):
        scene, records = synthetic_sample("rec", seed, index, **scene_options)
        text = records[0]["objects"][0]["label"]
        if expression_form(text) != "extreme":
            continue
        target, expression = extreme_of(scene, text)
        opposite = ReferringExpression(expression.target, OPPOSITE[expression.extreme]).resolve(scene)
        if len(opposite) == 1:
            queries.append(Query(scene, expression, target, opposite[0]))
    return queries


def place(scene: Scene, vrt: int | None, target: int, matching: Sequence[int]) -> str:
    """Where a first VRT (a merged-patch index, ``None`` if the answer has none) lands."""
    if vrt is None:
        return "no VRT"
    on = [i for i, o in enumerate(scene.objects) if vrt in o.patches]
    if target in on:
        return "target"
    if any(i in matching for i in on):
        return "matching"
    return "other" if on else "background"


def picked(scene: Scene, vrt: int | None) -> int | None:
    """The topmost object painted over the patch (``None`` for the background)."""
    on = [i for i, o in enumerate(scene.objects) if vrt is not None and vrt in o.patches]
    return on[-1] if on else None


def spatial_words(
    queries: Sequence[Query], first_vrts: Callable[[list[Image.Image], list[str]], list[int | None]]
) -> dict:
    """The table, given ``first_vrts(images, expressions)``: the first VRT the model writes for each query."""
    images = [q.scene.image for q in queries]
    written = first_vrts(images, [q.text for q in queries])
    flipped = first_vrts(images, [q.opposite_text for q in queries])
    table: dict = {"queries": len(queries)}
    for name, vrts, targets in (
        ("as written", written, [q.target for q in queries]),
        ("opposite word", flipped, [q.opposite_target for q in queries]),
    ):
        places = [place(q.scene, v, t, q.matching) for q, v, t in zip(queries, vrts, targets, strict=True)]
        table[name] = {p: places.count(p) / max(len(places), 1) for p in PLACES}
    same = [
        picked(q.scene, a) is not None and picked(q.scene, a) == picked(q.scene, b)
        for q, a, b in zip(queries, written, flipped, strict=True)
    ]
    table["same_object_both_ways"] = sum(same) / max(len(same), 1)
    return table


def model_first_vrts(
    pipe, batch_size: int = 16
) -> Callable[[list[Image.Image], list[str]], list[int | None]]:
    """``first_vrts`` for a :class:`padt.inference.PaDT` pipeline (greedy, its generation config)."""
    from padt.prompts import rec_prompt

    def run(images: list[Image.Image], texts: list[str]) -> list[int | None]:
        out: list[int | None] = []
        for start in range(0, len(texts), batch_size):
            preds = pipe(
                images[start : start + batch_size],
                [rec_prompt(t) for t in texts[start : start + batch_size]],
                max_new_tokens=64,
            )
            for pred in preds:
                first = pred.objects[0] if pred.objects else None
                out.append(first.vrt_ids[0] if first is not None and first.vrt_ids else None)
        return out

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--n", type=int, default=300, help="scenes to draw the queries from (default 300)")
    parser.add_argument("--seed", type=int, default=77, help="scene seed (default 77, the validation seed)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    from padt.inference import PaDT, default_model

    pipe = PaDT.from_pretrained(args.model or default_model(), device="cpu")
    queries = extreme_queries(args.n, args.seed, **asdict(BUNDLED_SCENES))
    table = spatial_words(queries, model_first_vrts(pipe))
    print(f"{table['queries']} extreme queries; first VRT of the answer:")
    print(
        "| query | on the referred object | on another object the noun phrase matches | elsewhere | background "
        "| no VRT |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("as written", "opposite word"):
        row = table[name]
        print(
            f"| {name} | {row['target']:.3f} | {row['matching']:.3f} | {row['other']:.3f} "
            f"| {row['background']:.3f} | {row['no VRT']:.3f} |"
        )
    print(f"same object both ways: {table['same_object_both_ways']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
