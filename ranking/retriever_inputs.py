"""Features frame -> two-tower model inputs: the one encoder that training and serving share.

Training (`training.retriever_data`) and serving (`ranking.retriever.Retriever`) both call
`encode_users` / `encode_items` on frames whose columns are the Feast feature names of the
`retriever` service, so a feature can never be transformed one way offline and another way online.

An `InputSpec` holds everything the encoding needs and that was fitted on training data: the id
vocabularies (index 0 is "unknown": unseen users, cold-start items, dropped-out ids) and the
mean/std of each dense feature after `log1p`. It is saved as `vocab.json` beside the model.

Example:
    spec = InputSpec.fit(train_frame, content_dim=512)
    users = encode_users(train_frame, spec)        # one row per frame row
    batch = users.batch(np.arange(256))            # UserInputs with a KeyedJaggedTensor
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import torch
from torchrec import KeyedJaggedTensor

from feature_repo.columns import numeric_names
from ranking.artifact_check import parse_json
from vitrine.errors import InvalidInput

# Index every vocabulary reserves for "not seen in training" (and for dropped-out ids).
UNKNOWN = 0
# How many recent items of `user_recent_items` the user tower pools (the view keeps 20, newest first).
MAX_RECENT_ITEMS = 20
# Fill for "days since" features of a user who never did the thing: about a year, so it reads as "long ago".
NEVER_DAYS = 365.0

# Dense inputs, by Feast feature name (`feature_repo.columns`): every numeric column of the stats views
# but the price band, which is an id. Counts and money are heavy-tailed: log1p, then standardised.
USER_DENSE = numeric_names("user_stats")
ITEM_DENSE = tuple(name for name in numeric_names("item_stats") if name != "price_band")
# Feature view of each dense group. Where both views name a feature alike (views_30d...), the feature
# store returns `<view>__<name>`; plain `<name>` otherwise.
DENSE_VIEWS = {"user_stats": USER_DENSE, "item_stats": ITEM_DENSE}
# Dense features whose missing value means "never" rather than "zero".
NEVER_FEATURES = frozenset({"days_since_last_event", "days_since_last_purchase"})
# Signed features (a trend can fall): no log, only standardised.
SIGNED_FEATURES = frozenset({"trend_7d_30d"})

# Sparse (id) features each tower reads; keys of the KeyedJaggedTensors.
USER_SPARSE = ("user_id", "recent_item_ids", "top_category")
ITEM_SPARSE = ("item_id", "category", "brand", "price_band")


@dataclass(frozen=True)
class InputSpec:
    """Vocabularies and dense-feature statistics fitted on the training frame.

    Vocab maps are value -> index with `UNKNOWN` (0) reserved, so a table of `len(map) + 1` rows
    covers every input.
    """

    # user_id -> row of the user id table.
    users: dict[str, int]
    # item_id -> row of the item id tables (item tower and recent-items history).
    items: dict[str, int]
    # category -> row; shared by item `category` and user `top_category`.
    categories: dict[str, int]
    # brand -> row.
    brands: dict[str, int]
    # price band (as a string, e.g. "3") -> row.
    price_bands: dict[str, int]
    # Width of the CLIP item vector (`embedding` of the `item_embedding` view).
    content_dim: int
    # "<view>.<feature>" -> (mean, std) of the transformed value, for USER_DENSE and ITEM_DENSE.
    dense_stats: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def table_sizes(self) -> dict[str, int]:
        """Rows of each embedding table, by the sparse feature that owns it."""
        return {
            "user_id": len(self.users) + 1,
            "item_id": len(self.items) + 1,
            "category": len(self.categories) + 1,
            "brand": len(self.brands) + 1,
            "price_band": len(self.price_bands) + 1,
        }

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, content_dim: int, *, min_item_count: int = 1, ids: pd.DataFrame | None = None
    ) -> "InputSpec":
        """Fit vocabularies and dense statistics on a training frame (one row per example).

        Args:
            frame: training examples with `user_id`, `item_id` and the retriever features.
            content_dim: width of the CLIP vectors.
            min_item_count: items with fewer examples get no id row (they are treated as cold).
            ids: `user_id` and `item_id` of every training example, when `frame` is a sample of them
                (a log too large to hold with features): the id vocabularies then cover all examples,
                the categories and dense statistics come from the sample.
        """
        ids = frame if ids is None else ids
        counts = ids["item_id"].value_counts()
        items = sorted(counts[counts >= min_item_count].index.astype(str))
        categories = _values(frame, "category") | _values(frame, "top_category")
        stats: dict[str, tuple[float, float]] = {}
        for view, names in DENSE_VIEWS.items():
            for name in names:
                values = _transform(frame, view, name)
                mean = float(np.mean(values)) if len(values) else 0.0
                std = float(np.std(values)) if len(values) else 1.0
                stats[f"{view}.{name}"] = (mean, std if std > 1e-6 else 1.0)
        return cls(
            users=_index(sorted(ids["user_id"].astype(str).unique())),
            items=_index(items),
            categories=_index(sorted(categories)),
            brands=_index(sorted(_values(frame, "brand"))),
            price_bands=_index(sorted(_values(frame, "price_band"))),
            content_dim=content_dim,
            dense_stats=stats,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "items": self.items,
            "categories": self.categories,
            "brands": self.brands,
            "price_bands": self.price_bands,
            "content_dim": self.content_dim,
            "dense_stats": {k: list(v) for k, v in self.dense_stats.items()},
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "InputSpec":
        return cls(
            users=dict(raw["users"]),
            items=dict(raw["items"]),
            categories=dict(raw["categories"]),
            brands=dict(raw["brands"]),
            price_bands=dict(raw["price_bands"]),
            content_dim=int(raw["content_dim"]),
            dense_stats={k: (float(v[0]), float(v[1])) for k, v in raw["dense_stats"].items()},
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> "InputSpec":
        """The spec in `path`, parsed strictly.

        Raises:
            UntrustedArtifact: not JSON, an unknown key or a value of another type (named).
        """
        return parse_json(cls, path)


@dataclass(frozen=True)
class UserInputs:
    """One batch of the user tower's inputs."""

    # Keys USER_SPARSE: user_id (1 per row), recent_item_ids (0..20 per row), top_category (0..1 per row).
    sparse: KeyedJaggedTensor
    # [B, len(USER_DENSE)] standardised user_stats.
    dense: torch.Tensor

    def to(self, device: torch.device) -> "UserInputs":
        return UserInputs(sparse=self.sparse.to(device), dense=self.dense.to(device))


@dataclass(frozen=True)
class ItemInputs:
    """One batch of the item tower's inputs."""

    # Keys ITEM_SPARSE, one id per row each.
    sparse: KeyedJaggedTensor
    # [B, len(ITEM_DENSE)] standardised item_stats.
    dense: torch.Tensor
    # [B, content_dim] CLIP item vectors (zeros where an item has none).
    content: torch.Tensor

    def to(self, device: torch.device) -> "ItemInputs":
        return ItemInputs(sparse=self.sparse.to(device), dense=self.dense.to(device), content=self.content.to(device))


@dataclass(frozen=True)
class EncodedUsers:
    """A whole frame of users encoded once as arrays; `batch(rows)` cuts model inputs from it."""

    user_idx: np.ndarray  # [N] int64
    recent_values: np.ndarray  # [sum of lengths] int64 item rows, newest first per user
    recent_offsets: np.ndarray  # [N + 1] int64
    top_category: np.ndarray  # [N] int64, UNKNOWN when absent
    dense: np.ndarray  # [N, len(USER_DENSE)] float32

    def __len__(self) -> int:
        return len(self.user_idx)

    def batch(self, rows: np.ndarray, *, drop_user_ids: np.ndarray | None = None) -> UserInputs:
        """Inputs for `rows`; `drop_user_ids` (bool per row) replaces those user ids by UNKNOWN."""
        user = self.user_idx[rows]
        if drop_user_ids is not None:
            user = np.where(drop_user_ids, UNKNOWN, user)
        recent, offsets = _ragged_take(self.recent_values, self.recent_offsets, rows)
        lengths = np.diff(offsets)
        top = self.top_category[rows]
        has_top = (top != UNKNOWN).astype(np.int64)
        values = np.concatenate([user, recent, top[has_top == 1]])
        lens = np.concatenate([np.ones(len(rows), dtype=np.int64), lengths, has_top])
        sparse = KeyedJaggedTensor.from_lengths_sync(
            keys=list(USER_SPARSE), values=torch.from_numpy(values.astype(np.int64)), lengths=torch.from_numpy(lens)
        )
        return UserInputs(sparse=sparse, dense=torch.from_numpy(self.dense[rows]))

    def take(self, rows: np.ndarray) -> "EncodedUsers":
        """The encoded rows `rows`, in that order."""
        recent, offsets = _ragged_take(self.recent_values, self.recent_offsets, rows)
        return EncodedUsers(self.user_idx[rows], recent, offsets, self.top_category[rows], self.dense[rows])

    @classmethod
    def concat(cls, parts: Sequence["EncodedUsers"]) -> "EncodedUsers":
        """The rows of `parts` one after the other (e.g. a training set encoded chunk by chunk)."""
        shifts = np.cumsum([0] + [len(p.recent_values) for p in parts[:-1]])
        offsets = [parts[0].recent_offsets[:1], *(p.recent_offsets[1:] + shift for p, shift in zip(parts, shifts))]
        return cls(
            user_idx=np.concatenate([p.user_idx for p in parts]),
            recent_values=np.concatenate([p.recent_values for p in parts]),
            recent_offsets=np.concatenate(offsets),
            top_category=np.concatenate([p.top_category for p in parts]),
            dense=np.concatenate([p.dense for p in parts]),
        )


@dataclass(frozen=True)
class EncodedItems:
    """A whole frame of items encoded once; CLIP vectors are stored once per distinct item."""

    item_idx: np.ndarray  # [N] int64
    category: np.ndarray  # [N] int64
    brand: np.ndarray  # [N] int64
    price_band: np.ndarray  # [N] int64
    dense: np.ndarray  # [N, len(ITEM_DENSE)] float32
    content_row: np.ndarray  # [N] rows of `content`
    content: np.ndarray  # [distinct items, content_dim] float32

    def __len__(self) -> int:
        return len(self.item_idx)

    def batch(self, rows: np.ndarray, *, drop_item_ids: np.ndarray | None = None) -> ItemInputs:
        """Inputs for `rows`; `drop_item_ids` (bool per row) replaces those item ids by UNKNOWN."""
        item = self.item_idx[rows]
        if drop_item_ids is not None:
            item = np.where(drop_item_ids, UNKNOWN, item)
        values = np.concatenate([item, self.category[rows], self.brand[rows], self.price_band[rows]])
        sparse = KeyedJaggedTensor.from_lengths_sync(
            keys=list(ITEM_SPARSE),
            values=torch.from_numpy(values.astype(np.int64)),
            lengths=torch.ones(len(ITEM_SPARSE) * len(rows), dtype=torch.int64),
        )
        return ItemInputs(
            sparse=sparse,
            dense=torch.from_numpy(self.dense[rows]),
            content=torch.from_numpy(self.content[self.content_row[rows]]),
        )

    def take(self, rows: np.ndarray) -> "EncodedItems":
        """The encoded rows `rows`, in that order (CLIP vectors stay shared)."""
        return EncodedItems(
            self.item_idx[rows], self.category[rows], self.brand[rows], self.price_band[rows], self.dense[rows],
            self.content_row[rows], self.content,
        )  # fmt: skip

    @classmethod
    def concat(cls, parts: Sequence["EncodedItems"]) -> "EncodedItems":
        """The rows of `parts` one after the other; each part's CLIP vectors are kept once."""
        shifts = np.cumsum([0] + [len(p.content) for p in parts[:-1]])
        return cls(
            item_idx=np.concatenate([p.item_idx for p in parts]),
            category=np.concatenate([p.category for p in parts]),
            brand=np.concatenate([p.brand for p in parts]),
            price_band=np.concatenate([p.price_band for p in parts]),
            dense=np.concatenate([p.dense for p in parts]),
            content_row=np.concatenate([p.content_row + shift for p, shift in zip(parts, shifts)]),
            content=np.concatenate([p.content for p in parts]),
        )


# What the encoders accept: a features frame (training, batch serving) or a list of feature rows
# (one online request, where building a DataFrame would cost more than the user tower itself).
FeatureRows: TypeAlias = "pd.DataFrame | Sequence[Mapping[str, Any]]"


def encode_users(rows: FeatureRows, spec: InputSpec) -> EncodedUsers:
    """Encode the user side of features (user_id, recent_item_ids, top_category, USER_DENSE).

    Missing feature columns or nulls (a new user without stats) encode as "unknown"/mean, so a user
    that the feature store does not know still gets a vector.

    Args:
        rows: a frame, or a list of dicts (Feast online rows plus `user_id`).
        spec: the InputSpec the model was trained with.

    Example:
        encoded = encode_users(online_frame, spec); inputs = encoded.batch(np.arange(len(encoded)))
    """
    _require(rows, ("user_id",))
    n = len(rows)
    lengths = np.zeros(n, dtype=np.int64)
    chunks: list[np.ndarray] = []
    recent = _column(rows, "recent_item_ids")
    for row, ids in enumerate(recent if recent is not None else ()):
        if _is_null(ids):
            continue
        found = [spec.items.get(str(i), UNKNOWN) for i in list(ids)[:MAX_RECENT_ITEMS]]
        known = np.array([f for f in found if f != UNKNOWN], dtype=np.int64)  # unknown items carry no learned signal
        lengths[row] = len(known)
        chunks.append(known)
    values = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    return EncodedUsers(
        user_idx=_lookup(_column(rows, "user_id"), spec.users, n),
        recent_values=values,
        recent_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        top_category=_lookup(_column(rows, "top_category"), spec.categories, n),
        dense=_dense(rows, "user_stats", spec),
    )


def encode_items(rows: FeatureRows, spec: InputSpec) -> EncodedItems:
    """Encode the item side of features (item_id, embedding, category, brand, price_band, ITEM_DENSE).

    An item without a CLIP vector (no image and no text encoded) gets zeros there; an item id
    outside the vocabulary (cold start) gets the UNKNOWN id row, so its vector comes from content.

    Example:
        catalog = encode_items(item_frame, spec); inputs = catalog.batch(np.arange(len(catalog)))
    """
    _require(rows, ("item_id",))
    n = len(rows)
    ids = _column(rows, "item_id")
    codes, uniques = pd.factorize(pd.Series(ids, dtype=object).astype(str))
    content = np.zeros((len(uniques), spec.content_dim), dtype=np.float32)
    vectors = _column(rows, "embedding")
    if vectors is not None:
        first = pd.Series(np.arange(n)).groupby(codes).first()
        for code, row in first.items():
            vector = vectors[row]
            if _is_null(vector):
                continue
            vec = np.asarray(vector, dtype=np.float32)
            if vec.shape != (spec.content_dim,):
                raise InvalidInput(
                    f"item {uniques[code]!r}: field 'embedding' has {vec.size} values, the model expects {spec.content_dim}"
                )
            content[code] = vec
    return EncodedItems(
        item_idx=_lookup(ids, spec.items, n),
        category=_lookup(_column(rows, "category"), spec.categories, n),
        brand=_lookup(_column(rows, "brand"), spec.brands, n),
        price_band=_lookup(_column(rows, "price_band"), spec.price_bands, n),
        dense=_dense(rows, "item_stats", spec),
        content_row=codes.astype(np.int64),
        content=content,
    )


def _ragged_take(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows `rows` of a ragged array (row i is values[offsets[i]:offsets[i + 1]]): their values and offsets."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    out = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    picked = np.repeat(starts - out[:-1], lengths) + np.arange(out[-1])
    return values[picked], out


def _column(rows: FeatureRows, name: str) -> np.ndarray | None:
    """Values of one feature as an object array, or None when no row has it."""
    if isinstance(rows, pd.DataFrame):
        return rows[name].to_numpy(dtype=object) if name in rows.columns else None
    if not any(name in row for row in rows):
        return None
    values = np.empty(len(rows), dtype=object)
    for n, row in enumerate(rows):
        values[n] = row.get(name)  # one by one: equal-length lists must not become a 2-d array
    return values


def _require(rows: FeatureRows, columns: tuple[str, ...]) -> None:
    present = set(rows.columns) if isinstance(rows, pd.DataFrame) else set().union(*(r.keys() for r in rows)) if rows else set()
    missing = [c for c in columns if c not in present]
    if missing or len(rows) == 0:
        raise InvalidInput(f"features: missing column(s) {missing or list(columns)}; has {sorted(present)}")


def _index(values: list[str]) -> dict[str, int]:
    return {value: row + 1 for row, value in enumerate(values)}


def _key(value: object) -> str | None:
    """The vocabulary key of a raw value: strings as they are, whole floats as ints ("3.0" -> "3")."""
    if _is_null(value):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _values(frame: pd.DataFrame, column: str) -> set[str]:
    if column not in frame:
        return set()
    return {k for k in (_key(v) for v in frame[column].drop_duplicates()) if k is not None}


def _lookup(values: np.ndarray | None, vocab: dict[str, int], n: int) -> np.ndarray:
    """Vocabulary rows of `values` (UNKNOWN for nulls and unseen values); all UNKNOWN when the column is absent."""
    if values is None:
        return np.zeros(n, dtype=np.int64)
    cache: dict[object, int] = {}
    out = np.empty(n, dtype=np.int64)
    for i, value in enumerate(values):
        try:
            out[i] = cache[value]
        except KeyError:
            out[i] = cache[value] = vocab.get(_key(value) or "", UNKNOWN)
        except TypeError:  # unhashable (a list where a scalar belongs)
            out[i] = UNKNOWN
    return out


def _is_null(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and bool(np.isnan(value))


def _numbers(rows: FeatureRows, column: str) -> np.ndarray:
    if isinstance(rows, pd.DataFrame):
        return pd.to_numeric(rows[column], errors="coerce").astype("float64").to_numpy()
    out = np.full(len(rows), np.nan)
    for n, row in enumerate(rows):
        value = row.get(column)
        if not _is_null(value):
            try:
                out[n] = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                pass
    return out


def _transform(rows: FeatureRows, view: str, name: str) -> np.ndarray:
    """log1p of a non-negative feature (signed ones as they are), with nulls filled by what they mean."""
    prefixed = f"{view}__{name}"
    has = (lambda c: c in rows.columns) if isinstance(rows, pd.DataFrame) else (lambda c: any(c in r for r in rows))
    column = prefixed if has(prefixed) else name
    values = _numbers(rows, column) if has(column) else np.full(len(rows), np.nan)
    values = np.where(np.isnan(values), NEVER_DAYS if name in NEVER_FEATURES else 0.0, values)
    if name in SIGNED_FEATURES:
        return values
    return np.log1p(np.clip(values, 0.0, None))


def _dense(rows: FeatureRows, view: str, spec: InputSpec) -> np.ndarray:
    names = DENSE_VIEWS[view]
    if not isinstance(rows, pd.DataFrame):
        return _dense_rows(rows, view, spec)
    columns = []
    for name in names:
        mean, std = spec.dense_stats.get(f"{view}.{name}", (0.0, 1.0))
        columns.append((_transform(rows, view, name) - mean) / std)
    return np.stack(columns, axis=1).astype(np.float32) if columns else np.zeros((len(rows), 0), np.float32)


def _dense_rows(rows: Sequence[Mapping[str, Any]], view: str, spec: InputSpec) -> np.ndarray:
    """`_dense` of a few dict rows (one online request) in one pass, with the frame path's exact values.

    The frame path costs a dozen numpy calls per feature; for one row that overhead is the whole cost,
    so here every feature is read into one [features, rows] matrix and transformed at once. Each
    feature's values stay one contiguous row, and every step (fill, clip, log1p, standardise in
    float64, then float32) is the same elementwise operation as `_transform`, so the results are
    bit-identical (tests/ranking/test_retriever.py checks it).
    """
    names = DENSE_VIEWS[view]
    present: set[str] = set().union(*(row.keys() for row in rows))
    columns = [f"{view}__{name}" if f"{view}__{name}" in present else name for name in names]
    raw = np.full((len(names), len(rows)), np.nan)
    for n, row in enumerate(rows):
        for f, column in enumerate(columns):
            value = row.get(column)
            if not _is_null(value):
                try:
                    raw[f, n] = float(value)  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    pass
    fill = np.array([[NEVER_DAYS if name in NEVER_FEATURES else 0.0] for name in names])
    values = np.where(np.isnan(raw), fill, raw)
    signed = np.array([[name in SIGNED_FEATURES] for name in names])
    values = np.where(signed, values, np.log1p(np.clip(values, 0.0, None)))
    stats = [spec.dense_stats.get(f"{view}.{name}", (0.0, 1.0)) for name in names]
    means = np.array([[mean] for mean, _ in stats])
    stds = np.array([[std] for _, std in stats])
    return np.ascontiguousarray(((values - means) / stds).T).astype(np.float32)
