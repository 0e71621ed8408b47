"""The synthetic world's words: referring expressions (REC/RES) and captions (RIC) of a :class:`Scene`.

- REC/RES: one lowercased expression that identifies exactly one object: attributes ("the small red circle",
  "the blue shape"), an extreme ("the leftmost triangle") or a relation to another object ("the square above
  the green star"). :class:`ReferringExpression` states the semantics; an expression is used only if it
  resolves to exactly its target. :data:`FORM_WEIGHTS` says how often each form is drawn.
- RIC: a caption from a fixed grammar (:func:`ric_caption`) that mentions every object exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from padt.data.synthetic.scenes import BACKGROUNDS, Scene, SceneObject
from padt.errors import PaDTError
from padt.prompts import (
    object_placeholder,
)

EXTREMES: tuple[str, ...] = ("leftmost", "rightmost", "topmost", "bottommost")
RELATIONS: tuple[str, ...] = ("above", "below", "to the left of", "to the right of")
# Spatial words need this many pixels between box centres, so that they hold at a glance.
SPATIAL_MARGIN = 8.0
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


# ------------------------------------------------------------------------------------ referring expressions
@dataclass(frozen=True)
class Descriptor:
    """A noun phrase over attributes: ``size? colour? shape``, with ``shape`` as the head noun when absent."""

    size: str | None = None
    colour: str | None = None
    shape: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return (
            (self.size is None or obj.size == self.size)
            and (self.colour is None or obj.colour == self.colour)
            and (self.shape is None or obj.shape == self.shape)
        )

    @property
    def text(self) -> str:
        return " ".join(w for w in (self.size, self.colour, self.shape or "shape") if w)


def _descriptors_of(obj: SceneObject) -> list[Descriptor]:
    """Every non-empty combination of the object's attributes, shortest first."""
    out = []
    for use_size, use_colour, use_shape in sorted(
        ((a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1) if a or b or c), key=lambda m: (sum(m), m)
    ):
        out.append(
            Descriptor(
                obj.size if use_size else None,
                obj.colour if use_colour else None,
                obj.shape if use_shape else None,
            )
        )
    return out


def _holds(relation: str, obj: SceneObject, anchor: SceneObject) -> bool:
    """``obj <relation> anchor`` on box centres: the displacement along the relation's axis exceeds
    :data:`SPATIAL_MARGIN` and dominates the other axis."""
    (x, y), (ax, ay) = obj.centre, anchor.centre
    dx, dy = x - ax, y - ay
    if relation == "above":
        return -dy > SPATIAL_MARGIN and -dy > abs(dx)
    if relation == "below":
        return dy > SPATIAL_MARGIN and dy > abs(dx)
    if relation == "to the left of":
        return -dx > SPATIAL_MARGIN and -dx > abs(dy)
    if relation == "to the right of":
        return dx > SPATIAL_MARGIN and dx > abs(dy)
    raise ValueError(f"unknown relation {relation!r}")


def _extreme_key(extreme: str, obj: SceneObject) -> float:
    """Smaller is more extreme."""
    x, y = obj.centre
    return {"leftmost": x, "rightmost": -x, "topmost": y, "bottommost": -y}[extreme]


@dataclass(frozen=True)
class ReferringExpression:
    """A referring expression and its meaning on a scene.

    Three forms, by which optional fields are set:

    - attributes: ``the <target>`` denotes every object the descriptor matches;
    - extreme: ``the <extreme> <target>`` denotes the matching object whose centre is further
      left/right/up/down than every other matching one by more than :data:`SPATIAL_MARGIN`;
    - relation: ``the <target> <relation> the <anchor>`` denotes the matching objects that stand in
      ``relation`` (see :func:`_holds`) to the anchor, which must itself be denoted uniquely by
      ``the <anchor>``.
    """

    target: Descriptor
    extreme: str | None = None
    relation: str | None = None
    anchor: Descriptor | None = None

    @property
    def form(self) -> str:
        """``attribute``, ``extreme`` or ``relation``."""
        return (
            "relation"
            if self.relation is not None
            else "extreme"
            if self.extreme is not None
            else "attribute"
        )

    @property
    def text(self) -> str:
        head = f"the {self.extreme} {self.target.text}" if self.extreme else f"the {self.target.text}"
        if self.relation is not None and self.anchor is not None:
            return f"{head} {self.relation} the {self.anchor.text}"
        return head

    def resolve(self, scene: Scene) -> list[int]:
        """Indices of the objects of ``scene`` the expression denotes (one, if it is usable)."""
        objects = scene.objects
        matching = [i for i, o in enumerate(objects) if self.target.matches(o)]
        if self.extreme is not None:
            key = {i: _extreme_key(self.extreme, objects[i]) for i in matching}
            return [i for i in matching if all(key[i] + SPATIAL_MARGIN < key[j] for j in matching if j != i)]
        if self.relation is not None:
            anchors = ReferringExpression(self.anchor or Descriptor()).resolve(scene)
            if len(anchors) != 1:
                return []
            a = anchors[0]
            return [i for i in matching if i != a and _holds(self.relation, objects[i], objects[a])]
        return matching


def referring_expressions(scene: Scene, index: int) -> dict[str, list[ReferringExpression]]:
    """All expressions that denote exactly object ``index``, by form (attribute, extreme, relation).

    Extremes and relations are only offered with a target descriptor that matches several objects, so that
    the spatial words carry information.
    """
    objects = scene.objects
    target = objects[index]
    out: dict[str, list[ReferringExpression]] = {"attribute": [], "extreme": [], "relation": []}

    def unique(expr: ReferringExpression) -> bool:
        return expr.resolve(scene) == [index]

    ambiguous = []
    for d in _descriptors_of(target):
        expr = ReferringExpression(d)
        if unique(expr):
            out["attribute"].append(expr)
        else:
            ambiguous.append(d)
    for d in ambiguous:
        out["extreme"].extend(e for e in (ReferringExpression(d, extreme=x) for x in EXTREMES) if unique(e))
    for a, anchor in enumerate(objects):
        if a == index:
            continue
        anchor_descriptors = [
            d for d in _descriptors_of(anchor) if ReferringExpression(d).resolve(scene) == [a]
        ]
        relations = [r for r in RELATIONS if _holds(r, target, anchor)]
        for d in ambiguous:
            for r in relations:
                for ad in anchor_descriptors:
                    expr = ReferringExpression(d, relation=r, anchor=ad)
                    if unique(expr):
                        out["relation"].append(expr)
    return out


#: How often each expression form is drawn (among the forms an object has), unless a dataset says otherwise.
FORM_WEIGHTS: dict[str, float] = {"attribute": 0.4, "extreme": 0.3, "relation": 0.3}


def check_form_weights(weights: dict[str, float] | None) -> dict[str, float]:
    """``weights`` checked and completed from :data:`FORM_WEIGHTS` (forms it leaves out keep their default)."""
    if weights is None:
        return dict(FORM_WEIGHTS)
    unknown = sorted(set(weights) - set(FORM_WEIGHTS))
    if unknown:
        raise PaDTError(
            f"unknown expression form(s) {', '.join(unknown)} in form_weights; use {', '.join(FORM_WEIGHTS)}"
        )
    out = {**FORM_WEIGHTS, **{k: float(v) for k, v in weights.items()}}
    if any(not math.isfinite(v) or v < 0 for v in out.values()) or sum(out.values()) <= 0:
        raise PaDTError(f"form_weights must be finite, >= 0 and not all 0, got {out}")
    return out


def sample_referring_expression(
    scene: Scene,
    rng: np.random.Generator,
    candidates: Sequence[int] | None = None,
    weights: dict[str, float] | None = None,
) -> tuple[int, ReferringExpression] | None:
    """Pick an object among ``candidates`` (default: all) that can be referred to, and one unique expression.

    The object is drawn uniformly, its form with ``weights`` (default :data:`FORM_WEIGHTS`, 0.4/0.3/0.3 for
    attribute/extreme/relation) among the forms available for it, then the expression uniformly. A form of
    weight 0 is used only when the object has no other. Returns ``None`` if no candidate can be referred to.
    """
    weights = FORM_WEIGHTS if weights is None else check_form_weights(weights)
    indices = sorted(range(len(scene.objects)) if candidates is None else candidates)
    # The first usable object of a random order is a uniform draw among the usable ones, and spares
    # enumerating the expressions of every object.
    for chosen in (indices[int(k)] for k in rng.permutation(len(indices))):
        options = referring_expressions(scene, chosen)
        forms = [f for f in FORM_WEIGHTS if options[f]]
        if forms:
            break
    else:
        return None
    p = np.array([weights[f] for f in forms])
    if p.sum() <= 0:
        p = np.ones(len(forms))
    form = forms[int(rng.choice(len(forms), p=p / p.sum()))]
    expressions = options[form]
    return chosen, expressions[int(rng.integers(len(expressions)))]


def expression_form(text: str) -> str:
    """The form (``attribute``, ``extreme``, ``relation``) of a generated expression, read from its words."""
    if any(f" {relation} the " in text for relation in RELATIONS):
        return "relation"
    if any(text.startswith(f"the {extreme} ") for extreme in EXTREMES):
        return "extreme"
    return "attribute"


# ---------------------------------------------------------------------------------------------- captions
def reading_order(scene: Scene, indices: Sequence[int]) -> list[int]:
    """Left to right by box centre, then top to bottom, then painting order."""
    return sorted(indices, key=lambda i: (scene.objects[i].centre[0], scene.objects[i].centre[1], i))


def ric_caption(scene: Scene) -> tuple[str, list[int]]:
    """The caption of a scene with ``<|Obj_k|>`` placeholders, and the object index of each placeholder.

    Grammar (every object appears exactly once, each noun phrase followed by its placeholder):

    - one object: ``A <size> <colour> <shape> (<OBJ>) is on a <background> background.``
    - otherwise ``There are <n> shapes on a <background> background.``, then the objects in reading order
      (left to right) are taken in pairs ``(a, b)``:
      ``<A> partly covers <b>.`` if one is painted over the other (the covering one is named first),
      else ``<A> is <relation> <b>.`` with the dominant direction from a to b (above, below, to the left of);
      an odd last object gets ``There is also <x>.``
    """
    objects = scene.objects
    mentioned: list[int] = []

    def np_(i: int, capital: bool = False) -> str:
        k = len(mentioned)
        mentioned.append(i)
        return f"{'A' if capital else 'a'} {objects[i].phrase} ({object_placeholder(k)})"

    background = BACKGROUNDS[scene.background]
    if len(objects) == 1:
        return f"{np_(0, capital=True)} is on a {background} background.", mentioned
    n = len(objects)
    count = _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)
    sentences = [f"There are {count} shapes on a {background} background."]
    order = reading_order(scene, range(n))
    for p in range(0, n - 1, 2):
        a, b = order[p], order[p + 1]
        if a in objects[b].occluders or b in objects[a].occluders:
            cover, covered = (a, b) if a in objects[b].occluders else (b, a)
            sentences.append(f"{np_(cover, capital=True)} partly covers {np_(covered)}.")
            continue
        (ax, ay), (bx, by) = objects[a].centre, objects[b].centre
        dx, dy = bx - ax, by - ay
        if abs(dy) > abs(dx):
            relation = "above" if dy > 0 else "below"
        else:
            relation = "to the left of" if dx >= 0 else "to the right of"
        sentences.append(f"{np_(a, capital=True)} is {relation} {np_(b)}.")
    if n % 2:
        sentences.append(f"There is also {np_(order[-1])}.")
    return " ".join(sentences), mentioned
