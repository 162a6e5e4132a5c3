"""Vitrine's Feast declarations: entities, offline sources, feature views and feature services.

Every object is declared once, at module level, as in Feast's repo template; each view's typed
columns come from `feature_repo/columns.py`, which the snapshot writers and the models read too.
Infrastructure lives only in feature_store.yaml (embedded: SQLite) and feature_store.redis.yaml (Redis).

Sources are Parquet under the data dir named by $VITRINE_DATA_DIR (the same variable the yaml
files use for the registry and the SQLite file); `vitrine features ...` sets it from --data-dir.
`vitrine features build` writes the snapshot folders; `vitrine embed` writes the embeddings file.

TTLs. A snapshot row stays valid for the view's `ttl` after its event_timestamp; afterwards a
point-in-time join returns null. User rows are emitted on change days only, the last one 31 days
after the user's last activity (all 30-day windows empty), so a 30-day ttl makes an inactive user's
features disappear 61 days after the last event, offline, and serving applies the same ttl as a
maximum age online (`ranking.online_features`): both age out together, no skew. A user's sequence
(`user_sequence`) never expires, so Redis keeps user keys without an expiry.
Items get a row every day while in the catalog, so the ttl only removes delisted items. Item vectors
do not expire (ttl 0): an image does not go stale. Redis keys have no expiry either, so a delisted
item's or a departed user's key stays until the store is flushed (it is never served stale: the ttl
check is on the row's timestamp).
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, FileSource, ValueType

from feature_repo.columns import feast_fields
from vitrine.paths import DataDir

# How long a snapshot row answers for its entity (see the module docstring).
SNAPSHOT_TTL = timedelta(days=30)
# Embeddings never go stale by age; a new model version replaces them.
NO_TTL = timedelta(0)
# A user's sequence never goes stale by age: the last purchases of a shopper who comes back after a
# year (a gift bought each December) are still the best evidence of the next one. Redis keeps user
# keys without expiry for it (feature_store.redis.yaml); serving judges each stats view by its own ttl.
SEQUENCE_TTL = NO_TTL


# The data dir the sources live in: $VITRINE_DATA_DIR, else ./data (as every `vitrine` command).
DATA = DataDir.resolve()

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A shopper.")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="A catalog item.")


def _snapshots(view: str, writer: str) -> FileSource:
    """The folder of daily Parquet snapshots `vitrine features build` writes for `view`."""
    return FileSource(
        name=f"{view}_source",
        path=str(DATA.features / view),
        timestamp_field="event_timestamp",
        description=f"Snapshots written by `vitrine features build` ({writer}).",
    )


item_stats_source = _snapshots("item_stats", "feature_repo/snapshots/item_stats.py, one row per item per day")
user_stats_source = _snapshots("user_stats", "feature_repo/snapshots/user_stats.py, rows on change days")
user_recent_items_source = _snapshots("user_recent_items", "feature_repo/snapshots/recent_items.py, rows on change days")
user_sequence_source = _snapshots("user_sequence", "feature_repo/snapshots/user_sequence.py, rows on change days")
item_covisitation_source = _snapshots("item_covisitation", "feature_repo/snapshots/item_covisitation.py, one table per build")
item_embedding_source = FileSource(
    name="item_embedding_source",
    path=str(DATA.item_embeddings),
    timestamp_field="event_timestamp",
    description="Item vectors written by `vitrine embed` (embeddings/encode.py).",
)

item_stats = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=SNAPSHOT_TTL,
    schema=feast_fields("item_stats"),
    online=True,
    source=item_stats_source,
    tags={"team": "vitrine", "snapshot": "daily"},
)

user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=feast_fields("user_stats"),
    online=True,
    source=user_stats_source,
    tags={"team": "vitrine", "snapshot": "on-change"},
)

user_recent_items = FeatureView(
    name="user_recent_items",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=feast_fields("user_recent_items"),
    online=True,
    source=user_recent_items_source,
    tags={"team": "vitrine", "snapshot": "on-change"},
)

user_sequence = FeatureView(
    name="user_sequence",
    entities=[user],
    ttl=SEQUENCE_TTL,
    schema=feast_fields("user_sequence"),
    online=True,
    source=user_sequence_source,
    tags={"team": "vitrine", "snapshot": "on-change"},
)

item_covisitation = FeatureView(
    name="item_covisitation",
    entities=[item],
    ttl=SNAPSHOT_TTL,
    schema=feast_fields("item_covisitation"),
    online=True,
    source=item_covisitation_source,
    tags={"team": "vitrine", "snapshot": "daily"},
)

item_embedding = FeatureView(
    name="item_embedding",
    entities=[item],
    ttl=NO_TTL,
    schema=feast_fields("item_embedding"),
    online=True,
    source=item_embedding_source,
    tags={"team": "vitrine"},
)

# Versioned services named for their consumer; `feature_repo.store.SERVICES` maps the
# consumer name ("retriever", "ranker") to the current version.
retriever_v1 = FeatureService(
    name="retriever_v1",
    features=[user_stats, user_recent_items, item_stats, item_embedding],
    tags={"consumer": "retriever", "version": "1"},
    description="Two-tower retriever: user tower (stats, recent items) and item tower (stats, CLIP vector).",
)
next_item_v1 = FeatureService(
    name="next_item_v1",
    features=[user_sequence, user_stats, item_covisitation, item_stats, item_embedding],
    tags={"consumer": "next_item", "version": "1"},
    description="Next-item recommender: the user's sequence and stats, the candidates' neighbours, stats and vectors.",
)
ranker_v1 = FeatureService(
    name="ranker_v1",
    features=[user_stats, item_stats],
    tags={"consumer": "ranker", "version": "1"},
    description="LightGBM re-ranker: user and item behaviour, price, popularity, affinities.",
)
