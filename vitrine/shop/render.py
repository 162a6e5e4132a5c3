"""Product photos for the synthetic shop: one small PNG per item, drawn with Pillow.

What an image shows is what the catalogue says the item *is* (its true attributes), so that an image
encoder can learn them:

- the **category** is the silhouette (a T-shirt, a sneaker, a handbag, a lamp, a laptop, a mug, a ball,
  a hat), see `SHAPES`;
- the **colour** is the fill (`COLOUR_RGB`), outlined in a darker shade so white items show on the
  light background;
- the **pattern** (stripes, dots, checks, zigzag) is an overlay in a lighter or darker shade of the fill.

Material, brand and price are not drawn: they live in the text only, so image and text each carry
something the other lacks.

Speed: there are only categories x colours x patterns distinct looks (8 x 10 x 5 = 400), so each is
drawn once as an anti-aliased float template (`template`) and every item is a cheap variation of its
template (a shift of a few pixels, a brightness change, pixel noise from the item's own seed). PNG
encoding then dominates, at about a millisecond per 64x64 image. `draw_pictures` spreads large
batches over worker processes; each picture's noise comes from its own seed, so the bytes do not
depend on the number of workers.

Example:
    >>> pixels = template("shoes", "red", "striped", size=64)
    >>> pixels.shape
    (64, 64, 3)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# The background grey: light, neutral, and distinct from every fill colour including white (250).
BACKGROUND_RGB = (228, 228, 228)

# Fill colour of each named colour; names are the shop's `colour` values.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 40),
    "orange": (240, 130, 20),
    "yellow": (240, 210, 40),
    "green": (40, 150, 60),
    "blue": (40, 90, 200),
    "purple": (120, 50, 160),
    "pink": (240, 130, 180),
    "brown": (120, 75, 40),
    "black": (25, 25, 25),
    "white": (250, 250, 250),
}

# Colours light enough that their pattern is drawn darker instead of lighter.
LIGHT_COLOURS = frozenset({"yellow", "pink", "white", "orange"})

# How far the pattern shade moves from the fill towards white (or black for light colours):
# enough to see, little enough that the mean colour stays the fill's.
PATTERN_CONTRAST = 0.5

# Supersampling factor for anti-aliased silhouettes.
SUPERSAMPLE = 4

# Largest per-item shift in pixels at 64x64 (scaled with the size); every silhouette keeps this margin.
MAX_SHIFT_64 = 3

# Per-item pixel noise (standard deviation, 0-255 scale) and brightness change (fraction).
NOISE_STD = 5.0
BRIGHTNESS_JITTER = 0.06

# zlib level for PNG: 1 is ~3x faster than the default 6 and only slightly larger at this size.
PNG_COMPRESS_LEVEL = 1

# Below this many pictures one process is faster than starting workers (~0.5 s each to import).
PARALLEL_MIN_PICTURES = 20_000
MAX_WORKERS = 4  # more rarely helps: writing many small files becomes the bottleneck
BATCH_PICTURES = 1_000  # pictures per task sent to a worker: amortises pickling, keeps progress smooth

# A silhouette is drawn into a canvas whose coordinates run 0..1 (y down) and scaled by `s`.
Draw = Callable[[ImageDraw.ImageDraw, float], None]


def _box(s: float, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    return (x0 * s, y0 * s, x1 * s, y1 * s)


def _poly(s: float, points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x * s, y * s) for x, y in points]


def _tshirt(d: ImageDraw.ImageDraw, s: float) -> None:
    d.polygon(
        _poly(s, [(0.30, 0.14), (0.42, 0.11), (0.50, 0.18), (0.58, 0.11), (0.70, 0.14), (0.91, 0.33),
                  (0.80, 0.44), (0.72, 0.37), (0.72, 0.89), (0.28, 0.89), (0.28, 0.37), (0.20, 0.44),
                  (0.09, 0.33)]),
        fill=255,
    )


def _sneaker(d: ImageDraw.ImageDraw, s: float) -> None:
    d.polygon(
        _poly(s, [(0.07, 0.70), (0.09, 0.42), (0.20, 0.36), (0.34, 0.36), (0.46, 0.50), (0.70, 0.55),
                  (0.88, 0.60), (0.93, 0.70), (0.93, 0.78), (0.07, 0.78)]),
        fill=255,
    )


def _handbag(d: ImageDraw.ImageDraw, s: float) -> None:
    d.polygon(_poly(s, [(0.20, 0.42), (0.80, 0.42), (0.90, 0.89), (0.10, 0.89)]), fill=255)
    d.arc(_box(s, 0.30, 0.12, 0.70, 0.64), 180, 360, fill=255, width=max(1, int(0.07 * s)))


def _lamp(d: ImageDraw.ImageDraw, s: float) -> None:
    d.polygon(_poly(s, [(0.32, 0.10), (0.68, 0.10), (0.84, 0.46), (0.16, 0.46)]), fill=255)
    d.rectangle(_box(s, 0.46, 0.46, 0.54, 0.80), fill=255)
    d.ellipse(_box(s, 0.26, 0.76, 0.74, 0.90), fill=255)


def _laptop(d: ImageDraw.ImageDraw, s: float) -> None:
    d.rectangle(_box(s, 0.18, 0.14, 0.82, 0.62), fill=255)
    d.polygon(_poly(s, [(0.11, 0.65), (0.89, 0.65), (0.94, 0.76), (0.06, 0.76)]), fill=255)


def _laptop_screen(d: ImageDraw.ImageDraw, s: float) -> None:
    d.rectangle(_box(s, 0.23, 0.19, 0.77, 0.57), fill=255)


def _mug(d: ImageDraw.ImageDraw, s: float) -> None:
    d.ellipse(_box(s, 0.56, 0.36, 0.88, 0.72), outline=255, width=max(1, int(0.07 * s)))
    d.rounded_rectangle(_box(s, 0.18, 0.22, 0.66, 0.88), radius=0.06 * s, fill=255)


def _ball(d: ImageDraw.ImageDraw, s: float) -> None:
    d.ellipse(_box(s, 0.14, 0.14, 0.86, 0.86), fill=255)


def _hat(d: ImageDraw.ImageDraw, s: float) -> None:
    d.chord(_box(s, 0.28, 0.18, 0.72, 0.70), 180, 360, fill=255)
    d.rectangle(_box(s, 0.28, 0.44, 0.72, 0.64), fill=255)
    d.ellipse(_box(s, 0.06, 0.56, 0.94, 0.74), fill=255)


# The silhouette of each category; keys are the shop's `category` values.
SHAPES: dict[str, Draw] = {
    "apparel": _tshirt,
    "shoes": _sneaker,
    "bags": _handbag,
    "home": _lamp,
    "electronics": _laptop,
    "kitchen": _mug,
    "sports": _ball,
    "accessories": _hat,
}

# Parts drawn in a fixed dark grey over the fill (a laptop's screen), by category.
DARK_PARTS: dict[str, Draw] = {"electronics": _laptop_screen}
DARK_PART_RGB = (45, 50, 60)

PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted", "checked", "zigzag")


@cache
def silhouette(category: str, size: int) -> np.ndarray:
    """Anti-aliased coverage of `category`'s shape, float32 in [0, 1], shape (size, size)."""
    return _coverage(SHAPES[category], size)


def _coverage(draw: Draw, size: int) -> np.ndarray:
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw(ImageDraw.Draw(canvas), float(big))
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


@cache
def pattern_mask(pattern: str, size: int) -> np.ndarray:
    """Where `pattern` repaints the fill, float32 {0, 1}, shape (size, size). Period: size / 8 pixels."""
    period = max(4, size // 8)
    y, x = np.mgrid[0:size, 0:size]
    px, py = x % period, y % period
    half = period / 2
    if pattern == "solid":
        mask = np.zeros((size, size), dtype=bool)
    elif pattern == "striped":
        mask = py < period * 0.45
    elif pattern == "dotted":
        mask = (px - half + 0.5) ** 2 + (py - half + 0.5) ** 2 < (period * 0.28) ** 2
    elif pattern == "checked":
        mask = ((x // period + y // period) % 2) == 0
    elif pattern == "zigzag":
        mask = ((y + np.abs(px - half)) % period) < period * 0.4
    else:
        raise KeyError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    return mask.astype(np.float32)


@cache
def template(category: str, colour: str, pattern: str, size: int) -> np.ndarray:
    """The noiseless look of an item, float32 RGB in [0, 255], shape (size, size, 3).

    Args:
        category: a key of `SHAPES` (the silhouette).
        colour: a key of `COLOUR_RGB` (the fill).
        pattern: one of `PATTERNS` (the overlay on the fill).
        size: side in pixels.
    """
    fill = np.array(COLOUR_RGB[colour], dtype=np.float32)
    towards = np.zeros(3, np.float32) if colour in LIGHT_COLOURS else np.full(3, 255, np.float32)
    shade = fill + PATTERN_CONTRAST * (towards - fill)
    outline_rgb = fill * 0.55 if colour != "white" else np.full(3, 140, np.float32)

    shape = silhouette(category, size)
    # A one-pixel outline: the shape dilated minus the shape.
    padded = np.pad(shape, 1)
    dilated = np.max(
        [padded[1 + dy : 1 + dy + size, 1 + dx : 1 + dx + size] for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
        axis=0,
    )
    outline = np.clip(dilated - shape, 0.0, 1.0)

    pattern_here = pattern_mask(pattern, size)[..., None]
    body = fill * (1 - pattern_here) + shade * pattern_here
    if category in DARK_PARTS:
        dark = _coverage(DARK_PARTS[category], size)[..., None]
        body = body * (1 - dark) + np.array(DARK_PART_RGB, np.float32) * dark

    background = np.array(BACKGROUND_RGB, dtype=np.float32)
    image = background * (1 - shape[..., None]) + body * shape[..., None]
    image = image * (1 - outline[..., None]) + outline_rgb * outline[..., None]
    return image.astype(np.float32)


def render(
    category: str, colour: str, pattern: str, size: int, rng: np.random.Generator
) -> np.ndarray:
    """One item's picture: its template shifted, re-lit and noised by `rng`. uint8, (size, size, 3)."""
    base = template(category, colour, pattern, size)
    limit = max(1, MAX_SHIFT_64 * size // 64)
    dy, dx = rng.integers(-limit, limit + 1, size=2)
    # The background is uniform and every shape keeps a margin, so rolling never wraps the product.
    shifted = np.roll(base, (int(dy), int(dx)), axis=(0, 1))
    gain = 1.0 + rng.uniform(-BRIGHTNESS_JITTER, BRIGHTNESS_JITTER)
    noise = rng.normal(0.0, NOISE_STD, size=shifted.shape).astype(np.float32)
    return np.clip(shifted * gain + noise, 0, 255).astype(np.uint8)


def save_png(pixels: np.ndarray, path: Path) -> None:
    """Write `pixels` as a PNG; same pixels give the same bytes (no timestamps in PNG metadata)."""
    Image.fromarray(pixels, mode="RGB").save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


@dataclass(frozen=True)
class Picture:
    """One picture to draw."""

    name: str  # file name without extension, e.g. the item id
    category: str  # a key of SHAPES
    colour: str  # a key of COLOUR_RGB
    pattern: str  # one of PATTERNS
    index: int  # the picture's own seed, appended to the shop's seed: its noise depends on nothing else


def draw_pictures(
    pictures: Sequence[Picture],
    folder: Path,
    *,
    size: int,
    seed: Sequence[int],
    workers: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Render and save `folder/<name>.png` for every picture; returns how many were written.

    Args:
        pictures: what to draw.
        folder: where the PNGs go (created if missing).
        size: side in pixels.
        seed: entropy shared by all pictures (e.g. [shop seed, stream]); each adds its `index`.
        workers: processes; None = up to MAX_WORKERS CPUs when there are at least
            PARALLEL_MIN_PICTURES pictures, else 1. The files are the same whatever the number.
        progress: called with the number of pictures finished after each batch.

    Example:
        >>> draw_pictures([Picture("I000001", "bags", "red", "dotted", 1)], Path("/tmp/pics"), size=64, seed=[0])
        1
    """
    folder.mkdir(parents=True, exist_ok=True)
    if workers is None:
        many = len(pictures) >= PARALLEL_MIN_PICTURES
        workers = min(MAX_WORKERS, os.cpu_count() or 1) if many else 1
    batches = [list(pictures[i : i + BATCH_PICTURES]) for i in range(0, len(pictures), BATCH_PICTURES)]
    tasks = [(batch, str(folder), size, list(seed)) for batch in batches]
    drawn = 0
    if workers <= 1:
        results: Iterable[int] = map(_draw_batch, tasks)
        for done in results:
            drawn += done
            if progress is not None:
                progress(done)
        return drawn
    # spawn, not fork: the caller may hold threads (progress bars, Arrow pools) that fork would copy mid-lock.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        for done in pool.map(_draw_batch, tasks):
            drawn += done
            if progress is not None:
                progress(done)
    return drawn


def _draw_batch(task: tuple[list[Picture], str, int, list[int]]) -> int:
    pictures, folder, size, seed = task
    for picture in pictures:
        rng = np.random.default_rng([*seed, picture.index])
        pixels = render(picture.category, picture.colour, picture.pattern, size, rng)
        save_png(pixels, Path(folder) / f"{picture.name}.png")
    return len(pictures)
