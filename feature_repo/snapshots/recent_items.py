"""The `user_recent_items` snapshots: the user's last RECENT_ITEMS distinct items, newest first.

The sequence feature of the retriever's user tower. Every event type counts (view, click,
add_to_cart, purchase); an item seen several times appears once, at its newest position. The list
looks back HORIZON_DAYS (30) days, like every other feature, so it changes only the day after
activity (a + 1) and the day an active day leaves the horizon (a + 31): those are the only rows.
An inactive user's last row is an empty list, which then ages out with the view's ttl.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from feature_repo.columns import arrow_schema
from feature_repo.snapshots.daily_windows import HORIZON_DAYS, change_days, day_start, gather_ranges, pack, ranges_before
from feature_repo.snapshots.event_log import Catalog, EventLog, names_of

# Length of the sequence the user tower reads.
RECENT_ITEMS = 20
# Raw events scanned per snapshot before de-duplication: 10x the list keeps it full for users who
# revisit the same few items, and bounds memory for the few users with thousands of events.
SCAN_CAP = 10 * RECENT_ITEMS
# Snapshot rows handled at once: bounds the scan's memory at any scale.
CHUNK_ROWS = 500_000

SCHEMA = arrow_schema("user_recent_items")


def recent_items(log: EventLog, catalog: Catalog, first_day: int, last_day: int) -> pa.Table:
    """Rows for the snapshot days in first_day..last_day on which a user's recent list changes.

    Args:
        log: events from at least day first_day - 31 up to last_day - 1.
        catalog: maps item codes back to ids.
        first_day, last_day: snapshot day numbers, inclusive.

    Returns:
        A table with `SCHEMA`, sorted by event_timestamp then user_id.

    Example:
        >>> recent_items(log, catalog, 20_001, 20_060).column("recent_item_ids")[0].as_py()[:2]
        ['I000017', 'I000003']
    """
    rows = change_days(log.user, log.day, (1, HORIZON_DAYS + 1), first_day, last_day)
    user, day = rows["entity"].to_numpy(), rows["day"].to_numpy()

    # Events by user, then time: a user's events of days [D - 30, D - 1] are one contiguous run.
    order = np.lexsort((log.ns, log.user))
    keys = pack(log.user[order], log.day[order])
    items = log.item[order]
    chunks = np.array_split(np.arange(len(user)), max(1, -(-len(user) // CHUNK_ROWS)))
    lists = pa.concat_arrays([_recent_lists(keys, items, catalog, user[c], day[c]) for c in chunks]) if len(user) else (
        pa.ListArray.from_arrays(pa.array([0], pa.int32()), pa.array([], pa.string()))
    )

    out = np.lexsort((user, day))
    return pa.table(
        {
            "user_id": names_of(user[out], log.user_ids),
            "event_timestamp": pa.array(day_start(day[out]), type=pa.timestamp("ns", tz="UTC")),
            "recent_item_ids": lists.take(pa.array(out)),
        },
        schema=SCHEMA,
    )


def _recent_lists(keys: np.ndarray, items: np.ndarray, catalog: Catalog, user: np.ndarray, day: np.ndarray) -> pa.ListArray:
    """Distinct items, newest first, of each (user, day)'s 30-day look-back; `keys` sorted by user then time."""
    lo, hi = ranges_before(keys, user, day, HORIZON_DAYS)
    query, row = gather_ranges(lo, hi, newest_first=True, cap=SCAN_CAP)
    item = items[row]
    # Keep each (row, item)'s first (newest) occurrence, in scan order.
    _, first = np.unique(query * len(catalog.item_ids) + item, return_index=True)
    first.sort()
    query, item = query[first], item[first]
    position = np.arange(len(query)) - np.searchsorted(query, query, side="left")
    keep = position < RECENT_ITEMS
    query, item = query[keep], item[keep]
    lengths = np.bincount(query, minlength=len(user))
    offsets = pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int32))
    return pa.ListArray.from_arrays(offsets, names_of(item, catalog.item_ids))
