"""A tiny hand-made shop: 30 items (some without price, category or date), 40 users, 40 days of events."""

from __future__ import annotations

import numpy as np
import pandas as pd
from vitrine.paths import DataDir
from vitrine.shop.store import write_events, write_items

START = pd.Timestamp("2026-01-01", tz="UTC")
DAYS = 40


def make_shop(data: DataDir, extra_events: pd.DataFrame | None = None, seed: int = 0) -> DataDir:
    """Write 30 items (some without price, category or creation date) and ~1,500 events over DAYS days."""
    rng = np.random.default_rng(seed)
    n_items, n_users, n_events = 30, 40, 1_500
    items = pd.DataFrame(
        {
            "item_id": [f"I{i:03d}" for i in range(n_items)],
            "title": [f"item {i}" for i in range(n_items)],
            "category": [None if i % 7 == 0 else f"cat{i % 4}" for i in range(n_items)],
            "brand": [None if i % 5 == 1 else f"brand{i % 3}" for i in range(n_items)],
            "price": [np.nan if i % 5 == 0 else 5.0 + i for i in range(n_items)],
            "created_at": [pd.NaT if i % 6 == 0 else START - pd.Timedelta(days=i) for i in range(n_items)],
        }
    )
    items["created_at"] = pd.to_datetime(items["created_at"], utc=True)
    write_items(data, items)
    stamps = START + pd.to_timedelta(rng.uniform(0, DAYS * 86_400, n_events), unit="s")
    events = pd.DataFrame(
        {
            "user_id": [f"U{u:03d}" for u in rng.integers(0, n_users, n_events)],
            "item_id": [f"I{i:03d}" for i in rng.integers(0, n_items, n_events)],
            "event_type": rng.choice(["view", "click", "add_to_cart", "purchase"], n_events, p=[0.6, 0.25, 0.1, 0.05]),
            "timestamp": stamps,
            "price": np.where(rng.random(n_events) < 0.5, np.nan, 9.99),
        }
    )
    if extra_events is not None:
        events = pd.concat([events, extra_events], ignore_index=True)
    write_events(data, events)
    return data


