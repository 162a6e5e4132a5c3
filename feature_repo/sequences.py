"""Positive interactions, and every user's distinct items in the order first met (`Sequences`).

`positive_interactions` is what every model learns from: the events of one user on one item within
one session collapse into one interaction at its first moment, weighted by the strongest event type
(a purchase teaches more than a view). `Sequences` orders them per user: the input of the sequence
tower and of co-visitation, offline and (through the `user_sequence` view) online.

A user's items are sorted by time, ties
kept in the order of the stored log (so a shop whose dates are synthetic keeps its real order), and
an item met again keeps its first position. The layout is CSR: one flat array of catalog rows and
the offsets of each user's slice, so millions of users cost two int64 arrays.

Example:
    seqs = Sequences.of(positive_interactions(read_events(data)), read_items(data)["item_id"])
    seqs.user(0)            # catalog rows of the first user's items, oldest first
    seqs.truncated(1)       # every user without their last item
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vitrine.errors import InvalidInput
from vitrine.shop.contract import EVENT_TYPES

# Interaction weight by the strongest event type: each funnel step about doubles the evidence.
EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 4.0}
assert set(EVENT_WEIGHTS) == set(EVENT_TYPES), "every event type needs a weight"


def positive_interactions(events: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item, session): the first moment and the strongest event's weight.

    Without `session_id` the UTC day stands in for the session. Id columns may be strings or
    categoricals (`read_events(..., categorical=True)`, how training reads a large log).

    Returns:
        user_id, item_id, timestamp (first event), weight, sorted by timestamp.
    """
    if events.empty:
        raise InvalidInput("events: no events to learn from")
    # Grouped by integer codes: grouping 25M rows by three string columns took gigabytes more.
    users, user_ids = pd.factorize(events["user_id"])
    items, item_ids = pd.factorize(events["item_id"])
    has_session = "session_id" in events and events["session_id"].notna().any()
    # Missing sessions share one code (-1), as one "" session.
    sessions, _ = pd.factorize(events["session_id"] if has_session else events["timestamp"].dt.floor("D"))
    frame = pd.DataFrame(
        {"user": users, "item": items, "session": sessions, "timestamp": events["timestamp"].array,
         "weight": events["event_type"].map(EVENT_WEIGHTS).to_numpy(np.float32)}
    )  # fmt: skip
    grouped = frame.groupby(["user", "item", "session"], sort=False)
    out = grouped.agg(timestamp=("timestamp", "min"), weight=("weight", "max")).reset_index()
    out = out.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return pd.DataFrame(
        {
            "user_id": _strings(user_ids)[out["user"].to_numpy()],
            "item_id": _strings(item_ids)[out["item"].to_numpy()],
            "timestamp": out["timestamp"],
            "weight": out["weight"].to_numpy(np.float32),
        }
    )


def _strings(values: Any) -> np.ndarray:
    """Distinct ids as an object array of `str`: indexing it shares one string object per id."""
    return pd.Index(values).astype(str).to_numpy(dtype=object)


@dataclass(frozen=True)
class Sequences:
    """Every user's distinct items in order, as catalog rows in one flat array (CSR layout).

    Attributes:
        item_ids: [items] catalog ids; an item's row is its code everywhere.
        user_ids: [users] ids, in the order of `offsets`.
        offsets: [users + 1] user u's items are items[offsets[u]:offsets[u + 1]], oldest first.
        items: [interactions] catalog rows.
        moments: [interactions] ns since the epoch (UTC) of each item's first interaction, when known.
        returns: [interactions] in how many more sessions the user met the item again (0 = once), when
            known. It counts the whole log it was built from, also past a later truncation: an item-level
            share of returning users (`repeat_share`) moves by a few users at most for it.
    """

    item_ids: np.ndarray
    user_ids: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    moments: np.ndarray | None = None
    returns: np.ndarray | None = None

    @classmethod
    def of(cls, interactions: pd.DataFrame, catalog_ids: Sequence[str] | pd.Series) -> "Sequences":
        """From rows of user_id, item_id, timestamp (any order of users; ties keep the row order).

        Items outside `catalog_ids` are an error: the contract's ingest already rejects them.
        """
        item_ids = np.asarray([str(i) for i in catalog_ids], dtype=object)
        rows = pd.Index(item_ids)
        frame = interactions[["user_id", "item_id", "timestamp"]].copy()
        # Sorted and split as strings, so the order and the offsets agree whatever the ids' type.
        frame["user_id"] = frame["user_id"].astype(str)
        frame["row"] = rows.get_indexer(frame["item_id"].astype(str))
        if (frame["row"] < 0).any():
            missing = frame.loc[frame["row"] < 0, "item_id"].iloc[0]
            raise ValueError(f"interactions: item_id {missing!r} is not in the catalog")
        frame["order"] = np.arange(len(frame))
        frame = frame.sort_values(["user_id", "timestamp", "order"], kind="stable")
        # Rows of one (user, item) beyond the first: the sessions they came back to it in.
        frame["returns"] = frame.groupby(["user_id", "row"], sort=False)["order"].transform("size") - 1
        frame = frame.drop_duplicates(["user_id", "row"], keep="first")
        users, starts = np.unique(frame["user_id"].to_numpy(), return_index=True)
        offsets = np.r_[starts, len(frame)].astype(np.int64)
        moments = pd.to_datetime(frame["timestamp"], utc=True).astype("datetime64[ns, UTC]").array.asi8  # type: ignore[union-attr]
        return cls(item_ids, users.astype(object), offsets, frame["row"].to_numpy(np.int64), np.asarray(moments, dtype=np.int64),
                   frame["returns"].to_numpy(np.int32))

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def user(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    def truncated(self, drop_last: int, users: np.ndarray | None = None) -> "Sequences":
        """The same users with the last `drop_last` items of `users` (default: all) removed."""
        cut = np.zeros(len(self.user_ids), dtype=np.int64)
        cut[slice(None) if users is None else users] = drop_last
        return self.truncated_from(cut)

    def truncated_to(self, counts: np.ndarray) -> "Sequences":
        """The same users with only their first `counts[u]` items (what each knew at some moment)."""
        return self.truncated_from(np.maximum(self.lengths - np.asarray(counts, dtype=np.int64), 0))

    def truncated_from(self, drop: np.ndarray) -> "Sequences":
        """The same users with their last `drop[u]` items removed (per-user counts)."""
        lengths = np.maximum(self.lengths - np.asarray(drop, dtype=np.int64), 0)
        starts = self.offsets[:-1]
        keep = (np.repeat(starts, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))).astype(np.int64)
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        return Sequences(self.item_ids, self.user_ids, offsets, self.items[keep], *self._per_interaction(keep))

    def _per_interaction(self, keep: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """`moments` and `returns` of the kept interactions."""
        return (None if self.moments is None else self.moments[keep], None if self.returns is None else self.returns[keep])

    def repeat_share(self) -> np.ndarray:
        """[items] the share of an item's users who came back to it in another session (NaN: no user, or unknown)."""
        users = np.bincount(self.items, minlength=self.n_items).astype(np.float32)
        if self.returns is None:
            return np.full(self.n_items, np.nan, dtype=np.float32)
        returning = np.bincount(self.items, weights=(self.returns > 0), minlength=self.n_items).astype(np.float32)
        return np.where(users > 0, returning / np.maximum(users, 1.0), np.nan).astype(np.float32)

    def remapped(self, item_ids: Sequence[str] | np.ndarray) -> "Sequences":
        """The same sequences in the rows of another catalog `item_ids`; items it lacks are dropped."""
        ids = np.asarray([str(i) for i in item_ids], dtype=object)
        if len(ids) == len(self.item_ids) and np.array_equal(ids, self.item_ids.astype(str)):
            return Sequences(ids, self.user_ids, self.offsets, self.items, self.moments, self.returns)
        rows = pd.Index(ids).get_indexer(self.item_ids.astype(str))[self.items]
        kept = rows >= 0
        lengths = np.bincount(np.repeat(np.arange(len(self.user_ids)), self.lengths)[kept], minlength=len(self.user_ids))
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        return Sequences(ids, self.user_ids, offsets, rows[kept].astype(np.int64), *self._per_interaction(np.flatnonzero(kept)))

    def interactions(self) -> pd.DataFrame:
        """user (row), item (row), position: the long form, for count-based models."""
        users = np.repeat(np.arange(len(self.user_ids)), self.lengths)
        positions = np.arange(len(self.items)) - np.repeat(self.offsets[:-1], self.lengths)
        return pd.DataFrame({"user": users, "item": self.items, "position": positions})
