"""The synthetic world's scenes: coloured shapes on textured backgrounds, with exact masks.

A :class:`Scene` holds 1 to 8 objects. Each object is a kind (:data:`SHAPES`) in a colour (:data:`COLOURS`)
and a size (:data:`SIZES`), drawn at a random position on a noisy, textured background whose sides are drawn
from :func:`image_sides`. A kind is an outline *and* a surface pattern of its own (:data:`SURFACES`: stripes,
checks, dots, a grid or plain), drawn in the object's colour and a tint of it (:func:`tint`) with a period of
8 px, so that every 14-px ViT patch of an object shows what kind it is: a vision tower trained from scratch
at tiny scale learns colour and size from a single patch within minutes, but not the identity of a rotated
20-px polygon, which is spread over several patches. Backgrounds are muted greys with low-contrast
textures, so an object's saturated, high-contrast pattern never looks like background. Objects are painted in
order, later ones on top, so they overlap and occlude each other; an object's ``mask`` holds its *visible*
pixels, and an object left with too little visible area (or no foreground patch, docs/method.md §9.3 rule 4)
is not painted at all. Masks are exact: the painted pixels are the rasterised polygon, without anti-aliasing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from padt.backbones import default_geometry
from padt.errors import PaDTError

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

    @property
    def kinds(self) -> list[str]:
        """The shapes present, each once, sorted: the class list of the scene's OVD prompt in ``padt demo``."""
        return sorted({o.shape for o in self.objects})


def check_sizes(min_size: int, max_size: int) -> None:
    """A one-line error unless ``MIN_SIDE <= min_size <= max_size <= MAX_SIDE``."""
    if not MIN_SIDE <= min_size <= max_size <= MAX_SIDE:
        raise PaDTError(
            f"image sizes must satisfy {MIN_SIDE} <= min_size <= max_size <= {MAX_SIDE}, "
            f"got min_size={min_size}, max_size={max_size}"
        )


def image_sides(
    min_size: int = DEFAULT_SCENES.min_size, max_size: int = DEFAULT_SCENES.max_size
) -> tuple[int, ...]:
    """Side lengths a scene may have: the bounds and every multiple of 20 or of the default base's VRT cell
    (28 px for Qwen2.5-VL) between them.

    Multiples of the cell map one-to-one onto VRTs; the others are resized by the processor, as real images are.
    """
    check_sizes(min_size, max_size)
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
