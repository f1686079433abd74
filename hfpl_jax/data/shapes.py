"""The ``hfpl_shapes`` synthetic WSSS dataset: procedurally drawn, exact masks, no download.

Each image shows one to four objects from ``NUM_CLASSES = 6`` classes on a cluttered, textured
background. A class is a (shape, texture) pair, shapes {disc, square, triangle} x textures
{stripes, checkerboard}; every object gets a random colour, so colour alone never names the class,
and a classifier must combine shape and texture. What makes class activation maps (CAMs) from
image-level labels far from perfect, by design:

- *distractors*: background bars and blobs carry the same stripe/checker textures as the objects
  (and plain/dotted ones), so texture detectors fire on background;
- *occlusion*: objects overlap (later ones hide earlier ones, at least 40% of each stays visible),
  thin background bars may cross in front of objects, and objects are cut by the image border;
- *weak edges*: about one object in five takes its colour from the background around it, so its
  boundary is a low-contrast edge; the rest differ in colour, so most boundaries sit on colour edges
  (what the feature-similarity loss exploits);
- varied sizes (radius 12-32% of the short side), positions, rotations, aspect stretches, texture
  periods and orientations, smooth illumination, sensor noise and an optional blur.

Masks are exact: the value at a pixel is the class (1..K) of the topmost object whose geometry
covers that pixel centre, 0 elsewhere, and optionally 255 in a ``void_band``-pixel band along every
boundary between two different values (VOC's "void" band). Labels are the multi-hot set of
classes visible in the mask. Generation depends only on ``(seed, split, index)``, drawn from a
NumPy ``Generator`` (``PCG64`` via ``SeedSequence``), so an example is the same whichever order or
process builds it; ``GENERATOR_VERSION`` changes whenever the drawing code changes what comes out.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

GENERATOR_VERSION = "1.1.0"

SHAPES = ("disc", "square", "triangle")
TEXTURES = ("stripes", "checker")
CLASS_NAMES = tuple(f"{texture}_{shape}" for shape in SHAPES for texture in TEXTURES)
NUM_CLASSES = len(CLASS_NAMES)
SPLITS = ("train", "val")

# The square's half-side and the triangle's circumradius give the same area as the unit disc, so
# the three shapes differ in outline rather than in size.
_SQUARE_HALF_SIDE = math.sqrt(math.pi) / 2.0
_TRIANGLE_CIRCUMRADIUS = math.sqrt(4.0 * math.pi / (3.0 * math.sqrt(3.0)))

_OBJECT_COUNT_PROBS = (0.45, 0.30, 0.15, 0.10)  # 1, 2, 3, 4 objects (VOC-like: mostly one or two)
_LOW_CONTRAST_PROB = 0.2
_MIN_VISIBLE_FRACTION = 0.4


@dataclasses.dataclass(frozen=True)
class ShapesParams:
    """Size and seed of a generated ``hfpl_shapes`` dataset.

    Attributes:
      image_size: long side of every image in pixels; the short side is drawn uniformly in
        [min_aspect, 1] x image_size, and 70% of images are landscape.
      min_aspect: smallest short/long side ratio.
      num_train, num_val: examples in the ``train`` and ``val`` splits.
      seed: base seed; example i of split s uses SeedSequence([seed, s, i]).
      void_band: width in pixels of the 255 band along object boundaries (0 = no void pixels).
      max_objects: cap on objects per image (1..4).
    """

    image_size: int = 160
    min_aspect: float = 0.75
    num_train: int = 3000
    num_val: int = 500
    seed: int = 0
    void_band: int = 0
    max_objects: int = 4

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size < 32:
            raise ValueError(f"image_size must be an int >= 32, got {self.image_size!r}")
        if not 0.3 <= self.min_aspect <= 1.0:
            raise ValueError(f"min_aspect must lie in [0.3, 1], got {self.min_aspect!r}")
        for field in ("num_train", "num_val"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive int, got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not isinstance(self.void_band, int) or not 0 <= self.void_band <= 8:
            raise ValueError(f"void_band must be an int in [0, 8], got {self.void_band!r}")
        if self.max_objects not in (1, 2, 3, 4):
            raise ValueError(f"max_objects must be 1, 2, 3 or 4, got {self.max_objects!r}")

    def num_examples(self, split: str) -> int:
        """Number of examples of ``split`` ("train" or "val")."""
        if split not in SPLITS:
            raise ValueError(f"hfpl_shapes has splits {SPLITS}, got split={split!r}")
        return self.num_train if split == "train" else self.num_val

    def config_name(self) -> str:
        """A directory-safe name that identifies these parameters ("default" for the defaults)."""
        if self == ShapesParams():
            return "default"
        aspect = f"{self.min_aspect:.3f}".rstrip("0").rstrip(".")
        return (
            f"s{self.image_size}_a{aspect}_n{self.num_train}-{self.num_val}"
            f"_seed{self.seed}_void{self.void_band}_obj{self.max_objects}"
        ).replace(".", "p")


@dataclasses.dataclass
class _Canvas:
    """Pixel-centre coordinates of an H x W image, shared by every drawing call."""

    height: int
    width: int

    def __post_init__(self):
        self.y, self.x = np.meshgrid(
            np.arange(self.height, dtype=np.float32) + 0.5,
            np.arange(self.width, dtype=np.float32) + 0.5,
            indexing="ij",
        )


def _rotate(canvas: _Canvas, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates relative to (cx, cy), rotated by -angle: (u, v) each (H, W) float32."""
    dx = canvas.x - np.float32(cx)
    dy = canvas.y - np.float32(cy)
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    return dx * cos + dy * sin, dy * cos - dx * sin


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of a unit-area-equivalent shape on normalised object coordinates (u, v)."""
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= _SQUARE_HALF_SIDE
    if shape == "triangle":
        inradius = _TRIANGLE_CIRCUMRADIUS / 2.0
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            phi = -math.pi / 2.0 + 2.0 * math.pi * k / 3.0
            inside &= u * math.cos(phi) + v * math.sin(phi) <= inradius
        return inside
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _texture(rng: np.random.Generator, canvas: _Canvas, kind: str, cx: float, cy: float):
    """A binary (or grey for "noise") pattern in [0, 1], (H, W) float32, with a random
    orientation, period and phase."""
    angle = rng.uniform(0.0, math.pi)
    u, v = _rotate(canvas, cx + rng.uniform(-20, 20), cy + rng.uniform(-20, 20), angle)
    # Periods of at least 5 px keep stripes and checks legible after the 0.7x downscales of
    # small-crop training (resize_long (112, 176) on 160-px images).
    if kind == "stripes":
        half_period = rng.uniform(2.5, 5.0)
        return (np.floor(u / half_period) % 2).astype(np.float32)
    if kind == "checker":
        cell = rng.uniform(3.0, 6.0)
        return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    if kind == "dots":
        spacing = rng.uniform(4.0, 8.0)
        du = u % spacing - spacing / 2
        dv = v % spacing - spacing / 2
        return (du * du + dv * dv < (0.3 * spacing) ** 2).astype(np.float32)
    if kind == "noise":
        cells = rng.random((canvas.height // 4 + 2, canvas.width // 4 + 2), dtype=np.float32)
        return np.repeat(np.repeat(cells, 4, axis=0), 4, axis=1)[: canvas.height, : canvas.width]
    if kind == "plain":
        return np.zeros((canvas.height, canvas.width), np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(25.0, 230.0, size=3).astype(np.float32)


def _second_colour(rng: np.random.Generator, base: np.ndarray, amplitude: float) -> np.ndarray:
    """A colour at L2 distance ``amplitude`` from ``base``, random direction (before clipping)."""
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-6
    # Half the amplitude along luminance keeps the pattern visible on saturated colours.
    direction = 0.5 * direction + 0.5 * np.sign(128.0 - base.mean()) * np.ones(3) / math.sqrt(3)
    direction /= np.linalg.norm(direction) + 1e-6
    return np.clip(base + amplitude * direction, 0.0, 255.0).astype(np.float32)


def _paint(image: np.ndarray, region: np.ndarray, pattern: np.ndarray, c0, c1) -> None:
    """image[region] = c0 + pattern * (c1 - c0), in place; image (H, W, 3) float32."""
    p = pattern[region][:, None]
    image[region] = c0[None, :] + p * (c1 - c0)[None, :]


def _smooth_field(rng: np.random.Generator, canvas: _Canvas, grid: int, channels: int):
    """A smooth random field: a grid x grid lattice of N(0,1) values, bilinearly interpolated to
    (H, W, channels) float32."""
    lattice = rng.normal(size=(grid, grid, channels)).astype(np.float32)
    gy = (canvas.y[:, 0] / canvas.height) * (grid - 1)
    gx = (canvas.x[0, :] / canvas.width) * (grid - 1)
    y0 = np.clip(np.floor(gy).astype(int), 0, grid - 2)
    x0 = np.clip(np.floor(gx).astype(int), 0, grid - 2)
    wy = (gy - y0)[:, None, None]
    wx = (gx - x0)[None, :, None]
    top = lattice[y0][:, x0] * (1 - wx) + lattice[y0][:, x0 + 1] * wx
    bottom = lattice[y0 + 1][:, x0] * (1 - wx) + lattice[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _draw_background(rng: np.random.Generator, canvas: _Canvas) -> np.ndarray:
    """Smooth colour gradients plus a faint texture: (H, W, 3) float32 in about [0, 255]."""
    mean = _random_colour(rng)
    image = mean[None, None, :] + 45.0 * _smooth_field(rng, canvas, int(rng.integers(3, 6)), 3)
    kind = rng.choice(["noise", "stripes", "plain", "dots"], p=[0.4, 0.2, 0.25, 0.15])
    pattern = _texture(rng, canvas, str(kind), canvas.width / 2, canvas.height / 2)
    image += rng.uniform(4.0, 18.0) * (pattern[..., None] - 0.5)
    return image


def _draw_distractor(rng: np.random.Generator, canvas: _Canvas, image: np.ndarray) -> np.ndarray:
    """Paints one textured background object (a bar or an irregular blob) and returns its region."""
    short = min(canvas.height, canvas.width)
    cx, cy = rng.uniform(0, canvas.width), rng.uniform(0, canvas.height)
    u, v = _rotate(canvas, cx, cy, rng.uniform(0, 2 * math.pi))
    if rng.random() < 0.55:
        half_length = rng.uniform(0.15, 0.45) * short
        half_width = rng.uniform(1.0, 3.5)
        region = (np.abs(u) <= half_length) & (np.abs(v) <= half_width)
    else:
        # A blob whose radius wobbles with angle (harmonics 2..5): it reads as none of the shapes.
        radius = rng.uniform(0.06, 0.16) * short
        theta = np.arctan2(v, u)
        wobble = np.ones_like(theta)
        for harmonic in rng.choice([2, 3, 4, 5], size=2, replace=False):
            wobble += rng.uniform(0.2, 0.35) * np.cos(
                harmonic * theta + rng.uniform(0, 2 * math.pi)
            )
        region = np.sqrt(u * u + v * v) <= radius * wobble
    kind = str(
        rng.choice(["stripes", "checker", "dots", "plain", "noise"], p=[0.3, 0.3, 0.2, 0.1, 0.1])
    )
    base = _random_colour(rng)
    _paint(
        image,
        region,
        _texture(rng, canvas, kind, cx, cy),
        base,
        _second_colour(rng, base, rng.uniform(35.0, 80.0)),
    )
    return region


@dataclasses.dataclass
class _Object:
    class_index: int  # 0-based
    region: np.ndarray  # (H, W) bool, the full geometry inside the image


def _propose_object(rng: np.random.Generator, canvas: _Canvas) -> _Object:
    short = min(canvas.height, canvas.width)
    class_index = int(rng.integers(NUM_CLASSES))
    shape = SHAPES[class_index // len(TEXTURES)]
    radius = rng.uniform(0.12, 0.32) * short
    stretch = math.exp(rng.uniform(-0.22, 0.22))
    cx = rng.uniform(0.08, 0.92) * canvas.width
    cy = rng.uniform(0.08, 0.92) * canvas.height
    u, v = _rotate(canvas, cx, cy, rng.uniform(0, 2 * math.pi))
    return _Object(class_index, _shape_mask(shape, u / (radius * stretch), v * stretch / radius))


def _boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within Chebyshev distance ``width`` of a 4-neighbour pair with different values."""
    edge = np.zeros(mask.shape, dtype=bool)
    vertical = mask[1:, :] != mask[:-1, :]
    horizontal = mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    band = edge.copy()
    for _ in range(width - 1):
        grown = band.copy()
        grown[1:, :] |= band[:-1, :]
        grown[:-1, :] |= band[1:, :]
        grown[:, 1:] |= band[:, :-1]
        grown[:, :-1] |= band[:, 1:]
        band = grown
    return band


def generate_example(params: ShapesParams, split: str, index: int):
    """Draws example ``index`` of ``split``.

    Returns:
      image: (H, W, 3) uint8 RGB, H, W <= params.image_size with max(H, W) == image_size.
      mask: (H, W) uint8; 0 background, 1..NUM_CLASSES, 255 void band (if params.void_band > 0).
      labels: (NUM_CLASSES,) float32 multi-hot; labels[k] = 1 iff value k+1 occurs in the mask.
    """
    num = params.num_examples(split)
    if not 0 <= index < num:
        raise ValueError(f"index must lie in [0, {num}) for split {split!r}, got {index}")
    rng = np.random.default_rng([params.seed, SPLITS.index(split), index])
    long_side = params.image_size
    short_side = int(round(long_side * rng.uniform(params.min_aspect, 1.0)))
    height, width = (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)
    canvas = _Canvas(height, width)

    image = _draw_background(rng, canvas)
    for _ in range(int(rng.integers(2, 7))):
        _draw_distractor(rng, canvas, image)

    num_objects = min(
        params.max_objects,
        1 + int(rng.choice(len(_OBJECT_COUNT_PROBS), p=_OBJECT_COUNT_PROBS)),
    )
    min_area = 0.004 * height * width
    instance = np.zeros((height, width), np.int32)  # 1-based object index of the topmost object
    objects: list[_Object] = []
    for _ in range(num_objects):
        for _attempt in range(20):
            candidate = _propose_object(rng, canvas)
            if candidate.region.sum() < min_area:
                continue
            trial = np.where(candidate.region, len(objects) + 1, instance)
            if all(
                (trial == j + 1).sum() >= _MIN_VISIBLE_FRACTION * obj.region.sum()
                for j, obj in enumerate(objects)
            ):
                objects.append(candidate)
                instance = trial
                break
    if not objects:  # 20 failed proposals in a row are very unlikely; a centred disc always fits.
        u, v = _rotate(canvas, width / 2, height / 2, 0.0)
        objects.append(_Object(0, _shape_mask("disc", u / (0.25 * height), v / (0.25 * height))))
        instance = np.where(objects[0].region, 1, instance)

    for j, obj in enumerate(objects):
        region = instance == j + 1
        cy, cx = np.argwhere(obj.region).mean(axis=0)
        if rng.random() < _LOW_CONTRAST_PROB:
            # Take the colour of what lies around the object: a weak boundary by construction.
            ring = _boundary_band(obj.region.astype(np.uint8), 4) & ~obj.region
            around = ring if ring.any() else obj.region
            base = image[around].mean(axis=0) + rng.normal(0.0, 6.0, size=3).astype(np.float32)
            amplitude = rng.uniform(22.0, 40.0)
        else:
            base = _random_colour(rng)
            amplitude = rng.uniform(40.0, 90.0)
        base = np.clip(base, 0.0, 255.0).astype(np.float32)
        texture = TEXTURES[obj.class_index % len(TEXTURES)]
        _paint(
            image,
            region,
            _texture(rng, canvas, texture, cx, cy),
            base,
            _second_colour(rng, base, amplitude),
        )

    mask = np.zeros((height, width), np.uint8)
    for j, obj in enumerate(objects):
        mask[instance == j + 1] = obj.class_index + 1

    # Thin background bars in front of the objects now and then (occlusion by "stuff").
    # A bar that would hide more than half of an object's visible pixels is not drawn, so every
    # object stays in the labels.
    if rng.random() < 0.3:
        for _ in range(int(rng.integers(1, 3))):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            u, v = _rotate(canvas, cx, cy, rng.uniform(0, 2 * math.pi))
            bar = (np.abs(u) <= rng.uniform(0.2, 0.5) * min(height, width)) & (
                np.abs(v) <= rng.uniform(0.8, 2.0)
            )
            colour = _random_colour(rng)
            if all(
                (bar & (instance == j + 1)).sum() <= 0.5 * (instance == j + 1).sum()
                for j in range(len(objects))
            ):
                _paint(image, bar, np.zeros((height, width), np.float32), colour, colour)
                mask[bar] = 0
                instance[bar] = 0

    illumination = 1.0 + 0.12 * _smooth_field(rng, canvas, 3, 1)
    image = image * illumination + rng.normal(0.0, rng.uniform(2.0, 7.0), size=image.shape)
    if rng.random() < 0.5:
        # A [1, 2, 1] / 4 binomial blur in each direction: softer, camera-like edges.
        padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
        image = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
        image = (image[:, :-2] + 2 * image[:, 1:-1] + image[:, 2:]) / 4
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    labels = np.zeros((NUM_CLASSES,), np.float32)
    present = np.unique(mask)
    labels[present[(present > 0) & (present <= NUM_CLASSES)] - 1] = 1.0
    if params.void_band > 0:
        mask[_boundary_band(mask, params.void_band)] = 255
    return image, mask, labels
