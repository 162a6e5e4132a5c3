"""Trailing-window sums over per-entity daily counts, and the days on which they change.

The three feature builders (`item_stats`, `user_stats`, `recent_items`) all answer one question:
"for entity e at snapshot day D, what happened on days D-w .. D-1?". They share this module.

Days are integers (days since 1970-01-01 UTC). A snapshot at day D stands for D 00:00 UTC and
sees only events with timestamp < D, so its windows cover days [D - w, D - 1].

Everything is vectorised: per entity, daily rows are sorted and cumulated once, and a window sum
is two binary searches (`np.searchsorted`) into the cumulated array, whatever the number of
(entity, day) queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from feature_repo.columns import COUNT_WINDOWS

SECONDS_PER_DAY = 86_400
NS_PER_DAY = SECONDS_PER_DAY * 1_000_000_000

# Windows of the published counts (feature names end in _1d, _7d, _30d).
WINDOWS: tuple[int, ...] = COUNT_WINDOWS
# The longest look-back of any feature: an incremental rebuild of day D reads events from D - 31
# (the extra day emits the row on which a 30-day window empties).
HORIZON_DAYS = max(WINDOWS)

# Shift of the entity code in a packed (entity, day) key; 2**22 days is ~11,000 years.
_DAY_BITS = 22


def day_of(timestamps: pd.Series) -> np.ndarray:
    """UTC day numbers (int64) of a datetime64[ns, UTC] series."""
    ns = timestamps.astype("datetime64[ns, UTC]").array.asi8  # type: ignore[union-attr]
    return np.floor_divide(ns, NS_PER_DAY).astype(np.int64)


def day_start(days: np.ndarray | pd.Series) -> pd.Series:
    """The UTC midnight of each day number, as datetime64[ns, UTC]."""
    values = np.asarray(days, dtype=np.int64) * NS_PER_DAY
    return pd.Series(pd.to_datetime(values, unit="ns", utc=True))


def pack(entity: np.ndarray, day: np.ndarray) -> np.ndarray:
    """One sortable int64 key per (entity code, day)."""
    return (entity.astype(np.int64) << _DAY_BITS) + day.astype(np.int64)


@dataclass(frozen=True)
class DailyCounts:
    """Per (entity, day) counts, sorted by entity then day, with running totals per entity.

    Attributes:
        keys: packed (entity, day) keys, ascending (shape [n_rows]).
        cumulative: running sums per entity of each count column (shape [n_rows, n_columns]).
        columns: names of the count columns, in `cumulative` order.
    """

    keys: np.ndarray
    cumulative: np.ndarray
    columns: tuple[str, ...]

    @classmethod
    def of(cls, entity: np.ndarray, day: np.ndarray, counts: dict[str, np.ndarray]) -> "DailyCounts":
        """Aggregate event-level rows (one per event, count columns 0/1 or weights) to daily totals.

        Args:
            entity: integer entity code per event.
            day: day number per event.
            counts: column name -> per-event amount to add up.

        Example:
            >>> d = DailyCounts.of(np.array([0, 0, 1]), np.array([5, 6, 5]), {"n": np.ones(3)})
            >>> d.window_sums(np.array([0]), np.array([7]), 30)["n"].tolist()
            [2.0]
        """
        keys = pack(entity, day)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        unique_keys, starts = np.unique(keys, return_index=True)
        names = tuple(counts)
        if len(keys) == 0:
            return cls(unique_keys, np.zeros((0, len(names))), names)
        stacked = np.column_stack([np.asarray(counts[n], dtype=np.float64)[order] for n in names])
        daily = np.add.reduceat(stacked, starts, axis=0)
        # Running totals restart per entity: subtract the total reached before the entity's first row.
        running = np.cumsum(daily, axis=0)
        entity_of_row = unique_keys >> _DAY_BITS
        first_row = np.r_[True, entity_of_row[1:] != entity_of_row[:-1]]
        first_index = np.maximum.accumulate(np.where(first_row, np.arange(len(daily)), 0))
        base = (running - daily)[first_index]
        return cls(unique_keys, running - base, names)

    def _cumulative_before(self, entity: np.ndarray, day: np.ndarray) -> np.ndarray:
        """Running totals of `entity` over its days < `day` (zeros when it has none)."""
        query = pack(entity, day)
        position = np.searchsorted(self.keys, query, side="left") - 1
        valid = position >= 0
        valid[valid] = (self.keys[position[valid]] >> _DAY_BITS) == entity[valid]
        out = np.zeros((len(query), len(self.columns)))
        out[valid] = self.cumulative[position[valid]]
        return out

    def window_sums(self, entity: np.ndarray, day: np.ndarray, window: int) -> dict[str, np.ndarray]:
        """Sums over days [day - window, day - 1] for each (entity, day) query."""
        upper = self._cumulative_before(entity, day)
        lower = self._cumulative_before(entity, day - window)
        total = upper - lower
        return {name: total[:, i] for i, name in enumerate(self.columns)}


def change_days(entity: np.ndarray, active_day: np.ndarray, offsets: tuple[int, ...], first: int, last: int) -> pd.DataFrame:
    """The (entity, snapshot day) pairs on which a windowed value can change.

    An event on day a enters every window at snapshot a + 1 and leaves a w-day window at a + w + 1,
    so the snapshots after activity on day a that may differ from their predecessor are
    a + offset for each offset. Only snapshots within [first, last] are kept.

    Args:
        entity: entity code per active (entity, day), duplicates allowed.
        active_day: day number of the activity.
        offsets: e.g. (1, 2, 8, 31) for 1/7/30-day windows.
        first: first snapshot day to emit.
        last: last snapshot day to emit.

    Returns:
        Frame with int64 columns `entity` and `day`, unique, sorted by entity then day.
    """
    # Deduplicate active (entity, day) first: a user with 30 events on a day is one active day.
    active = np.unique(pack(entity, active_day))
    entity, active_day = active >> _DAY_BITS, active & ((1 << _DAY_BITS) - 1)
    ent = np.repeat(entity, len(offsets))
    day = (active_day[:, None] + np.asarray(offsets, dtype=np.int64)[None, :]).ravel()
    keep = (day >= first) & (day <= last)
    keys = np.unique(pack(ent[keep], day[keep]))
    return pd.DataFrame({"entity": keys >> _DAY_BITS, "day": keys & ((1 << _DAY_BITS) - 1)})


def window_offsets(windows: tuple[int, ...] = WINDOWS) -> tuple[int, ...]:
    """Snapshot offsets after an activity day at which some window changes: 1 and w + 1 per window."""
    return tuple(sorted({1, *(w + 1 for w in windows)}))


def last_before(keys: np.ndarray, entity: np.ndarray, day: np.ndarray, horizon: int) -> np.ndarray:
    """Index of the latest row of `entity` in sorted packed `keys` with day in [day - horizon, day - 1]; -1 if none."""
    position = np.searchsorted(keys, pack(entity, day), side="left") - 1
    valid = position >= 0
    found_key = keys[np.where(valid, position, 0)]
    valid &= (found_key >> _DAY_BITS) == entity
    valid &= (found_key & ((1 << _DAY_BITS) - 1)) >= day - horizon
    return np.where(valid, position, -1)


def ranges_before(keys: np.ndarray, entity: np.ndarray, day: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ranges [lo, hi) of `entity` in sorted packed `keys` with day in [day - horizon, day - 1]."""
    hi = np.searchsorted(keys, pack(entity, day), side="left")
    lo = np.searchsorted(keys, pack(entity, day - horizon), side="left")
    return lo, np.maximum(hi, lo)


def gather_ranges(lo: np.ndarray, hi: np.ndarray, newest_first: bool = False, cap: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flatten row ranges into (query index, row index) pairs, optionally newest first and capped.

    Args:
        lo, hi: per query, the half-open row range.
        newest_first: walk each range from hi - 1 down to lo.
        cap: keep at most this many rows per query (the newest ones when `newest_first`).

    Returns:
        (query, row): int64 arrays of equal length, grouped by query in query order.
    """
    length = hi - lo
    if cap is not None:
        length = np.minimum(length, cap)
    query = np.repeat(np.arange(len(lo)), length)
    starts = np.cumsum(length) - length
    step = np.arange(len(query)) - np.repeat(starts, length)
    row = (np.repeat(hi, length) - 1 - step) if newest_first else (np.repeat(lo, length) + step)
    return query, row
