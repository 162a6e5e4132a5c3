"""The in-process item feature table that serving ranks with: every item, one row, versioned.

Item-side ranker features are the same for every request until the next materialization, so the
service reads them ONCE per materialization from the Feast online store (all items, in bulk), keeps
them as numpy arrays (`ranking.ranker_features.ItemTable`) and indexes them per request. Reading 200
items through the SDK per request would cost ~10 ms (measured ~24 ms for 500); fancy indexing costs
microseconds. The values are exactly what the online store holds (the same reader as user features).

`ServingItems.version` names the materialization it was built from (each item view's latest
materialized end time); `materialization_version(store)` is cheap to poll, and the model watcher
rebuilds the table in the background when it changes.

Example:
    >>> items = load_serving_items(store, read_items(data))
    >>> items.version
    'item_stats@2026-11-26T00:00:00+00:00,item_embedding@2026-11-26T00:00:00+00:00'
    >>> items.cold_start_rows(category="toys")[:20]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from ranking.online_features import open_reader
from ranking.ranker_features import ItemTable
from vitrine.options import OnlineKind

if TYPE_CHECKING:
    from feast import FeatureStore

# Item views that the ranker's ItemTable reads (stats and the CLIP vector).
TABLE_VIEWS: tuple[str, ...] = ("item_stats", "item_embedding")
# The next-item sources' item view: co-visitation neighbours and how many sequences hold the item.
NEIGHBOURS_VIEW = "item_covisitation"
# Every item view serving reads in bulk: a new materialization of any of them rebuilds the table.
ITEM_VIEWS: tuple[str, ...] = (*TABLE_VIEWS, NEIGHBOURS_VIEW)
# Items whose neighbour lists are read and turned into arrays at once: one pipeline of the bulk
# reader's size, so that the Python lists of only this many items exist at a time (the whole
# table of a 100k-item shop as Python objects would take gigabytes).
NEIGHBOUR_CHUNK = 2_000
# An item needs this many views in 30 days before its 7d/30d trend means anything: below it, one
# view more or less swings the ratio wildly and a brand-new item would "trend" on two visits.
MIN_TREND_VIEWS_30D = 20
# Cold-start lists interleave this many popular items per trending one: popularity is the safer bet
# for an unknown user, trending adds freshness without taking over the list.
POPULAR_PER_TRENDING = 2
# Categories whose cold-start order is cached; bounds memory when callers send arbitrary category names.
MAX_CACHED_CATEGORIES = 1_000


@dataclass(frozen=True)
class ServingItems:
    """The catalog as serving sees it: ranker item features plus what filters and answers need.

    Args:
        version: the materialization the features come from (see `materialization_version`).
        table: ranker inputs, one row per catalog item (`ranking.ranker_features.ItemTable`).
        titles: (n,) item titles, for answers and the CLI.
        categories: (n,) item category, None when unknown (category filter).
        cold_start: (n,) row indices, best first: popular and trending items interleaved, then
            items without statistics (newest first).
        neighbours: the `item_covisitation` rows of the items, when that view is materialized.
    """

    version: str
    table: ItemTable
    titles: np.ndarray
    categories: np.ndarray
    cold_start: np.ndarray
    neighbours: "Neighbours | None" = None
    # Cold-start order per requested category, computed on first use (a 100k-item mask costs ~1 ms).
    _cold_by_category: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.table)

    def category_mask(self, category: str | None) -> np.ndarray | None:
        """Bool (n,) of items in `category`; None when there is no filter (integer codes, not strings)."""
        if category is None:
            return None
        code = self.table.categories.get(category)
        if code is None:
            return np.zeros(len(self.table), dtype=bool)
        return self.table.category_code == code

    def cold_start_rows(self, category: str | None = None) -> np.ndarray:
        """The cold-start order, restricted to `category` when given."""
        if category is None:
            return self.cold_start
        cached = self._cold_by_category.get(category)
        if cached is None:
            mask = self.category_mask(category)
            assert mask is not None
            cached = self.cold_start[mask[self.cold_start]]
            if len(self._cold_by_category) < MAX_CACHED_CATEGORIES:
                self._cold_by_category[category] = cached
        return cached


@dataclass(frozen=True)
class Neighbours:
    """Each table row's `item_covisitation` values as arrays (empty where the item has none).

    Attributes:
        cooc_ids, next_ids: per row, neighbour ids (object arrays), best first.
        cooc_scores, next_scores: per row, their float32 scores.
        sequence_users: (n,) how many users' sequences hold the item (0 where unknown).
        repeat_share: (n,) share of them who came back to it in another session (NaN where unknown).
    """

    cooc_ids: list[np.ndarray]
    cooc_scores: list[np.ndarray]
    next_ids: list[np.ndarray]
    next_scores: list[np.ndarray]
    sequence_users: np.ndarray
    repeat_share: np.ndarray

    def at(self, rows: np.ndarray) -> "Neighbours":
        """The values of `rows` (table rows; -1 = an item the table lacks, which gets none)."""
        empty_ids, empty_scores = np.zeros(0, dtype=object), np.zeros(0, dtype=np.float32)

        def pick(values: list[np.ndarray], empty: np.ndarray) -> list[np.ndarray]:
            return [values[r] if r >= 0 else empty for r in rows]

        safe = np.maximum(rows, 0)
        return Neighbours(pick(self.cooc_ids, empty_ids), pick(self.cooc_scores, empty_scores), pick(self.next_ids, empty_ids),
                          pick(self.next_scores, empty_scores), np.where(rows >= 0, self.sequence_users[safe], 0),
                          np.where(rows >= 0, self.repeat_share[safe], np.nan).astype(np.float32))


def read_neighbours(
    store: "FeatureStore", ids: Sequence[str], *, online: OnlineKind | None = None, as_of: datetime | None = None
) -> Neighbours:
    """The `item_covisitation` rows of `ids` from the online store, NEIGHBOUR_CHUNK items at a time."""
    columns: dict[str, list[np.ndarray]] = {name: [] for name in ("cooc_item_ids", "cooc_scores", "next_item_ids", "next_scores")}
    users = np.zeros(len(ids), dtype=np.int64)
    repeat = np.full(len(ids), np.nan, dtype=np.float32)
    reader = open_reader(store, "item_id", (NEIGHBOURS_VIEW,), online=online, bulk=True)
    try:
        for start in range(0, len(ids), NEIGHBOUR_CHUNK):
            for n, row in enumerate(reader.read(list(ids[start : start + NEIGHBOUR_CHUNK]), now=as_of), start=start):
                row = row or {}
                for name, values in columns.items():
                    kind = object if name.endswith("ids") else np.float32
                    values.append(np.asarray(row.get(name) or [], dtype=kind))
                users[n] = int(row.get("sequence_users") or 0)
                if row.get("repeat_share") is not None:
                    repeat[n] = float(row["repeat_share"])
    finally:
        reader.close()
    return Neighbours(columns["cooc_item_ids"], columns["cooc_scores"], columns["next_item_ids"], columns["next_scores"], users, repeat)


# What `materialization_version` says of a view that is not in the registry.
ABSENT = "absent"


def materialization_ends(store: "FeatureStore", views: Sequence[str] = ITEM_VIEWS) -> dict[str, str]:
    """Each view's latest materialized end time (ISO), "never", or `ABSENT`, read from the registry without cache."""
    ends: dict[str, str] = {}
    for name in views:
        try:
            view = store.get_feature_view(name, allow_registry_cache=False)
        except Exception:  # a view not applied yet: the table simply has no such features
            ends[name] = ABSENT
            continue
        stamps = [interval[1] for interval in view.materialization_intervals]
        ends[name] = max(stamps).isoformat() if stamps else "never"
    return ends


def materialization_version(store: "FeatureStore", views: Sequence[str] = ITEM_VIEWS) -> str:
    """`view@end` for each view (see `materialization_ends`), comma-joined: changes after each `materialize`."""
    return _version(materialization_ends(store, views))


def _version(ends: dict[str, str]) -> str:
    return ",".join(f"{name}@{end}" for name, end in ends.items())


def load_serving_items(
    store: "FeatureStore",
    catalog: pd.DataFrame,
    *,
    online: OnlineKind | None = None,
    views: Sequence[str] = ITEM_VIEWS,
    as_of: datetime | None = None,
) -> ServingItems:
    """Read every catalog item's features from the online store, in bulk, into a `ServingItems`.

    Args:
        store: the opened Feast store.
        catalog: the shop's items (item_id, title; category and created_at when present).
        online: force the online reader ("sqlite" SDK or "redis"); default follows the store.
        views: item feature views to read (absent views give NaN features).
        as_of: the moment each view's ttl is judged at (None: the wall clock); a replay passes its day.

    Example:
        >>> load_serving_items(open_store(data), read_items(data))
    """
    ends = materialization_ends(store, views)
    version = _version(ends)
    ids = catalog["item_id"].astype(str).tolist()
    frame = pd.DataFrame({"item_id": ids})
    present = [name for name, end in ends.items() if end != ABSENT and name in TABLE_VIEWS]
    if present and ids:
        reader = open_reader(store, "item_id", present, online=online, bulk=True)
        try:
            rows = reader.read(ids, now=as_of)
        finally:
            reader.close()
        features = pd.DataFrame([row or {} for row in rows], index=frame.index)
        frame = pd.concat([frame, features.drop(columns=["item_id"], errors="ignore")], axis=1)
    # The shop's own category wins where the feature store has none (items without events).
    if "category" in catalog.columns:
        shop_category = catalog["category"].astype(object).where(catalog["category"].notna(), None).to_numpy()
        if "category" in frame.columns:
            frame["category"] = frame["category"].where(frame["category"].notna(), pd.Series(shop_category, index=frame.index))
        else:
            frame["category"] = shop_category
    table = ItemTable.from_frame(frame)
    categories = frame["category"].astype(object).where(frame["category"].notna(), None).to_numpy() if "category" in frame.columns else np.full(len(frame), None, dtype=object)
    titles = catalog["title"].astype(str).to_numpy(dtype=object) if "title" in catalog.columns else table.item_ids
    created = pd.to_datetime(catalog["created_at"], utc=True) if "created_at" in catalog.columns else None
    neighbours = read_neighbours(store, ids, online=online, as_of=as_of) if ends.get(NEIGHBOURS_VIEW, ABSENT) != ABSENT and ids else None
    return ServingItems(
        version=version,
        table=table,
        titles=titles,
        categories=categories,
        cold_start=cold_start_order(frame, created),
        neighbours=neighbours,
    )


def cold_start_order(frame: pd.DataFrame, created_at: pd.Series | None = None) -> np.ndarray:
    """Row indices for users we know nothing about: popular and trending interleaved, then the rest.

    Popular = `popularity_rank` ascending; trending = `trend_7d_30d` descending among items with at least
    `MIN_TREND_VIEWS_30D` views in 30 days. Items with no statistics follow, newest first.
    """
    n = len(frame)
    rank = pd.to_numeric(frame.get("popularity_rank", pd.Series(np.nan, index=frame.index)), errors="coerce").to_numpy(dtype=float)
    trend = pd.to_numeric(frame.get("trend_7d_30d", pd.Series(np.nan, index=frame.index)), errors="coerce").to_numpy(dtype=float)
    views = pd.to_numeric(frame.get("views_30d", pd.Series(np.nan, index=frame.index)), errors="coerce").to_numpy(dtype=float)
    has_rank = np.isfinite(rank)
    popular = np.flatnonzero(has_rank)[np.argsort(rank[has_rank], kind="stable")]
    trending_mask = np.isfinite(trend) & (np.nan_to_num(views) >= MIN_TREND_VIEWS_30D)
    trending = np.flatnonzero(trending_mask)[np.argsort(-trend[trending_mask], kind="stable")]
    order: list[int] = []
    seen = np.zeros(n, dtype=bool)
    p = t = 0
    while p < len(popular) or t < len(trending):
        for _ in range(POPULAR_PER_TRENDING):
            if p < len(popular):
                if not seen[popular[p]]:
                    seen[popular[p]] = True
                    order.append(int(popular[p]))
                p += 1
        if t < len(trending):
            if not seen[trending[t]]:
                seen[trending[t]] = True
                order.append(int(trending[t]))
            t += 1
    rest = np.flatnonzero(~seen)
    if created_at is not None and len(rest):
        stamps = created_at.to_numpy(dtype="datetime64[ns]").astype("int64")[rest]
        rest = rest[np.argsort(-stamps, kind="stable")]
    return np.concatenate([np.asarray(order, dtype=np.int64), rest.astype(np.int64)])
