"""The ranker's feature matrix: candidates + the user's features + item features -> one float32 row each.

This module is the one place that turns features into model inputs. The offline training set
(`training/ranker_dataset.py`) and the online path (`ranking/reranker.py`, `ranking.recommender`) both
call `build_features`, so a model never sees a column computed one way in training and another
way at serving (no train/serve skew). `FEATURE_NAMES` is the ordered contract; a saved model
stores the list it was trained with and `Reranker.load` refuses a model whose list differs.

Inputs use the feature names of the Feast views (see the brief's contract):

- `ItemTable`: one row per item, built once from `item_stats` + `item_embedding` rows (at serving,
  the latest values; offline, the snapshot of the request's day).
- `UserContext`: one request's user, from `user_stats` + `user_recent_items` rows as of the request.
- candidate item ids and their retriever scores (the retriever's output, any order).

Missing values stay NaN (LightGBM routes them down its learned "missing" branch): items without a
price (Amazon), users without history (no average price paid, no recent items, no affinities).

Example:
    >>> items = ItemTable.from_frame(item_frame)
    >>> user = UserContext.from_features(online_row)
    >>> X = build_features(items, user, candidate_ids, retriever_scores)   # (n_candidates, n_features)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vitrine.errors import InvalidInput

# The ordered feature list. Append new features at the end of a group; any change makes saved
# models unloadable (on purpose: their columns would mean something else).
FEATURE_NAMES: tuple[str, ...] = (
    # retriever relevance
    "retriever_score",
    "retriever_rank",  # 0 = best; computed from the scores of this candidate list
    "retriever_score_gap",  # top score of the list minus this one
    # multimodal similarity to what the user just looked at (CLIP item vectors, cosine)
    "clip_sim_recent_mean",
    "clip_sim_recent_max",
    "clip_sim_last",  # to the newest recent item
    # item conversion signals (Bayesian-smoothed by the feature store)
    "item_ctr_7d",
    "item_ctr_30d",
    "item_cart_rate_7d",
    "item_cart_rate_30d",
    "item_cvr_7d",
    "item_cvr_30d",
    # popularity and trend
    "item_views_30d",
    "item_purchases_30d",
    "item_popularity_rank",
    "item_trend_7d_30d",
    # price
    "item_price",
    "price_rel_user_avg",  # item price / user's average price paid
    "price_rel_user_max",  # item price / user's max price paid
    "item_price_band",
    "price_band_gap",  # |item band - mean band of the user's recent items|; 0 = the user's usual band
    # freshness
    "item_age_days",
    # user taste for this item
    "user_category_affinity",  # the user's share of events in the item's category (0 when absent)
    "user_brand_affinity",
    "is_user_top_category",
    # the user's own history with the item
    "seen_recently",  # the item is in the user's recent items
    "recent_position",  # 0 = newest; NaN when not recent
    "recent_count",  # times the item occurs among the recent items
    # request context (constant within a request; lets trees condition on the kind of user)
    "user_events_30d",
    "user_purchase_rate_30d",
    "user_days_since_last_event",
)

# item_stats columns read into the ItemTable, in this order (NaN where a column is absent).
ITEM_NUMERIC_COLUMNS: tuple[str, ...] = (
    "ctr_7d",
    "ctr_30d",
    "cart_rate_7d",
    "cart_rate_30d",
    "cvr_7d",
    "cvr_30d",
    "views_30d",
    "purchases_30d",
    "popularity_rank",
    "trend_7d_30d",
    "price",
    "price_band",
    "age_days",
)
_COL = {name: i for i, name in enumerate(ITEM_NUMERIC_COLUMNS)}
_FEATURE = {name: i for i, name in enumerate(FEATURE_NAMES)}

NAN = np.float32(np.nan)


def _float(value: Any) -> float:
    """A scalar feature value as float, NaN for None/NA/unparseable."""
    if value is None:
        return float("nan")
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out


def _strings(value: Any) -> list[str]:
    """A list feature (Feast Array(String)) as a Python list; None/NaN -> []."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [str(v) for v in value]


@dataclass(frozen=True)
class ItemTable:
    """Item-side inputs, one row per item, looked up by id.

    Args:
        item_ids: the ids, in row order.
        numeric: float32 (n_items, len(ITEM_NUMERIC_COLUMNS)), NaN where unknown.
        embeddings: float32 (n_items, d), L2-normalised; all-zero rows for items without a vector
            (their similarities come out 0, i.e. "no evidence").
        has_embedding: bool (n_items,).
        category_code, brand_code: int64 (n_items,) codes into `categories` / `brands`, -1 when unknown.
        categories, brands: vocabulary, value -> code.
    """

    item_ids: np.ndarray
    numeric: np.ndarray
    embeddings: np.ndarray
    has_embedding: np.ndarray
    category_code: np.ndarray
    brand_code: np.ndarray
    categories: Mapping[str, int]
    brands: Mapping[str, int]
    rows: Mapping[str, int] = field(repr=False)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, embedding_column: str = "embedding") -> "ItemTable":
        """Build from one row per item with `item_id`, item_stats columns and the `embedding` list.

        Args:
            frame: item features (Feast names, with or without a `view__` prefix stripped by the caller).
                Absent columns are treated as unknown (NaN / no vector).
            embedding_column: name of the column holding the item vector.

        Example:
            >>> ItemTable.from_frame(pd.DataFrame({"item_id": ["a"], "price": [9.5], "embedding": [[1.0, 0.0]]}))
        """
        if "item_id" not in frame.columns:
            raise InvalidInput(f"item features: column item_id missing (columns: {list(frame.columns)})")
        frame = frame.drop_duplicates("item_id", keep="last").reset_index(drop=True)
        n = len(frame)
        numeric = np.full((n, len(ITEM_NUMERIC_COLUMNS)), np.nan, dtype=np.float32)
        for name, col in _COL.items():
            # A read of a service holding both user_stats and item_stats names the shared counts
            # `item_stats__views_30d` (feature_repo.store); the bare name wins when both exist.
            source = name if name in frame.columns else f"item_stats__{name}"
            if source in frame.columns:
                numeric[:, col] = pd.to_numeric(frame[source], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        vectors = frame[embedding_column] if embedding_column in frame.columns else pd.Series([None] * n)
        dims = {len(v) for v in vectors if v is not None and not (isinstance(v, float)) and len(v) > 0}
        if len(dims) > 1:
            raise InvalidInput(f"item features: embeddings of different sizes {sorted(dims)} (mixed model versions?)")
        dim = dims.pop() if dims else 1
        embeddings = np.zeros((n, dim), dtype=np.float32)
        has = np.zeros(n, dtype=bool)
        for row, vector in enumerate(vectors):
            if vector is not None and not isinstance(vector, float) and len(vector) == dim:
                embeddings[row] = np.asarray(vector, dtype=np.float32)
                has[row] = True
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        embeddings = np.where(norms > 0, embeddings / np.maximum(norms, 1e-12), 0.0).astype(np.float32)

        category_codes, categories = _codes(frame, "category")
        brand_codes, brands = _codes(frame, "brand")
        ids = frame["item_id"].astype(str).to_numpy(dtype=object)
        return cls(
            item_ids=ids,
            numeric=numeric,
            embeddings=embeddings,
            has_embedding=has,
            category_code=category_codes,
            brand_code=brand_codes,
            categories=categories,
            brands=brands,
            rows={item: row for row, item in enumerate(ids)},
        )

    def positions(self, item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row of each id in this table, -1 for unknown ids (their item features come out NaN)."""
        lookup = self.rows.get
        return np.fromiter((lookup(item, -1) for item in item_ids), dtype=np.int64, count=len(item_ids))

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class UserContext:
    """One request's user-side inputs (features as of the request time).

    Args:
        recent_item_ids: newest first (Feast `user_recent_items.recent_item_ids`); empty for new users.
        avg_price_paid, max_price_paid: NaN when the user has bought nothing.
        category_shares, brand_shares: affinity share per category / brand (absent = 0).
        top_category: the user's top category, None when unknown.
        events_30d, purchase_rate_30d, days_since_last_event: activity context, NaN when unknown.
    """

    recent_item_ids: tuple[str, ...] = ()
    avg_price_paid: float = float("nan")
    max_price_paid: float = float("nan")
    category_shares: Mapping[str, float] = field(default_factory=dict)
    brand_shares: Mapping[str, float] = field(default_factory=dict)
    top_category: str | None = None
    events_30d: float = float("nan")
    purchase_rate_30d: float = float("nan")
    days_since_last_event: float = float("nan")

    @classmethod
    def from_features(cls, row: Mapping[str, Any]) -> "UserContext":
        """From a mapping of Feast user feature names to values (missing keys/None = unknown).

        Example:
            >>> UserContext.from_features({"recent_item_ids": ["I1"], "avg_price_paid": 20.0})
        """
        categories = _strings(row.get("affinity_categories"))
        category_shares = [_float(v) for v in (_list_or_empty(row.get("affinity_category_shares")))]
        brands = _strings(row.get("affinity_brands"))
        brand_shares = [_float(v) for v in (_list_or_empty(row.get("affinity_brand_shares")))]
        top = row.get("top_category")
        return cls(
            recent_item_ids=tuple(_strings(row.get("recent_item_ids"))),
            avg_price_paid=_float(row.get("avg_price_paid")),
            max_price_paid=_float(row.get("max_price_paid")),
            category_shares=dict(zip(categories, category_shares)),
            brand_shares=dict(zip(brands, brand_shares)),
            top_category=None if top is None or top is pd.NA or (isinstance(top, float) and np.isnan(top)) else str(top),
            events_30d=_float(row.get("events_30d")),
            purchase_rate_30d=_float(row.get("purchase_rate_30d")),
            days_since_last_event=_float(row.get("days_since_last_event")),
        )


def _list_or_empty(value: Any) -> Sequence[Any]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return list(value)


def _codes(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, dict[str, int]]:
    """Integer codes of a string column (-1 for missing values or an absent column) and the vocabulary."""
    if column not in frame.columns:
        return np.full(len(frame), -1, dtype=np.int64), {}
    values = frame[column].astype(object).where(frame[column].notna(), None)
    codes, uniques = pd.factorize(values.map(lambda v: None if v is None else str(v)), use_na_sentinel=True)
    return codes.astype(np.int64), {str(value): code for code, value in enumerate(uniques)}


def _shares_by_code(vocabulary: Mapping[str, int], shares: Mapping[str, float]) -> np.ndarray:
    """A lookup vector: [code] -> the user's share (0 when absent); the extra last slot is NaN, so code -1 -> NaN."""
    vector = np.zeros(len(vocabulary) + 1, dtype=np.float32)
    vector[-1] = np.nan
    for value, share in shares.items():
        code = vocabulary.get(value)
        if code is not None:
            vector[code] = share
    return vector


def build_features(
    items: ItemTable,
    user: UserContext,
    candidate_ids: Sequence[str] | np.ndarray,
    retriever_scores: Sequence[float] | np.ndarray,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """The ranker feature matrix for one request, columns in `FEATURE_NAMES` order.

    Args:
        items: item features (ids not in the table get NaN item features and zero similarity).
        user: the requesting user's features as of the request.
        candidate_ids: (n,) candidate item ids, any order.
        retriever_scores: (n,) the retriever's scores for them (higher = more relevant).
        rows: (n,) the candidates' rows in `items` (-1 for unknown) when the caller already has them
            (serving maps index rows to table rows once per model); None looks the ids up.

    Returns:
        float32 (n, len(FEATURE_NAMES)).

    Example:
        >>> X = build_features(items, UserContext(), ["I1", "I2"], [0.9, 0.4])
        >>> X.shape
        (2, 31)
    """
    scores = np.asarray(retriever_scores, dtype=np.float32)
    ids = np.asarray(candidate_ids, dtype=object)
    if scores.shape != ids.shape or scores.ndim != 1:
        raise InvalidInput(f"candidates: {ids.shape} ids but {scores.shape} scores")
    n = len(ids)
    out = np.full((n, len(FEATURE_NAMES)), np.nan, dtype=np.float32)
    if n == 0:
        return out
    rows = items.positions(ids) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.shape != ids.shape:
        raise InvalidInput(f"candidates: {ids.shape} ids but {rows.shape} table rows")
    known = rows >= 0
    safe = np.where(known, rows, 0)

    # Retriever: rank from the scores of this list, so an injected or reordered list means the same.
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(n, dtype=np.float32)
    rank[order] = np.arange(n, dtype=np.float32)
    out[:, _FEATURE["retriever_score"]] = scores
    out[:, _FEATURE["retriever_rank"]] = rank
    out[:, _FEATURE["retriever_score_gap"]] = scores.max() - scores

    # Item columns: copy the whole block once, then blank unknown ids.
    item_block = items.numeric[safe]
    item_block[~known] = np.nan
    for feature, column in (
        ("item_ctr_7d", "ctr_7d"),
        ("item_ctr_30d", "ctr_30d"),
        ("item_cart_rate_7d", "cart_rate_7d"),
        ("item_cart_rate_30d", "cart_rate_30d"),
        ("item_cvr_7d", "cvr_7d"),
        ("item_cvr_30d", "cvr_30d"),
        ("item_views_30d", "views_30d"),
        ("item_purchases_30d", "purchases_30d"),
        ("item_popularity_rank", "popularity_rank"),
        ("item_trend_7d_30d", "trend_7d_30d"),
        ("item_price", "price"),
        ("item_price_band", "price_band"),
        ("item_age_days", "age_days"),
    ):
        out[:, _FEATURE[feature]] = item_block[:, _COL[column]]
    price = item_block[:, _COL["price"]]
    with np.errstate(divide="ignore", invalid="ignore"):
        # NaN when either price is unknown; a zero user price (impossible by contract) gives NaN too.
        avg = user.avg_price_paid if user.avg_price_paid > 0 else np.nan
        top = user.max_price_paid if user.max_price_paid > 0 else np.nan
        out[:, _FEATURE["price_rel_user_avg"]] = price / np.float32(avg)
        out[:, _FEATURE["price_rel_user_max"]] = price / np.float32(top)

    # The user's recent items: positions in the table (unknown ids dropped).
    recent = items.positions(list(user.recent_item_ids)) if user.recent_item_ids else np.empty(0, np.int64)
    recent_known = recent[recent >= 0]
    if len(recent_known):
        bands = items.numeric[recent_known, _COL["price_band"]]
        usual_band = np.nanmean(bands) if np.isfinite(bands).any() else np.nan
        out[:, _FEATURE["price_band_gap"]] = np.abs(item_block[:, _COL["price_band"]] - np.float32(usual_band))
        with_vectors = recent_known[items.has_embedding[recent_known]]
        if len(with_vectors):
            # (n, d) @ (d, r) -> (n, r) cosine similarities; vectors are unit length.
            sims = items.embeddings[safe] @ items.embeddings[with_vectors].T
            sims[~known | ~items.has_embedding[safe]] = np.nan
            out[:, _FEATURE["clip_sim_recent_mean"]] = sims.mean(axis=1)
            out[:, _FEATURE["clip_sim_recent_max"]] = sims.max(axis=1)
            newest = with_vectors[0]
            out[:, _FEATURE["clip_sim_last"]] = sims[:, 0] if recent_known[0] == newest else np.nan
    # Membership, newest position and count, matched on table rows.
    if len(recent_known):
        first = np.flatnonzero(recent >= 0)  # original positions (newest first) of the known recent ids
        unique_rows, first_index, counts = np.unique(recent_known, return_index=True, return_counts=True)
        slot = np.minimum(np.searchsorted(unique_rows, rows), len(unique_rows) - 1)
        hit = known & (unique_rows[slot] == rows)
        out[:, _FEATURE["seen_recently"]] = hit
        out[:, _FEATURE["recent_position"]] = np.where(hit, first[first_index[slot]], np.nan)
        out[:, _FEATURE["recent_count"]] = np.where(hit, counts[slot], 0)
    else:
        out[:, _FEATURE["seen_recently"]] = 0.0
        out[:, _FEATURE["recent_count"]] = 0.0

    # Taste: affinity share of the item's category / brand; 0 = the user never touched it,
    # NaN = the user has no history at all (a new user), or the item has no category/brand.
    if user.category_shares or user.recent_item_ids:
        category = np.where(known, items.category_code[safe], -1)
        brand = np.where(known, items.brand_code[safe], -1)
        out[:, _FEATURE["user_category_affinity"]] = _shares_by_code(items.categories, user.category_shares)[category]
        out[:, _FEATURE["user_brand_affinity"]] = _shares_by_code(items.brands, user.brand_shares)[brand]
        top = items.categories.get(user.top_category, -2) if user.top_category is not None else -2
        if top != -2:
            out[:, _FEATURE["is_user_top_category"]] = np.where(category < 0, np.nan, category == top)

    out[:, _FEATURE["user_events_30d"]] = user.events_30d
    out[:, _FEATURE["user_purchase_rate_30d"]] = user.purchase_rate_30d
    out[:, _FEATURE["user_days_since_last_event"]] = user.days_since_last_event
    return out
