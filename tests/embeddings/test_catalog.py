"""The catalog view the encoder trains and embeds from."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from embeddings.catalog import catalog_view
from vitrine.paths import DataDir


def _view(n: int, tmp_path: Path):  # type: ignore[no-untyped-def]
    items = pd.DataFrame(
        {
            "item_id": [f"I{i:05d}" for i in range(n)],
            "title": [f"item {i}" for i in range(n)],
            "description": [""] * n,
            "category": ["bags"] * n,
            "brand": ["acme"] * n,
            "image_path": [f"images/I{i:05d}.png" for i in range(n)],
        }
    )
    return catalog_view(DataDir.resolve(tmp_path), items)


def test_sample_is_fixed_aligned_and_survives_catalog_growth(tmp_path: Path) -> None:
    view = _view(500, tmp_path)
    sample = view.sample(100)
    assert len(sample.item_ids) == 100 and sample.item_ids == sorted(sample.item_ids)
    assert sample.item_ids == view.sample(100).item_ids  # the same items every run
    for n, item_id in enumerate(sample.item_ids):  # every list and the frame stay row-aligned
        at = view.item_ids.index(item_id)
        assert (sample.texts[n], sample.image_paths[n], sample.splits[n]) == (view.texts[at], view.image_paths[at], view.splits[at])
        assert sample.items.loc[n, "item_id"] == item_id
    # New items join the sample only by displacing others: most of the old sample stays.
    grown = _view(600, tmp_path).sample(100)
    assert len(set(grown.item_ids) & set(sample.item_ids)) >= 75
    assert view.sample(10_000) is view
