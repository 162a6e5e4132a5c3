"""A tiny synthetic shop with built features and stand-in item vectors, for the retriever's tests.

The item vectors are not a trained encoder's (that stage has its own tests): each is a fixed
random direction per category, colour and brand plus noise, unit length, so that content carries
the same taste signal a CLIP vector does and tests run in seconds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from vitrine.paths import DataDir
from vitrine.shop.store import read_items

# Width of the stand-in vectors.
DIM = 32
SPEC_KW = {"users": 300, "items": 160, "days": 21, "seed": 5}


def _direction(value: object) -> np.ndarray:
    seed = int(hashlib.sha256(str(value).encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal(DIM)


def write_stand_in_embeddings(data: DataDir) -> None:
    items = read_items(data)
    rng = np.random.default_rng(0)
    rows = []
    for item in items.itertuples():
        vec = sum(_direction((col, getattr(item, col, None))) for col in ("category", "colour", "brand"))
        vec = vec + 0.3 * rng.standard_normal(DIM)
        rows.append((item.item_id, (vec / np.linalg.norm(vec)).astype(np.float32).tolist()))
    frame = pd.DataFrame(rows, columns=["item_id", "embedding"])
    frame["has_image"] = True
    frame["model_version"] = "stand-in"
    frame["event_timestamp"] = pd.Timestamp("2000-01-01", tz="UTC")
    data.embeddings.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(data.item_embeddings, index=False)


def build_retriever_shop(root: Path) -> DataDir:
    """Generate, ingest, build features and write item vectors into `root`; returns the data dir."""
    from dataclasses import replace

    from feature_repo.snapshots.build import build
    from vitrine.shop.generate import generate_shop
    from vitrine.shop.spec import DEMO
    from vitrine.shop.ingest import ingest

    data = DataDir.resolve(root)
    spec = replace(DEMO, **SPEC_KW)  # type: ignore[arg-type]
    generate_shop(data, spec, progress=False)
    ingest(data)
    build(data)
    write_stand_in_embeddings(data)
    return data
