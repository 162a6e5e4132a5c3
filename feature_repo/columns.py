"""The columns of every feature view, declared once.

The snapshot writers (`feature_repo.snapshots`) build their Arrow schemas from these tuples, the
Feast declarations (`feature_repo/definitions.py`) their typed fields, and the models
(`ranking.retriever_inputs`, `ranking.ranker_features`) read the names from here: a column renamed
or added here is renamed or added everywhere, and nothing else spells a feature's name.

Each view's offline rows are `<entity key>, event_timestamp, <columns...>` in this order.

Example:
    >>> arrow_schema("item_stats").names[:3]
    ['item_id', 'event_timestamp', 'views_1d']
    >>> numeric_names("user_stats")[:3]
    ('events_1d', 'events_7d', 'events_30d')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pyarrow as pa

Kind = Literal["int64", "float32", "string", "bool", "string_list", "float32_list"]
NUMERIC_KINDS: frozenset[str] = frozenset({"int64", "float32"})
TIMESTAMP = "event_timestamp"

# Event counts by funnel step, over the trailing windows (days) every count is published for.
FUNNEL = ("views", "clicks", "carts", "purchases")
COUNT_WINDOWS = (1, 7, 30)
# Smoothed funnel rates (`feature_repo.snapshots.item_stats.RATES` says what each divides), per window.
RATE_NAMES = ("ctr", "cart_rate", "cvr")
RATE_WINDOWS = (7, 30)


@dataclass(frozen=True)
class Column:
    """One feature: its name in every store and its type."""

    name: str
    kind: Kind


ITEM_STATS: tuple[Column, ...] = (
    *(Column(f"{count}_{w}d", "int64") for count in FUNNEL for w in COUNT_WINDOWS),
    *(Column(f"{rate}_{w}d", "float32") for rate in RATE_NAMES for w in RATE_WINDOWS),
    Column("price", "float32"),
    Column("age_days", "float32"),
    Column("popularity_rank", "int64"),
    Column("trend_7d_30d", "float32"),
    Column("category", "string"),
    Column("brand", "string"),
    Column("price_band", "int64"),
)
USER_STATS: tuple[Column, ...] = (
    *(Column(f"events_{w}d", "int64") for w in COUNT_WINDOWS),
    *(Column(f"{count}_30d", "int64") for count in FUNNEL),
    Column("purchase_rate_30d", "float32"),
    Column("avg_price_paid", "float32"),
    Column("max_price_paid", "float32"),
    Column("days_since_last_event", "float32"),
    Column("days_since_last_purchase", "float32"),
    Column("affinity_categories", "string_list"),
    Column("affinity_category_shares", "float32_list"),
    Column("affinity_brands", "string_list"),
    Column("affinity_brand_shares", "float32_list"),
    Column("top_category", "string"),
)
USER_RECENT_ITEMS: tuple[Column, ...] = (Column("recent_item_ids", "string_list"),)
# The user's distinct items in the order first met (`feature_repo.sequences.Sequences`), oldest first.
USER_SEQUENCE: tuple[Column, ...] = (
    Column("sequence_item_ids", "string_list"),
    Column("last_item_at_s", "int64"),  # when the newest of them was first met (epoch seconds, UTC)
)
# The item's co-visitation neighbours (`feature_repo.covisitation`), best first, and how many users' sequences hold it.
ITEM_COVISITATION: tuple[Column, ...] = (
    Column("cooc_item_ids", "string_list"),
    Column("cooc_scores", "float32_list"),
    Column("next_item_ids", "string_list"),
    Column("next_scores", "float32_list"),
    Column("sequence_users", "int64"),
    Column("repeat_share", "float32"),  # share of those users who came back to it in another session
)
ITEM_EMBEDDING: tuple[Column, ...] = (
    Column("embedding", "float32_list"),
    Column("has_image", "bool"),
    Column("model_version", "string"),
)

# View name -> (entity join key, columns).
VIEWS: dict[str, tuple[str, tuple[Column, ...]]] = {
    "item_stats": ("item_id", ITEM_STATS),
    "user_stats": ("user_id", USER_STATS),
    "user_recent_items": ("user_id", USER_RECENT_ITEMS),
    "user_sequence": ("user_id", USER_SEQUENCE),
    "item_covisitation": ("item_id", ITEM_COVISITATION),
    "item_embedding": ("item_id", ITEM_EMBEDDING),
}


def columns(view: str) -> tuple[Column, ...]:
    """The feature columns of `view`, in order (KeyError names an unknown view)."""
    return VIEWS[view][1]


def names(view: str) -> tuple[str, ...]:
    return tuple(column.name for column in columns(view))


def numeric_names(view: str) -> tuple[str, ...]:
    """The integer and float columns of `view`, in order."""
    return tuple(column.name for column in columns(view) if column.kind in NUMERIC_KINDS)


def arrow_schema(view: str) -> "pa.Schema":
    """The offline snapshot schema: entity key, event_timestamp (ns, UTC), then the columns."""
    import pyarrow as pa

    types: dict[str, Any] = {
        "int64": pa.int64(), "float32": pa.float32(), "string": pa.string(), "bool": pa.bool_(),
        "string_list": pa.list_(pa.string()), "float32_list": pa.list_(pa.float32()),
    }  # fmt: skip
    key, cols = VIEWS[view]
    return pa.schema([(key, pa.string()), (TIMESTAMP, pa.timestamp("ns", tz="UTC")), *((c.name, types[c.kind]) for c in cols)])


def feast_fields(view: str) -> list[Any]:
    """The typed Feast `Field`s of `view`, for its FeatureView's schema."""
    from feast import Field
    from feast.types import Array, Bool, Float32, Int64, String

    types: dict[str, Any] = {
        "int64": Int64, "float32": Float32, "string": String, "bool": Bool,
        "string_list": Array(String), "float32_list": Array(Float32),
    }  # fmt: skip
    return [Field(name=c.name, dtype=types[c.kind]) for c in columns(view)]
