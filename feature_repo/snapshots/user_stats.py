"""The `user_stats` snapshots: activity over windows, purchase behaviour, recency and affinities.

A user gets a row at snapshot D only when one of its values may have changed since the previous
snapshot: after each active day a, at a + 1 (new events), a + 2, a + 8 and a + 31 (the event
leaves the 1-, 7- and 30-day windows). One million users x 60 days would not fit; these change
days are ~4 rows per active day. Between rows the last row holds, which is exactly what Feast's
point-in-time join and the online store serve.

Every value looks back at most HORIZON_DAYS (30) days, so an incremental rebuild needs only the
last 31 days of events and gives the same rows as a full rebuild:
- days_since_last_event / days_since_last_purchase: null when nothing happened in 30 days; they are
  measured at the row's snapshot and are not advanced between rows;
- affinity_categories / affinity_brands: the user's top AFFINITY_TOP_K categories (brands) by number
  of interactions in 30 days, with their share of the user's interactions that have a category
  (brand); top_category is the first one. Heavy users (bots) count only their newest
  AFFINITY_SCAN_CAP (day, category) entries;
- purchase_rate_30d = (purchases + m * mu) / (events + m): Beta-smoothed with mu the shop-wide rate in
  the same window and m = PRIOR_STRENGTH events;
- avg_price_paid / max_price_paid: over purchases with a known price (the event's, else the catalog's),
  null without one.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from feature_repo.columns import arrow_schema
from feature_repo.snapshots.daily_windows import (
    HORIZON_DAYS,
    NS_PER_DAY,
    WINDOWS,
    DailyCounts,
    change_days,
    day_start,
    gather_ranges,
    last_before,
    pack,
    ranges_before,
    window_offsets,
)
from feature_repo.snapshots.event_log import Catalog, EventLog, names_of

# Pseudo-events of the purchase-rate prior: a user needs ~10 events before its own rate dominates.
PRIOR_STRENGTH = 10.0
# Purchase rate used as the prior when the shop had no events at all in the window.
FALLBACK_PURCHASE_RATE = 0.01
# Categories / brands kept in the affinity lists: enough for a ranker's "same category" feature.
AFFINITY_TOP_K = 5
# Newest (day, category) entries scanned per snapshot: a shopper has a few dozen, a scraping bot
# thousands; the cap keeps the scan linear in events instead of quadratic in one user's activity.
AFFINITY_SCAN_CAP = 500
# Snapshot rows whose affinities are computed at once: bounds the scan's memory (~1 GB) at any scale.
AFFINITY_CHUNK_ROWS = 500_000

SCHEMA = arrow_schema("user_stats")


def user_stats(log: EventLog, catalog: Catalog, first_day: int, last_day: int) -> pa.Table:
    """Rows for the snapshot days in first_day..last_day on which a user's values change.

    Args:
        log: events from at least day first_day - 31 up to last_day - 1.
        catalog: item attributes (categories, brands, prices).
        first_day, last_day: snapshot day numbers, inclusive.

    Returns:
        A table with `SCHEMA`, sorted by event_timestamp then user_id.

    Example:
        >>> user_stats(log, catalog, 20_001, 20_060).num_rows > 0
        True
    """
    rows = change_days(log.user, log.day, window_offsets(), first_day, last_day)
    user, day = rows["entity"].to_numpy(), rows["day"].to_numpy()
    purchase = log.kind_is("purchase")
    paid = purchase * ~np.isnan(log.price_paid)
    daily = DailyCounts.of(
        log.user,
        log.day,
        {
            "events": np.ones(len(log)),
            "views": log.kind_is("view"),
            "clicks": log.kind_is("click"),
            "carts": log.kind_is("add_to_cart"),
            "purchases": purchase,
            "paid_n": paid,
            "paid_sum": np.where(paid > 0, log.price_paid, 0.0),
        },
    )
    sums = {w: daily.window_sums(user, day, w) for w in WINDOWS}
    month = sums[HORIZON_DAYS]

    shop = DailyCounts.of(np.zeros(len(log), dtype=np.int64), log.day, {"events": np.ones(len(log)), "purchases": purchase})
    shop_month = shop.window_sums(np.zeros(len(day), dtype=np.int64), day, HORIZON_DAYS)
    with np.errstate(invalid="ignore", divide="ignore"):
        prior = np.where(shop_month["events"] > 0, shop_month["purchases"] / shop_month["events"], FALLBACK_PURCHASE_RATE)
        purchase_rate = (month["purchases"] + PRIOR_STRENGTH * prior) / (month["events"] + PRIOR_STRENGTH)
        avg_paid = np.where(month["paid_n"] > 0, month["paid_sum"] / month["paid_n"], np.nan)

    since_event = _days_since_last(log.user, log.day, log.ns, user, day)
    bought = purchase > 0
    since_purchase = _days_since_last(log.user[bought], log.day[bought], log.ns[bought], user, day)
    has_price = bought & ~np.isnan(log.price_paid)
    max_paid = _window_max(log.user[has_price], log.day[has_price], log.price_paid[has_price], user, day)

    cats, cat_shares = _affinities(log.user, log.day, catalog.category[log.item], catalog.categories, user, day)
    brands, brand_shares = _affinities(log.user, log.day, catalog.brand[log.item], catalog.brands, user, day)
    top = _first(cats)

    order = np.lexsort((user, day))
    take = pa.array(order)
    columns = {
        "user_id": names_of(user[order], log.user_ids),
        "event_timestamp": pa.array(day_start(day[order]), type=pa.timestamp("ns", tz="UTC")),
        **{f"events_{w}d": pa.array(sums[w]["events"][order].astype(np.int64)) for w in WINDOWS},
        "views_30d": pa.array(month["views"][order].astype(np.int64)),
        "clicks_30d": pa.array(month["clicks"][order].astype(np.int64)),
        "carts_30d": pa.array(month["carts"][order].astype(np.int64)),
        "purchases_30d": pa.array(month["purchases"][order].astype(np.int64)),
        "purchase_rate_30d": pa.array(purchase_rate[order].astype(np.float32)),
        "avg_price_paid": _floats(avg_paid[order]),
        "max_price_paid": _floats(max_paid[order]),
        "days_since_last_event": _floats(since_event[order]),
        "days_since_last_purchase": _floats(since_purchase[order]),
        "affinity_categories": cats.take(take),
        "affinity_category_shares": cat_shares.take(take),
        "affinity_brands": brands.take(take),
        "affinity_brand_shares": brand_shares.take(take),
        "top_category": top.take(take),
    }
    return pa.table(columns, schema=SCHEMA)


def _floats(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.float32), mask=np.isnan(values))


def _first(lists: pa.ListArray) -> pa.Array:
    """First element of each list, null for empty lists."""
    lengths = np.asarray(lists.value_lengths().fill_null(0))
    offsets = np.asarray(lists.offsets)[:-1]
    values = lists.values
    index = pa.array(np.where(lengths > 0, offsets, 0), mask=lengths == 0)
    return values.take(index) if len(values) else pa.nulls(len(lists), pa.string())


def _days_since_last(
    ev_user: np.ndarray, ev_day: np.ndarray, ev_ns: np.ndarray, user: np.ndarray, day: np.ndarray
) -> np.ndarray:
    """Days from the latest event within the 30-day horizon to each snapshot; NaN without one."""
    keys = pack(ev_user, ev_day)
    order = np.argsort(keys, kind="stable")
    keys, ns = keys[order], ev_ns[order]
    unique_keys, starts = np.unique(keys, return_index=True)
    if len(unique_keys) == 0:
        return np.full(len(user), np.nan)
    latest_ns = np.maximum.reduceat(ns, starts)
    row = last_before(unique_keys, user, day, HORIZON_DAYS)
    found = row >= 0
    out = np.full(len(user), np.nan)
    out[found] = (day[found] * NS_PER_DAY - latest_ns[row[found]]) / NS_PER_DAY
    return out


def _window_max(ev_user: np.ndarray, ev_day: np.ndarray, value: np.ndarray, user: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Max of `value` over events of the user in the 30 days before each snapshot; NaN without one."""
    out = np.full(len(user), np.nan)
    if len(ev_user) == 0:
        return out
    keys = pack(ev_user, ev_day)
    order = np.argsort(keys, kind="stable")
    keys, value = keys[order], value[order]
    unique_keys, starts = np.unique(keys, return_index=True)
    daily_max = np.maximum.reduceat(value, starts)
    lo, hi = ranges_before(unique_keys, user, day, HORIZON_DAYS)
    some = hi > lo
    query, row = gather_ranges(lo[some], hi[some])
    segment_starts = np.r_[0, np.flatnonzero(np.diff(query)) + 1]
    out[some] = np.maximum.reduceat(daily_max[row], segment_starts) if len(row) else out[some]
    return out


def _affinities(
    ev_user: np.ndarray, ev_day: np.ndarray, ev_code: np.ndarray, names: np.ndarray, user: np.ndarray, day: np.ndarray
) -> tuple[pa.ListArray, pa.ListArray]:
    """Top AFFINITY_TOP_K codes per (user, snapshot) by 30-day interaction count, with their shares.

    The 30-day mix changes only when an active day enters (D - 1 active) or leaves (D - 31 active)
    the window, so it is computed on those rows and carried forward to the user's other rows.

    Args:
        ev_user, ev_day, ev_code: per event, the user, day and category (or brand) code (-1 unknown).
        names: code -> name.
        user, day: the snapshot rows, sorted by user then day.

    Returns:
        (names list, shares list) per snapshot row, in row order; empty lists without any.
    """
    known = ev_code >= 0
    if not known.any():
        empty = pa.array([0] * (len(user) + 1), type=pa.int32())
        return (
            pa.ListArray.from_arrays(empty, pa.array([], pa.string())),
            pa.ListArray.from_arrays(empty, pa.array([], pa.float32())),
        )
    order = np.lexsort((ev_code[known], ev_day[known], ev_user[known]))
    entry_user, entry_day, entry_code = ev_user[known][order], ev_day[known][order], ev_code[known][order]
    # One entry per (user, day, code) with its count, sorted by user then day.
    boundary = np.r_[True, (np.diff(entry_user) != 0) | (np.diff(entry_day) != 0) | (np.diff(entry_code) != 0)]
    starts = np.flatnonzero(boundary)
    count = np.diff(np.r_[starts, len(entry_user)]).astype(np.float64)
    entry_keys = pack(entry_user[starts], entry_day[starts])
    entry_code = entry_code[starts]

    active = np.unique(pack(ev_user, ev_day))
    changes = _member(active, pack(user, day - 1)) | _member(active, pack(user, day - HORIZON_DAYS - 1))
    computed = np.flatnonzero(changes)
    parts = [
        _top_codes(entry_keys, entry_code, count, names, user[chunk], day[chunk])
        for chunk in np.array_split(computed, max(1, -(-len(computed) // AFFINITY_CHUNK_ROWS)))
    ]
    labels = pa.concat_arrays([p[0] for p in parts])
    shares = pa.concat_arrays([p[1] for p in parts])
    # Each row takes the value of the latest computed row at or before it (same user: a user's
    # first row is always the day after activity, a computed row).
    latest = np.maximum.accumulate(np.where(changes, np.arange(len(user)), 0))
    source = pa.array(np.searchsorted(computed, latest))
    return labels.take(source), shares.take(source)


def _top_codes(
    entry_keys: np.ndarray, entry_code: np.ndarray, count: np.ndarray, names: np.ndarray, user: np.ndarray, day: np.ndarray
) -> tuple[pa.ListArray, pa.ListArray]:
    """Top codes and shares for snapshot rows (user, day) from per-(user, day, code) entry counts."""
    lo, hi = ranges_before(entry_keys, user, day, HORIZON_DAYS)
    query, entry = gather_ranges(lo, hi, newest_first=True, cap=AFFINITY_SCAN_CAP)
    width = max(len(names), 1)
    pair, inverse = np.unique(query * width + entry_code[entry], return_inverse=True)
    n = np.bincount(inverse, weights=count[entry], minlength=len(pair))
    query, code = pair // width, pair % width
    total = np.bincount(query, weights=n, minlength=len(user))
    # Most interactions first; ties by name order (codes are sorted names) so output is deterministic.
    order = np.lexsort((code, -n, query))
    query, code, n = query[order], code[order], n[order]
    keep = (np.arange(len(query)) - np.searchsorted(query, query, side="left")) < AFFINITY_TOP_K
    query, code, n = query[keep], code[keep], n[keep]
    lengths = np.bincount(query, minlength=len(user))
    offsets = pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int32))
    labels = pa.ListArray.from_arrays(offsets, names_of(code, names))
    shares = pa.ListArray.from_arrays(offsets, pa.array((n / total[query]).astype(np.float32), type=pa.float32()))
    return labels, shares


def _member(sorted_values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Whether each query is in `sorted_values`."""
    position = np.searchsorted(sorted_values, queries)
    inside = position < len(sorted_values)
    found = np.zeros(len(queries), dtype=bool)
    found[inside] = sorted_values[position[inside]] == queries[inside]
    return found
