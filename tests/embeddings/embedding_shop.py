"""Tiny synthetic shops for this package's tests: coloured shapes drawn with Pillow, captions that name them.

Each item is a shape (its category) in one colour on a light background, so an encoder that learns
anything at all from the pairs can be checked on held-out items in seconds.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from vitrine.paths import DataDir
from vitrine.shop.store import write_items

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (235, 200, 20),
           "purple": (130, 40, 160), "black": (20, 20, 20)}
CATEGORIES = ("ball", "box", "tent", "scarf")
MATERIALS = ("cotton", "leather", "plastic", "wool")


def draw(category: str, rgb: tuple[int, int, int], rng: random.Random, size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), (235 + rng.randint(-15, 15),) * 3)
    pen = ImageDraw.Draw(image)
    margin = rng.randint(4, 14)
    box = (margin + rng.randint(-3, 3), margin + rng.randint(-3, 3), size - margin, size - margin)
    if category == "ball":
        pen.ellipse(box, fill=rgb)
    elif category == "box":
        pen.rectangle(box, fill=rgb)
    elif category == "tent":
        pen.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=rgb)
    else:
        for y in range(box[1], box[3], 8):
            pen.rectangle((box[0], y, box[2], y + 4), fill=rgb)
    return image


def make_shop(root: Path, n_items: int = 120, seed: int = 0, image_share: float = 1.0) -> DataDir:
    """Write a shop with `n_items` items (images for about `image_share` of them) under `root`."""
    rng = random.Random(seed)
    data = DataDir.resolve(root)
    data.images.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(n_items):
        item_id = f"I{n:05d}"
        colour = rng.choice(list(COLOURS))
        category = rng.choice(CATEGORIES)
        material = rng.choice(MATERIALS)
        image_path = None
        if rng.random() < image_share:
            image_path = f"images/{item_id}.png"
            draw(category, COLOURS[colour], rng).save(data.shop / image_path)
        rows.append({
            "item_id": item_id,
            "title": f"{colour.title()} {material} {category}",
            "description": f"A {material} {category} in {colour}, model {n % 17}.",
            "category": category,
            "brand": rng.choice(["Acme", "Globex", None]),
            "price": float(rng.randint(5, 200)),
            "image_path": image_path,
            "created_at": pd.Timestamp("2025-01-01", tz="UTC"),
            "colour": colour,
            "material": material,
        })
    write_items(data, pd.DataFrame(rows))
    return data
