"""The encoder's view of a shop: one text and at most one image per item, and a fixed held-out split.

Every stage of this package (training, embedding, tagging, evaluation) reads the catalog through
here, so the text an item is trained on is the text it is embedded with, and an item held out of
training is held out of every evaluation.

Example:
    >>> view = catalog_view(data, read_items(data))
    >>> view.texts[0]
    'Red leather handbag. Soft calf leather with a gold clasp. Category: handbags. Brand: Acme.'
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
from PIL import Image, UnidentifiedImageError

from vitrine.paths import DataDir
from vitrine.shop.contract import MAX_IMAGE_PIXELS

Split = Literal["train", "validation", "test"]

# Held-out shares. Validation items drive early stopping and the choice of fusion weight; test items
# are touched only by `vitrine evaluate encoder` and `vitrine tag`, so their figures are unbiased.
VALIDATION_SHARE = 0.1
TEST_SHARE = 0.1

# Descriptions can run to paragraphs; this many characters keep every title and the first sentences,
# which is what a 64-token text window sees anyway.
MAX_DESCRIPTION_CHARS = 300


def split_of(item_id: str) -> Split:
    """The fixed split of an item: a hash of its id, so it never changes between runs or catalog growth.

    Example:
        >>> split_of("I000001") in ("train", "validation", "test")
        True
    """
    bucket = int(hashlib.sha1(item_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < TEST_SHARE:
        return "test"
    if bucket < TEST_SHARE + VALIDATION_SHARE:
        return "validation"
    return "train"


def _clean(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return " ".join(str(value).split())


def item_text(row: pd.Series) -> str:
    """The text an item is encoded from: title, description, then category and brand when present.

    Example:
        >>> item_text(pd.Series({"title": "Red bag", "category": "bags", "brand": None}))
        'Red bag. Category: bags.'
    """
    parts = [_clean(row.get("title")).rstrip(".")]
    description = _clean(row.get("description"))[:MAX_DESCRIPTION_CHARS].rstrip(".")
    if description:
        parts.append(description)
    for label, column in (("Category", "category"), ("Brand", "brand")):
        value = _clean(row.get(column))
        if value:
            parts.append(f"{label}: {value}")
    return ". ".join(p for p in parts if p) + "."


@dataclass
class ImageReport:
    """What happened to the items' images in one pass: the counts a command reports."""

    loaded: int = 0
    # Items whose catalog row has no image_path at all.
    no_image: int = 0
    # image_path set but no such file.
    missing: list[str] = field(default_factory=list)
    # A file that exists but cannot be decoded (truncated, not an image, too large).
    corrupt: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "loaded": self.loaded,
            "no_image": self.no_image,
            "missing": len(self.missing),
            "corrupt": len(self.corrupt),
            "missing_examples": self.missing[:5],
            "corrupt_examples": self.corrupt[:5],
        }


def open_image(path: Path | None, report: ImageReport) -> Image.Image | None:
    """The image as RGB, fully decoded; None (counted in `report`) when absent or unreadable.

    A bad file never raises: the item falls back to its text.
    """
    if path is None:
        report.no_image += 1
        return None
    if not path.is_file():
        report.missing.append(str(path))
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise ValueError("too many pixels")
                rgb = image.convert("RGB")
                rgb.load()
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        report.corrupt.append(str(path))
        return None
    report.loaded += 1
    return rgb


@dataclass(frozen=True)
class CatalogView:
    """Items in catalog order with the text and image path each is encoded from."""

    item_ids: list[str]
    texts: list[str]
    # Absolute path, or None when the row names no image.
    image_paths: list[Path | None]
    splits: list[Split]
    # The catalog rows themselves, index aligned with the lists above (labels for tagging/evaluation).
    items: pd.DataFrame

    def indices(self, *splits: Split) -> list[int]:
        """Positions of the items in the given splits, in catalog order."""
        return [i for i, s in enumerate(self.splits) if s in splits]

    def sample(self, n: int) -> "CatalogView":
        """At most `n` items, chosen by a hash of the id (the same items on every run), in catalog order.

        Large catalogs train the encoder on a sample: contrastive training needs enough pairs per
        batch and epoch, not every item, and its cost grows with the item count.
        """
        if n >= len(self.item_ids):
            return self
        by_hash = sorted(range(len(self.item_ids)), key=lambda i: hashlib.sha1(f"sample:{self.item_ids[i]}".encode()).digest())
        keep = sorted(by_hash[:n])
        return CatalogView(
            item_ids=[self.item_ids[i] for i in keep],
            texts=[self.texts[i] for i in keep],
            image_paths=[self.image_paths[i] for i in keep],
            splits=[self.splits[i] for i in keep],
            items=self.items.iloc[keep].reset_index(drop=True),
        )


def catalog_view(data: DataDir, items: pd.DataFrame) -> CatalogView:
    """Texts, image paths and splits of `items`, sorted by item_id so that every pass is in the same order."""
    frame = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    paths: list[Path | None] = []
    has_path_column = "image_path" in frame.columns
    for value in frame["image_path"] if has_path_column else [None] * len(frame):
        text = _clean(value)
        paths.append(data.shop / text if text else None)
    ids = [str(i) for i in frame["item_id"]]
    return CatalogView(
        item_ids=ids,
        texts=[item_text(row) for _, row in frame.iterrows()],
        image_paths=paths,
        splits=[split_of(i) for i in ids],
        items=frame,
    )
