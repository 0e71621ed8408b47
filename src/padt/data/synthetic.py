"""A synthetic grounding world: coloured shapes on textured backgrounds, with exact masks, for all four tasks.

It is small enough to train and evaluate a tiny PaDT model on a CPU, and every answer is known exactly.

A :class:`Scene` holds 1 to 8 objects. Each object is a kind (:data:`SHAPES`) in a colour (:data:`COLOURS`)
and a size (:data:`SIZES`), drawn at a random position on a noisy, textured background whose sides are drawn
from :func:`image_sides`. A kind is an outline *and* a surface pattern of its own (:data:`SURFACES`: stripes,
checks, dots, a grid or plain), drawn in the object's colour and a tint of it (:func:`tint`) with a period of
8 px, so that every 14-px ViT patch of an object shows what kind it is: a vision tower trained from scratch
at tiny scale learns colour and size from a single patch within minutes, but not the identity of a rotated
20-px polygon, which is spread over several patches. Backgrounds are muted greys with low-contrast
textures, so an object's saturated, high-contrast pattern never looks like background. Objects are painted in
order, later ones on top, so they overlap and occlude each other; an object's ``mask`` holds its *visible*
pixels, and an object left with too little visible area (or no foreground patch, docs/method.md §9.3 rule 4) is not painted at all. Masks are exact: the painted pixels are
the rasterised polygon, without anti-aliasing.

:func:`scene_records` writes the records of one scene in the reference schema (docs/method.md §9.1) with the
reference prompts of :mod:`padt.prompts`:

- REC/RES (``task: "refering"``): one lowercased expression that identifies exactly one object: attributes
  ("the small red circle", "the blue shape"), an extreme ("the leftmost triangle") or a relation to another
  object ("the square above the green star"). :class:`ReferringExpression` states the semantics; an expression
  is used only if it resolves to exactly its target. RES is the mask output of the same records.
- OVD: the class list is the shape names, present classes plus a random subset of absent ones, shuffled.
  Answer objects follow the prompt's class order; within a class they run left to right (box centre x, then
  y, then drawing order). With ``absent_rate`` > 0, that share of the OVD records asks only for kinds the scene
  does not hold (a random non-empty subset of them), answered with the reference's "no objects" sentence.
- RIC: a caption from a fixed grammar (:func:`ric_caption`) that mentions every object exactly once.

:func:`generate_dataset` writes PNG images and ``records.jsonl``. Scene ``i`` is a pure function of
``(task, seed, i)`` and the size options, so generation can stop and resume anywhere and produces identical
bytes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm import tqdm

from padt.backbones import default_geometry
from padt.errors import PaDTError
from padt.prompts import (
    object_placeholder,
    ovd_answer_template,
    ovd_prompt,
    rec_answer_template,
    rec_prompt,
    ric_prompt,
)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (240, 215, 40),
    "purple": (140, 55, 190),
    "orange": (245, 135, 25),
}
# Circumradius in pixels. The ranges are far apart (diameters 24-32 vs 48-64) so that "small" and "large"
# are unambiguous whatever the image size; a small object is about as wide as a merged 28-px patch, so its
# surface pattern fills whole 14-px ViT patches.
SIZES: dict[str, tuple[float, float]] = {"small": (12.0, 16.0), "large": (24.0, 32.0)}
# The surface pattern of each kind, fixed in the image frame (it does not turn with the outline), so that
# horizontal and vertical stripes stay distinct. See :func:`surface_pattern`.
SURFACES: dict[str, str] = {
    "circle": "plain",
    "square": "checks",
    "triangle": "horizontal stripes",
    "star": "dots",
    "diamond": "diagonal stripes",
    "hexagon": "vertical stripes",
    "cross": "grid",
}
# Period of the surface patterns in pixels: almost two periods in every 14-px ViT patch.
PATTERN_PERIOD = 8
BACKGROUNDS: dict[str, str] = {  # kind -> adjective used in captions
    "noise": "noisy",
    "stripes": "striped",
    "checker": "checkered",
    "gradient": "shaded",
    "blotches": "mottled",
}
EXTREMES: tuple[str, ...] = ("leftmost", "rightmost", "topmost", "bottommost")
RELATIONS: tuple[str, ...] = ("above", "below", "to the left of", "to the right of")
# Spatial words need this many pixels between box centres, so that they hold at a glance.
SPATIAL_MARGIN = 8.0

TASK_CHOICES: tuple[str, ...] = ("rec", "res", "ovd", "ric", "all")
# RES shares REC's records (docs/method.md §5.2), so a mixed dataset cycles over these three.
MIXED_TASKS: tuple[str, ...] = ("rec", "ovd", "ric")
RECORDS_FILE = "records.jsonl"
SETTINGS_FILE = "synthetic.json"
MIN_SIDE, MAX_SIDE = 84, 1024
MAX_OBJECTS = 16


@dataclass(frozen=True)
class SceneOptions:
    """The size options of a scene distribution: image sides drawn from :func:`image_sides` ``(min_size,
    max_size)`` and up to ``max_objects`` objects. Every command's defaults come from the two instances below."""

    min_size: int = 112
    max_size: int = 336
    max_objects: int = 8


#: ``padt data synthetic``, ``padt eval --data synthetic:...`` and the library functions.
DEFAULT_SCENES = SceneOptions()
#: The bundled model's training distribution (``configs/bundled.yaml``), from which ``padt demo`` draws.
BUNDLED_SCENES = SceneOptions(min_size=112, max_size=196, max_objects=6)

_TASK_FIELD = {"rec": "refering", "res": "refering", "ovd": "ovd", "ric": "ric"}  # sic, as the reference
# Independent random streams per task; rec and res share theirs so that they give the same dataset.
_TASK_STREAM = {"rec": 0, "res": 0, "ovd": 1, "ric": 2, "all": 3}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


# ---------------------------------------------------------------------------------------------- scenes
@dataclass(frozen=True, eq=False)
class SceneObject:
    """One visible object of a scene.

    Attributes:
        shape, colour, size: names from :data:`SHAPES`, :data:`COLOURS`, :data:`SIZES`.
        mask: ``(H, W)`` bool, the object's visible pixels.
        box: pixel ``(x1, y1, x2, y2)`` of ``mask``, with exclusive ``x2``/``y2`` (pixel edges, as COCO).
        patches: sorted foreground merged-patch indices of ``mask`` (docs/method.md §9.3).
        occluders: indices (in :attr:`Scene.objects`) of the objects painted over part of this one.
    """

    shape: str
    colour: str
    size: str
    mask: np.ndarray
    box: tuple[int, int, int, int]
    patches: tuple[int, ...]
    occluders: tuple[int, ...] = ()

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def centre(self) -> tuple[float, float]:
        """Pixel ``(x, y)`` centre of :attr:`box`; the anchor of every spatial word."""
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2

    @property
    def phrase(self) -> str:
        """Full description without article, e.g. ``"small red circle"``."""
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered scene; :attr:`objects` are in painting order (bottom to top)."""

    image: Image.Image
    objects: tuple[SceneObject, ...]
    background: str

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def image_sides(
    min_size: int = DEFAULT_SCENES.min_size, max_size: int = DEFAULT_SCENES.max_size
) -> tuple[int, ...]:
    """Side lengths a scene may have: the bounds and every multiple of 20 or of the default base's VRT cell
    (28 px for Qwen2.5-VL) between them.

    Multiples of the cell map one-to-one onto VRTs; the others are resized by the processor, as real images are.
    """
    _check_sizes(min_size, max_size)
    cell = default_geometry().cell_px
    sides = {min_size, max_size}
    sides.update(s for s in range(min_size, max_size + 1) if s % 20 == 0 or s % cell == 0)
    return tuple(sorted(sides))


def _unit_polygon(shape: str) -> np.ndarray:
    """``(K, 2)`` vertices of a shape of circumradius ~1 centred at the origin, y pointing down."""

    def ring(n: int, radius: float = 1.0, start: float = -90.0) -> np.ndarray:
        t = np.deg2rad(start + 360.0 * np.arange(n) / n)
        return radius * np.stack([np.cos(t), np.sin(t)], axis=1)

    if shape == "circle":
        return ring(48)
    if shape == "square":
        s = 0.8
        return np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
    if shape == "triangle":
        return ring(3)
    if shape == "star":
        outer, inner = ring(5), ring(5, 0.45, -90.0 + 36.0)
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    if shape == "diamond":
        # Narrower than tall, so that it never looks like a tilted square.
        return np.array([[0.0, -1.0], [0.65, 0.0], [0.0, 1.0], [-0.65, 0.0]])
    if shape == "hexagon":
        return ring(6, start=0.0)
    if shape == "cross":
        a, b = 0.3, 0.9
        return np.array(
            [
                [-a, -b],
                [a, -b],
                [a, -a],
                [b, -a],
                [b, a],
                [a, a],
                [a, b],
                [-a, b],
                [-a, a],
                [-b, a],
                [-b, -a],
                [-a, -a],
            ]
        )
    raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


_UNIT_POLYGONS = {shape: _unit_polygon(shape) for shape in SHAPES}
# Squares, diamonds and crosses only tilt a little: a square at 45° would read as a diamond, a cross as an x.
_MAX_TILT = {
    "circle": 0.0,
    "square": 12.0,
    "diamond": 12.0,
    "cross": 12.0,
    "triangle": 180.0,
    "star": 180.0,
    "hexagon": 180.0,
}


def _polygon_mask(
    shape: str, cx: float, cy: float, radius: float, angle: float, h: int, w: int
) -> np.ndarray:
    t = math.radians(angle)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    points = _UNIT_POLYGONS[shape] @ rot.T * radius + np.array([cx, cy])
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in points], fill=1)
    return np.asarray(canvas, dtype=bool)


def tint(colour: str) -> tuple[int, int, int]:
    """The second colour of an object's surface pattern: the colour lightened halfway to white for dark colours,
    darkened to 60% for light ones (yellow, orange), so that the pattern has strong contrast in brightness and
    the hue stays the object's colour."""
    rgb = np.array(COLOURS[colour], dtype=np.float64)
    luminance = float(rgb @ [0.299, 0.587, 0.114])
    out = rgb + 0.5 * (255 - rgb) if luminance < 140 else 0.6 * rgb
    return tuple(round(float(v)) for v in out)


def surface_pattern(kind: str, h: int, w: int, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """``(H, W)`` bool: where the surface pattern of ``kind`` (:data:`SURFACES`) takes the tint colour.

    The pattern tiles the whole image with period :data:`PATTERN_PERIOD`, shifted by ``offset`` (x, y) pixels;
    an object shows it through its mask.
    """
    surface = SURFACES[kind]
    p = float(PATTERN_PERIOD)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    xx, yy = (xx + 0.5 + offset[0]) % p, (yy + 0.5 + offset[1]) % p
    if surface == "plain":
        return np.zeros((h, w), dtype=bool)
    if surface == "horizontal stripes":
        return yy < p / 2
    if surface == "vertical stripes":
        return xx < p / 2
    if surface == "diagonal stripes":  # the same 8-px period across the stripes
        return (xx + yy) % p < p / 2
    if surface == "checks":
        return (xx < p / 2) ^ (yy < p / 2)
    if surface == "dots":
        return np.hypot(xx - p / 2, yy - p / 2) < 0.22 * p
    if surface == "grid":
        return (xx < 0.25 * p) | (yy < 0.25 * p)
    raise ValueError(f"unknown surface {surface!r}")


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, str]:
    """A low-saturation textured background, ``(H, W, 3)`` float, and its kind."""
    kind = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    # Muted greys and beiges keep the six object colours easy to tell apart from the background.
    base = rng.uniform(95, 190) + rng.normal(0, 10, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    amplitude = rng.uniform(10, 25)
    if kind == "noise":
        pattern = rng.standard_normal(size=(h, w), dtype=np.float32)
    elif kind == "stripes":
        t = rng.uniform(0, math.pi)
        period = rng.uniform(6, 20)
        pattern = np.sign(np.sin(2 * math.pi * (xx * math.cos(t) + yy * math.sin(t)) / period))
    elif kind == "checker":
        cell = int(rng.integers(8, 29))
        pattern = ((xx // cell + yy // cell) % 2) * 2.0 - 1.0
    elif kind == "gradient":
        t = rng.uniform(0, 2 * math.pi)
        ramp = xx * math.cos(t) + yy * math.sin(t)
        pattern = 2 * (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0) - 1
    else:  # blotches: low-frequency noise, upsampled
        coarse = rng.normal(0, 1, size=(max(h // 24, 2), max(w // 24, 2))).astype(np.float32)
        pattern = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR))
        pattern = pattern / max(float(np.abs(pattern).max()), 1e-6)
    tint = 1.0 + rng.normal(0, 0.15, size=3)  # the pattern itself is slightly coloured
    grain = 4 * rng.standard_normal(size=(h, w, 3), dtype=np.float32)
    image = (base + amplitude * pattern[..., None] * tint + grain).astype(np.float32)
    return image, kind


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _foreground_patches(mask: np.ndarray) -> tuple[int, ...]:
    """Foreground merged-patch indices of a full-resolution mask (docs/method.md §9.3).

    The rule has exactly one implementation, in :mod:`padt.data.patches`; it is imported on first use so that
    importing this module stays light.
    """
    from padt.data.patches import foreground_patches

    return tuple(int(i) for i in foreground_patches(mask))


def _place_objects(
    rng: np.random.Generator, h: int, w: int, count: int
) -> list[tuple[str, str, str, np.ndarray]]:
    """Draw up to ``count`` objects as ``(shape, colour, size, full mask)``, in painting order.

    Centres keep a distance of 0.7 x the sum of the radii, so neighbours may overlap by a fraction of their
    size but rarely swallow each other; an object that finds no such place in 20 tries is left out.
    """
    placed: list[tuple[str, str, str, np.ndarray]] = []
    centres: list[tuple[float, float, float]] = []
    for _ in range(count):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        size = "small" if rng.random() < 0.5 else "large"
        radius = float(rng.uniform(*SIZES[size]))
        for _attempt in range(20):
            cx, cy = float(rng.uniform(radius, w - radius)), float(rng.uniform(radius, h - radius))
            if all(math.hypot(cx - x, cy - y) >= 0.7 * (radius + r) for x, y, r in centres):
                break
        else:
            continue
        angle = float(rng.uniform(-_MAX_TILT[shape], _MAX_TILT[shape]))
        centres.append((cx, cy, radius))
        placed.append((shape, colour, size, _polygon_mask(shape, cx, cy, radius, angle, h, w)))
    return placed


def make_scene(
    rng: np.random.Generator,
    *,
    width: int | None = None,
    height: int | None = None,
    min_size: int = DEFAULT_SCENES.min_size,
    max_size: int = DEFAULT_SCENES.max_size,
    min_objects: int = 1,
    max_objects: int = DEFAULT_SCENES.max_objects,
    min_visible_fraction: float = 0.6,
    min_visible_pixels: int = 60,
) -> Scene:
    """Render a random scene.

    Args:
        rng: the only source of randomness; the scene is a pure function of its state and the arguments.
        width, height: image size; each side not given is drawn from :func:`image_sides` ``(min_size,
            max_size)``.
        min_objects, max_objects: bounds of the number of objects *attempted*. Objects that find no free
            place or stay too hidden are dropped, so a scene may hold fewer (never fewer than one).
        min_visible_fraction, min_visible_pixels: an object whose visible part is smaller than this fraction
            of its full area, or than this many pixels, is not painted: too little of it would be left to
            recognise its shape.
    """
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise PaDTError(
            f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {min_objects}, {max_objects}"
        )
    sides = image_sides(min_size, max_size)
    w = int(width) if width is not None else int(sides[int(rng.integers(len(sides)))])
    h = int(height) if height is not None else int(sides[int(rng.integers(len(sides)))])
    if min(w, h) < MIN_SIDE:
        raise PaDTError(f"scene sides must be at least {MIN_SIDE} px, got {w}x{h}")
    image, background = _background(rng, h, w)

    # Redrawn in the (unlikely) case that no object survives, so that a scene always holds one.
    kept: list[tuple[int, np.ndarray, tuple[int, ...]]] = []  # (placed index, visible mask, patches)
    for _draw in range(100):
        if kept:
            break
        placed = _place_objects(rng, h, w, int(rng.integers(min_objects, max_objects + 1)))
        # Visibility is decided from the top down: a dropped object is never painted, so it hides nothing.
        occupied = np.zeros((h, w), dtype=bool)
        for i in reversed(range(len(placed))):
            full = placed[i][3]
            visible = full & ~occupied
            area = int(visible.sum())
            if area < min_visible_pixels or area < min_visible_fraction * int(full.sum()):
                continue
            patches = _foreground_patches(visible)
            if not patches:
                continue
            kept.append((i, visible, patches))
            occupied |= full
    if not kept:
        raise PaDTError(
            f"no object stays visible in a {w}x{h} scene; lower min_visible_pixels "
            f"({min_visible_pixels}) or min_visible_fraction ({min_visible_fraction})"
        )
    kept.reverse()

    # Paint bottom to top: each object's surface pattern in its colour and tint, both slightly jittered, with
    # a little noise; the pattern's phase is random.
    for i, _, _ in kept:
        shape, colour, full = placed[i][0], placed[i][1], placed[i][3]
        jitter = rng.normal(0, 8, size=3)
        base = np.array(COLOURS[colour], dtype=np.float64) + jitter
        second = np.array(tint(colour), dtype=np.float64) + jitter
        offset = tuple(float(v) for v in rng.uniform(0, PATTERN_PERIOD, size=2))
        pattern = surface_pattern(shape, h, w, offset)[full]
        image[full] = np.where(pattern[:, None], second, base) + rng.normal(0, 5, size=(int(full.sum()), 3))
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    objects = []
    for k, (i, visible, patches) in enumerate(kept):
        full = placed[i][3]
        occluders = tuple(k2 for k2 in range(k + 1, len(kept)) if bool((full & placed[kept[k2][0]][3]).any()))
        shape, colour, size, _ = placed[i]
        objects.append(SceneObject(shape, colour, size, visible, _box_of(visible), patches, occluders))
    return Scene(Image.fromarray(pixels), tuple(objects), background)


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


def check_absent_rate(rate: float) -> float:
    """``rate`` as a float if it is a share from 0 to 1, else a one-line error."""
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise PaDTError(f"absent_rate must be a number from 0 to 1 (the share of OVD records), got {rate!r}")
    return float(rate)


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
def _reading_order(scene: Scene, indices: Sequence[int]) -> list[int]:
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
    order = _reading_order(scene, range(n))
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


# ---------------------------------------------------------------------------------------------- records
def object_record(scene: Scene, obj: SceneObject, label: str) -> dict:
    """An object in the record schema (docs/method.md §9.2): normalised xyxy box, COCO RLE, patches."""
    h, w = scene.height, scene.width
    rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
    x1, y1, x2, y2 = obj.box
    return {
        "bbox": [x1 / w, y1 / h, x2 / w, y2 / h],
        "rle": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
        "patches": list(obj.patches),
        "label": label,
        "iscrowd": 0,
        "area": obj.area,
    }


def _record(image_id: int, image: str, prompt: str, answer: str, objects: list[dict], task: str) -> dict:
    return {
        "id": image_id,
        "image": image,
        "conversations": [{"from": "human", "value": prompt}],
        "answer_template": answer,
        "objects": objects,
        "task": _TASK_FIELD[task],
    }


def scene_records(
    scene: Scene,
    task: str,
    rng: np.random.Generator,
    *,
    image: str,
    image_id: int,
    refs_per_scene: int = 1,
    form_weights: dict[str, float] | None = None,
    absent_rate: float = 0.0,
) -> list[dict]:
    """The records of one scene for ``task`` (``rec``, ``res``, ``ovd`` or ``ric``) in the reference schema.

    REC/RES give up to ``refs_per_scene`` records, each about a different object (fewer if fewer objects can
    be referred to, none if none can), expression forms drawn with ``form_weights``
    (:func:`sample_referring_expression`); OVD and RIC give one. With probability ``absent_rate`` the OVD
    record lists only kinds the scene does not hold and its answer is that none is there (at 0, the default,
    no draw is made for it: the records are those of earlier padt versions).
    """
    task = task.lower()
    if task in ("rec", "res"):
        records = []
        remaining = list(range(len(scene.objects)))
        while len(records) < refs_per_scene:
            pick = sample_referring_expression(scene, rng, remaining, form_weights)
            if pick is None:
                break
            index, expr = pick
            remaining.remove(index)
            sentence = expr.text
            obj = object_record(scene, scene.objects[index], sentence)
            prompt, answer = rec_prompt(sentence), rec_answer_template(sentence)
            records.append(_record(image_id, image, prompt, answer, [obj], task))
        return records
    if task == "ovd":
        present = {o.shape for o in scene.objects}
        absent = [s for s in SHAPES if s not in present]
        if absent_rate > 0 and rng.random() < absent_rate and absent:
            names = [s for s in absent if rng.random() < 0.5] or [absent[int(rng.integers(len(absent)))]]
            names = [names[i] for i in rng.permutation(len(names))]
            prompt, answer = ovd_prompt(names), ovd_answer_template(names, [0] * len(names))
            return [_record(image_id, image, prompt, answer, [], task)]
        # As the reference's drop_rate: half of the prompts list every class, the others a random subset of
        # the absent ones.
        if rng.random() < 0.5:
            absent = [s for s in absent if rng.random() < 0.5]
        names = [s for s in SHAPES if s in present] + absent
        names = [names[i] for i in rng.permutation(len(names))]
        counts = [sum(o.shape == name for o in scene.objects) for name in names]
        objects = [
            object_record(scene, scene.objects[i], name)
            for name in names
            for i in _reading_order(scene, [i for i, o in enumerate(scene.objects) if o.shape == name])
        ]
        prompt, answer = ovd_prompt(names), ovd_answer_template(names, counts)
        return [_record(image_id, image, prompt, answer, objects, task)]
    if task == "ric":
        caption, order = ric_caption(scene)
        objects = [object_record(scene, scene.objects[i], "") for i in order]
        return [_record(image_id, image, ric_prompt(), caption, objects, task)]
    raise PaDTError(f"unknown task {task!r} for one scene; choose one of rec, res, ovd, ric")


# ---------------------------------------------------------------------------------------------- datasets
def scene_task(task: str, index: int) -> str:
    """The task of scene ``index`` of a dataset: ``task`` itself, or for ``all`` a cycle over
    :data:`MIXED_TASKS`."""
    return MIXED_TASKS[index % len(MIXED_TASKS)] if task == "all" else task


def image_name(index: int) -> str:
    """File name of scene ``index``."""
    return f"{index:06d}.png"


def synthetic_sample(
    task: str,
    seed: int,
    index: int,
    *,
    min_size: int = DEFAULT_SCENES.min_size,
    max_size: int = DEFAULT_SCENES.max_size,
    max_objects: int = DEFAULT_SCENES.max_objects,
    refs_per_scene: int = 1,
    form_weights: dict[str, float] | None = None,
    absent_rate: float = 0.0,
) -> tuple[Scene, list[dict]]:
    """Scene ``index`` of the dataset ``(task, seed)`` and its records.

    A pure function of its arguments: its random stream is derived from ``(seed, task, index)`` alone, which
    is what makes :func:`generate_dataset` resumable. A scene without a usable referring expression is
    redrawn from the same stream.
    """
    rng = np.random.default_rng([seed, _TASK_STREAM[task], index])
    this_task = scene_task(task, index)
    for _ in range(100):
        scene = make_scene(rng, min_size=min_size, max_size=max_size, max_objects=max_objects)
        records = scene_records(
            scene,
            this_task,
            rng,
            image=image_name(index),
            image_id=index,
            refs_per_scene=refs_per_scene,
            form_weights=form_weights,
            absent_rate=absent_rate,
        )
        if records:
            return scene, records
    raise RuntimeError(f"no scene with a referring expression after 100 draws (seed {seed}, index {index})")


@dataclass(frozen=True)
class GenerationSummary:
    """What :func:`generate_dataset` did."""

    records_path: Path
    scenes: int
    new_scenes: int
    new_records: int


def _check_sizes(min_size: int, max_size: int) -> None:
    if not MIN_SIDE <= min_size <= max_size <= MAX_SIDE:
        raise PaDTError(
            f"image sizes must satisfy {MIN_SIDE} <= min_size <= max_size <= {MAX_SIDE}, "
            f"got min_size={min_size}, max_size={max_size}"
        )


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse to mix scenes generated with different settings in one folder."""
    path = out / SETTINGS_FILE
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != settings:
            raise PaDTError(
                f"{out} holds a synthetic dataset generated with other settings ({previous}); "
                "use another output folder or the same settings"
            )
        return
    if (out / RECORDS_FILE).exists():
        raise PaDTError(
            f"{out / RECORDS_FILE} exists but was not written by this generator; use another output folder"
        )
    path.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")


def _completed_ids(path: Path) -> set[int]:
    """Ids of the scenes whose records are fully written.

    An interrupted run can leave a torn last line; it is cut off together with the other records of the last
    scene, which is then regenerated (identically).
    """
    if not path.exists():
        return set()
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    ids: list[int] = []
    for number, line in enumerate(complete, 1):
        try:
            ids.append(int(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise PaDTError(
                f"{path}:{number} is not a record ({exc}); remove the file to start over"
            ) from exc
    if tail:
        while ids and len(ids) > 1 and ids[-2] == ids[-1]:
            ids.pop()
        if ids:
            ids.pop()
        keep = sum(len(line) + 1 for line in complete[: len(ids)])
        with path.open("r+b") as f:
            f.truncate(keep)
    return set(ids)


def _json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def _save_png(image: Image.Image, path: Path) -> None:
    # Write then rename, so that an interrupted run never leaves a truncated image under the final name.
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def generate_dataset(
    task: str,
    n: int,
    seed: int,
    out_dir: str | os.PathLike,
    *,
    min_size: int = DEFAULT_SCENES.min_size,
    max_size: int = DEFAULT_SCENES.max_size,
    max_objects: int = DEFAULT_SCENES.max_objects,
    refs_per_scene: int = 1,
    form_weights: dict[str, float] | None = None,
    absent_rate: float = 0.0,
    progress: bool = True,
) -> GenerationSummary:
    """Write scenes ``0 .. n-1`` of the dataset ``(task, seed)`` to ``out_dir``: PNGs and ``records.jsonl``.

    Args:
        task: ``rec``, ``res`` (the same records as ``rec``), ``ovd``, ``ric`` or ``all`` (scenes cycle over
            rec, ovd and ric).
        n: number of scenes (images). REC/RES scenes give ``refs_per_scene`` records each when they can.
        seed: non-negative; same arguments, same bytes.
        out_dir: created if needed. Records are appended scene by scene and images written atomically, so an
            interrupted run resumes where it stopped; scenes already recorded are skipped, and a larger ``n``
            extends the dataset. The settings are kept in ``synthetic.json``, and a folder generated with
            other settings is refused.
        min_size, max_size: bounds of the image sides (:func:`image_sides`).
        max_objects: most objects per scene (at least one).
        form_weights: how often REC/RES draw each expression form (``attribute``, ``extreme``, ``relation``;
            default :data:`FORM_WEIGHTS`); a form left out keeps its default weight. Only the expressions
            change, not the scenes.
        absent_rate: the share of OVD records that list only kinds the scene does not hold (answer: none is
            there), from 0 (default) to 1; only the OVD records change, not the scenes.
        progress: show a progress bar.
    """
    task = task.lower()
    if task not in TASK_CHOICES:
        raise PaDTError(f"unknown task {task!r}; choose one of {', '.join(TASK_CHOICES)}")
    if n < 0:
        raise PaDTError(f"the number of scenes must be >= 0, got {n}")
    if seed < 0:
        raise PaDTError(f"the seed must be >= 0, got {seed}")
    _check_sizes(min_size, max_size)
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise PaDTError(f"max_objects must be between 1 and {MAX_OBJECTS}, got {max_objects}")
    if refs_per_scene < 1:
        raise PaDTError(f"refs_per_scene must be >= 1, got {refs_per_scene}")
    weights = check_form_weights(form_weights)
    absent_rate = check_absent_rate(absent_rate)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "generator": "padt.data.synthetic",
        "version": 2,
        "task": task,
        "seed": seed,
        "min_size": min_size,
        "max_size": max_size,
        "max_objects": max_objects,
        "refs_per_scene": refs_per_scene,
    }
    if weights != FORM_WEIGHTS:  # folders written with the default mix keep their settings file as before
        settings["form_weights"] = weights
    if absent_rate:  # likewise
        settings["absent_rate"] = absent_rate
    _check_settings(out, settings)
    records_path = out / RECORDS_FILE
    done = _completed_ids(records_path)
    new_scenes = new_records = 0
    with (
        records_path.open("a", encoding="utf-8") as f,
        tqdm(total=n, desc=f"synthetic {task}", unit="scene", disable=not progress) as bar,
    ):
        for index in range(n):
            if index not in done:
                scene, records = synthetic_sample(
                    task,
                    seed,
                    index,
                    min_size=min_size,
                    max_size=max_size,
                    max_objects=max_objects,
                    refs_per_scene=refs_per_scene,
                    form_weights=weights,
                    absent_rate=absent_rate,
                )
                path = out / image_name(index)
                if not path.exists():
                    _save_png(scene.image, path)
                # One write per scene, after its image: a record never points at a missing file.
                f.write("".join(_json_line(r) for r in records))
                f.flush()
                new_scenes += 1
                new_records += len(records)
            bar.update()
    return GenerationSummary(records_path, n, new_scenes, new_records)
