"""Vitrine's Feast declarations: entities, offline sources, feature views and feature services.

Every object is declared once, at module level, as in Feast's repo template. Infrastructure lives
only in feature_store.yaml (embedded: SQLite) and feature_store.redis.yaml (Redis).

Sources are Parquet under the data dir named by $VITRINE_DATA_DIR (the same variable the yaml
files use for the registry and the SQLite file); `vitrine features ...` sets it from --data-dir.
`vitrine features build` writes the three stats folders; `vitrine embed` writes the embeddings file.

TTLs. A snapshot row stays valid for the view's `ttl` after its event_timestamp; afterwards a
point-in-time join returns null. User rows are emitted on change days only, the last one 31 days
after the user's last activity (all 30-day windows empty), so a 30-day ttl makes an inactive user's
features disappear 61 days after the last event, offline, and the Redis key_ttl_seconds of the same
30 days (feature_store.redis.yaml) does the same online: both age out together, no skew.
Items get a row every day while in the catalog, so the ttl only removes delisted items. Item vectors
do not expire (ttl 0): an image does not go stale; the item's Redis key is kept alive by the daily
item_stats writes.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Bool, Float32, Int64, String

# How long a snapshot row answers for its entity (see the module docstring).
SNAPSHOT_TTL = timedelta(days=30)
# Embeddings never go stale by age; a new model version replaces them.
NO_TTL = timedelta(0)


def _data_dir() -> Path:
    """The data dir the sources live in: $VITRINE_DATA_DIR, else ./data beside the repo root."""
    chosen = os.environ.get("VITRINE_DATA_DIR") or Path(__file__).resolve().parent.parent / "data"
    return Path(chosen).expanduser().resolve()


DATA = _data_dir()

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A shopper.")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="A catalog item.")



def _snapshots(view: str, writer: str) -> FileSource:
    """The folder of daily Parquet snapshots `vitrine features build` writes for `view`."""
    return FileSource(
        name=f"{view}_source",
        path=str(DATA / "features" / view),
        timestamp_field="event_timestamp",
        description=f"Snapshots written by `vitrine features build` ({writer}).",
    )


item_stats_source = _snapshots("item_stats", "training/item_stats.py, one row per item per day")
user_stats_source = _snapshots("user_stats", "training/user_stats.py, rows on change days")
user_recent_items_source = _snapshots("user_recent_items", "training/recent_items.py, rows on change days")
item_embedding_source = FileSource(
    name="item_embedding_source",
    path=str(DATA / "embeddings" / "item_embeddings.parquet"),
    timestamp_field="event_timestamp",
    description="Item vectors written by `vitrine embed` (embeddings/encode.py).",
)

item_stats = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=SNAPSHOT_TTL,
    schema=[
        *[Field(name=f"{count}_{w}d", dtype=Int64) for count in ("views", "clicks", "carts", "purchases") for w in (1, 7, 30)],
        *[Field(name=f"{rate}_{w}d", dtype=Float32) for rate in ("ctr", "cart_rate", "cvr") for w in (7, 30)],
        Field(name="price", dtype=Float32),
        Field(name="age_days", dtype=Float32),
        Field(name="popularity_rank", dtype=Int64),
        Field(name="trend_7d_30d", dtype=Float32),
        Field(name="category", dtype=String),
        Field(name="brand", dtype=String),
        Field(name="price_band", dtype=Int64),
    ],
    online=True,
    source=item_stats_source,
    tags={"team": "vitrine", "snapshot": "daily"},
)

user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="events_1d", dtype=Int64),
        Field(name="events_7d", dtype=Int64),
        Field(name="events_30d", dtype=Int64),
        Field(name="views_30d", dtype=Int64),
        Field(name="clicks_30d", dtype=Int64),
        Field(name="carts_30d", dtype=Int64),
        Field(name="purchases_30d", dtype=Int64),
        Field(name="purchase_rate_30d", dtype=Float32),
        Field(name="avg_price_paid", dtype=Float32),
        Field(name="max_price_paid", dtype=Float32),
        Field(name="days_since_last_event", dtype=Float32),
        Field(name="days_since_last_purchase", dtype=Float32),
        Field(name="affinity_categories", dtype=Array(String)),
        Field(name="affinity_category_shares", dtype=Array(Float32)),
        Field(name="affinity_brands", dtype=Array(String)),
        Field(name="affinity_brand_shares", dtype=Array(Float32)),
        Field(name="top_category", dtype=String),
    ],
    online=True,
    source=user_stats_source,
    tags={"team": "vitrine", "snapshot": "on-change"},
)

user_recent_items = FeatureView(
    name="user_recent_items",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[Field(name="recent_item_ids", dtype=Array(String))],
    online=True,
    source=user_recent_items_source,
    tags={"team": "vitrine", "snapshot": "on-change"},
)

item_embedding = FeatureView(
    name="item_embedding",
    entities=[item],
    ttl=NO_TTL,
    schema=[
        Field(name="embedding", dtype=Array(Float32)),
        Field(name="has_image", dtype=Bool),
        Field(name="model_version", dtype=String),
    ],
    online=True,
    source=item_embedding_source,
    tags={"team": "vitrine"},
)

# Versioned services named for their consumer; `training.feature_store.SERVICES` maps the
# consumer name ("retriever", "ranker") to the current version.
retriever_v1 = FeatureService(
    name="retriever_v1",
    features=[user_stats, user_recent_items, item_stats, item_embedding],
    tags={"consumer": "retriever", "version": "1"},
    description="Two-tower retriever: user tower (stats, recent items) and item tower (stats, CLIP vector).",
)
ranker_v1 = FeatureService(
    name="ranker_v1",
    features=[user_stats, item_stats],
    tags={"consumer": "ranker", "version": "1"},
    description="LightGBM re-ranker: user and item behaviour, price, popularity, affinities.",
)
