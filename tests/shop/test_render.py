"""Product pictures: attributes are visible, and the bytes depend only on the seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitrine.shop.render import COLOUR_RGB, PATTERNS, SHAPES, Picture, draw_pictures, template


def _pictures() -> list[Picture]:
    looks = [(c, k, p) for c in SHAPES for k, p in (("red", "solid"), ("blue", "striped"), ("white", "dotted"))]
    return [Picture(f"P{i:03d}", c, k, p, i) for i, (c, k, p) in enumerate(looks)]


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_files_are_the_same_whatever_the_number_of_workers(tmp_path: Path) -> None:
    pictures = _pictures()
    assert draw_pictures(pictures, tmp_path / "one", size=64, seed=[3], workers=1) == len(pictures)
    assert draw_pictures(pictures, tmp_path / "two", size=64, seed=[3], workers=2) == len(pictures)
    one = _bytes(tmp_path / "one")
    assert len(one) == len(pictures) and one == _bytes(tmp_path / "two")
    draw_pictures(pictures, tmp_path / "other", size=64, seed=[4], workers=1)
    assert _bytes(tmp_path / "other") != one


def test_every_look_is_distinct() -> None:
    """Two items that differ in category, colour or pattern never share a template."""
    looks = {(c, k, p): template(c, k, p, 64) for c in SHAPES for k in COLOUR_RGB for p in PATTERNS}
    stacked = np.stack(list(looks.values())).reshape(len(looks), -1).astype(np.float64)
    # Root-mean-square difference between every two templates, in 0-255 units.
    norms = (stacked**2).sum(axis=1)
    squared = (norms[:, None] + norms[None, :] - 2 * stacked @ stacked.T) / stacked.shape[1]
    np.fill_diagonal(squared, np.inf)
    assert np.sqrt(squared.clip(min=0).min()) > 10.0
    striped = template("apparel", "green", "striped", 64)
    solid = template("apparel", "green", "solid", 64)
    # The pattern changes pixels inside the silhouette, not the silhouette itself.
    assert np.abs(striped - solid).max() > 60
    assert (np.abs(striped - solid).max(axis=2) > 0).sum() > 200
