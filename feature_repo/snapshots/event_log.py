"""The event log of a read range as integer codes: the input of every feature builder.

Strings are factorised once here (users, items, categories, brands) so that the builders work on
int64/float64 numpy arrays only; that is what lets 20M events fit in memory and in a minute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_repo.snapshots.daily_windows import day_of
from vitrine.errors import UnusableFile
from vitrine.shop.contract import EVENT_TYPES

# Number of price bands when the catalog has no usable `price_band` column: quintiles.
PRICE_BANDS = 5


@dataclass(frozen=True)
class Catalog:
    """Item attributes indexed by item code (position in `item_ids`).

    Attributes:
        item_ids: item id per code (object array, shape [n_items]).
        price: catalog price, NaN where unknown.
        created_ns: creation time in ns since epoch, -1 where unknown.
        category: category code per item, -1 where unknown; names in `categories`.
        brand: brand code per item, -1 where unknown; names in `brands`.
        price_band: 0..PRICE_BANDS-1 (or the shop's own integer bands), -1 where unknown.
    """

    item_ids: np.ndarray
    price: np.ndarray
    created_ns: np.ndarray
    category: np.ndarray
    categories: np.ndarray
    brand: np.ndarray
    brands: np.ndarray
    price_band: np.ndarray

    @classmethod
    def of(cls, items: pd.DataFrame) -> "Catalog":
        """Codes and attributes of a catalog frame; optional columns may be absent or all null."""
        if "item_id" not in items.columns:
            raise UnusableFile("items: no item_id column")
        n = len(items)
        ids = items["item_id"].astype(str).to_numpy(dtype=object)
        price = pd.to_numeric(items["price"], errors="coerce").to_numpy(dtype=np.float64) if "price" in items else np.full(n, np.nan)
        if "created_at" in items and items["created_at"].notna().any():
            created = pd.to_datetime(items["created_at"], utc=True).astype("datetime64[ns, UTC]")
            created_ns = np.where(created.notna(), created.array.asi8, -1)  # type: ignore[union-attr]
        else:
            created_ns = np.full(n, -1, dtype=np.int64)
        category, categories = _codes(items, "category")
        brand, brands = _codes(items, "brand")
        return cls(ids, price, created_ns.astype(np.int64), category, categories, brand, brands, _price_bands(items, price))


def _codes(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    if column not in frame:
        return np.full(len(frame), -1, dtype=np.int64), np.array([], dtype=object)
    values = frame[column].astype("string")
    values = values.mask(values.str.strip() == "")
    codes, names = pd.factorize(values, sort=True, use_na_sentinel=True)
    return codes.astype(np.int64), np.asarray(names, dtype=object)


def _price_bands(items: pd.DataFrame, price: np.ndarray) -> np.ndarray:
    """The shop's integer `price_band` when it has one, else catalog price quintiles; -1 when unknown."""
    if "price_band" in items:
        own = pd.to_numeric(items["price_band"], errors="coerce")
        if own.notna().any():
            return own.fillna(-1).to_numpy(dtype=np.int64)
    known = ~np.isnan(price)
    bands = np.full(len(price), -1, dtype=np.int64)
    if known.any():
        edges = np.quantile(price[known], np.linspace(0, 1, PRICE_BANDS + 1)[1:-1])
        bands[known] = np.searchsorted(edges, price[known], side="right")
    return bands


@dataclass(frozen=True)
class EventLog:
    """Events of one read range, one array entry per event, sorted by time.

    Attributes:
        user: user code per event; ids in `user_ids`.
        item: item code per event (a `Catalog` code).
        kind: index into EVENT_TYPES (0 view, 1 click, 2 add_to_cart, 3 purchase).
        ns: event time in ns since epoch (UTC).
        day: UTC day number of the event.
        price_paid: the event's price, else the catalog price, NaN when neither is known.
    """

    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray
    ns: np.ndarray
    day: np.ndarray
    price_paid: np.ndarray
    user_ids: np.ndarray

    @classmethod
    def of(cls, events: pd.DataFrame, catalog: Catalog) -> "EventLog":
        """Encode an events frame (contract columns) against `catalog`.

        Events of items that the catalog does not know are dropped: they have no attributes to
        compute features from (ingest rejects them already; this is a second line).
        """
        item = pd.Index(catalog.item_ids).get_indexer(events["item_id"].astype(str))
        kind = pd.Index(EVENT_TYPES).get_indexer(events["event_type"])
        keep = (item >= 0) & (kind >= 0)
        frame = events.loc[keep] if not keep.all() else events
        item, kind = item[keep], kind[keep]
        # Sorted codes: rows come out ordered by user id, the same in full and incremental builds.
        user, user_ids = pd.factorize(frame["user_id"].astype(str), sort=True)
        stamps = pd.to_datetime(frame["timestamp"], utc=True).astype("datetime64[ns, UTC]")
        ns = stamps.array.asi8  # type: ignore[union-attr]
        paid = pd.to_numeric(frame["price"], errors="coerce").to_numpy(dtype=np.float64) if "price" in frame else np.full(len(frame), np.nan)
        paid = np.where(np.isnan(paid), catalog.price[item], paid)
        return cls(
            user=user.astype(np.int64),
            item=item.astype(np.int64),
            kind=kind.astype(np.int64),
            ns=np.asarray(ns, dtype=np.int64),
            day=day_of(stamps),
            price_paid=paid,
            user_ids=np.asarray(user_ids, dtype=object),
        )

    def __len__(self) -> int:
        return len(self.user)

    def kind_is(self, name: str) -> np.ndarray:
        """0/1 per event: whether it is of event type `name`."""
        return (self.kind == EVENT_TYPES.index(name)).astype(np.float64)


def names_of(codes: np.ndarray, names: np.ndarray) -> pa.Array:
    """The string for each code (an index into `names`), null for -1: one Arrow string array.

    Goes through a dictionary array so that millions of rows never become Python strings.
    """
    dictionary = pa.array(np.asarray(names, dtype=object), type=pa.string())
    indices = pa.array(np.asarray(codes, dtype=np.int64), mask=np.asarray(codes) < 0, type=pa.int64())
    return pa.DictionaryArray.from_arrays(indices, dictionary).cast(pa.string())
