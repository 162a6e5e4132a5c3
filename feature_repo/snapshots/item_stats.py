"""The `item_stats` daily snapshots: funnel counts, smoothed rates, popularity and static attributes.

One row per catalog item per snapshot day D (event_timestamp = D 00:00 UTC), computed from events
with timestamp < D. Items are few next to users (100k x 60 days = 6M rows), so every item gets a
row every day: age, popularity rank and trend stay exact, and every daily materialization refreshes
each item's Redis key, so its TTL only removes items that left the catalog.

Smoothing. A rate num/den over a window is reported as the mean of its Beta posterior,

    rate = (num + m * mu) / (den + m),

with prior mean mu = the catalog-wide rate over the same window on the same snapshot day and
strength m = PRIOR_STRENGTH pseudo-exposures. An item with no exposure gets the catalog rate; an
item with many exposures gets (almost) its own. The denominator `den` is the widest funnel step the
item saw in the window (max of views, clicks, carts, purchases), so rates stay within [0, 1] even
in shops that log no views (the Amazon sample only has purchases).

Trend. trend_7d_30d = (n_7d + 1) / (n_30d * 7 / 30 + 1) over all interactions: 1.0 means the last
week ran at the 30-day pace, 2.0 twice as fast; the +1 keeps cold items at a neutral 1.0.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from feature_repo.columns import FUNNEL, RATE_NAMES, RATE_WINDOWS, arrow_schema
from feature_repo.snapshots.daily_windows import NS_PER_DAY, WINDOWS, DailyCounts, day_start
from feature_repo.snapshots.event_log import Catalog, EventLog, names_of

# Pseudo-exposures of the Beta prior: an item needs ~20 views before its own rate outweighs the catalog's.
PRIOR_STRENGTH = 20.0
# Prior means when the whole catalog saw nothing in a window (first days of a shop).
FALLBACK_RATES = {"ctr": 0.05, "cart_rate": 0.02, "cvr": 0.01}
# rate name (`feature_repo.columns.RATE_NAMES`) -> funnel count it divides.
RATES = dict(zip(RATE_NAMES, ("clicks", "carts", "purchases")))
_EVENT_OF = {"views": "view", "clicks": "click", "carts": "add_to_cart", "purchases": "purchase"}

SCHEMA = arrow_schema("item_stats")


def item_stats(log: EventLog, catalog: Catalog, first_day: int, last_day: int) -> pa.Table:
    """Snapshots for days first_day..last_day (inclusive) of every item that exists on that day.

    Args:
        log: events from at least day first_day - 30 up to last_day - 1.
        catalog: the items; an item appears from the day after its `created_at` (always when unknown).
        first_day, last_day: snapshot day numbers (days since epoch).

    Returns:
        A table with `SCHEMA`, sorted by event_timestamp then item_id.

    Example:
        >>> table = item_stats(log, catalog, first_day=20_000, last_day=20_030)
        >>> table.column_names[:3]
        ['item_id', 'event_timestamp', 'views_1d']
    """
    n_items = len(catalog.item_ids)
    days = np.arange(first_day, last_day + 1, dtype=np.int64)
    item = np.tile(np.arange(n_items, dtype=np.int64), len(days))
    day = np.repeat(days, n_items)
    exists = (catalog.created_ns[item] < 0) | (catalog.created_ns[item] < day * NS_PER_DAY)
    item, day = item[exists], day[exists]

    daily = DailyCounts.of(log.item, log.day, {name: log.kind_is(_EVENT_OF[name]) for name in FUNNEL})
    sums = {w: daily.window_sums(item, day, w) for w in WINDOWS}
    columns: dict[str, np.ndarray] = {}
    for name in FUNNEL:
        for w in WINDOWS:
            columns[f"{name}_{w}d"] = sums[w][name].astype(np.int64)

    day_index = day - first_day
    for w in RATE_WINDOWS:
        exposure = np.max(np.column_stack([sums[w][name] for name in FUNNEL]), axis=1)
        exposure_per_day = np.bincount(day_index, weights=exposure, minlength=len(days))
        for rate, count in RATES.items():
            hits = sums[w][count]
            hits_per_day = np.bincount(day_index, weights=hits, minlength=len(days))
            with np.errstate(invalid="ignore", divide="ignore"):
                prior = np.where(exposure_per_day > 0, hits_per_day / exposure_per_day, FALLBACK_RATES[rate])
            mean = prior[day_index]
            columns[f"{rate}_{w}d"] = ((hits + PRIOR_STRENGTH * mean) / (exposure + PRIOR_STRENGTH)).astype(np.float32)

    interactions_7d = np.sum([sums[7][name] for name in FUNNEL], axis=0)
    interactions_30d = np.sum([sums[30][name] for name in FUNNEL], axis=0)
    trend = (interactions_7d + 1.0) / (interactions_30d * 7.0 / 30.0 + 1.0)

    created = catalog.created_ns[item]
    age = np.where(created >= 0, (day * NS_PER_DAY - created) / NS_PER_DAY, np.nan)

    rank = _popularity_rank(day, [sums[30][name] for name in reversed(FUNNEL)])
    price = catalog.price[item]
    band = catalog.price_band[item]
    category = catalog.category[item]
    brand = catalog.brand[item]

    order = np.lexsort((item, day))
    arrays = {
        "item_id": names_of(item[order], catalog.item_ids),
        "event_timestamp": pa.array(day_start(day[order]), type=pa.timestamp("ns", tz="UTC")),
        **{name: pa.array(values[order]) for name, values in columns.items()},
        "price": pa.array(price[order].astype(np.float32), mask=np.isnan(price[order])),
        "age_days": pa.array(age[order].astype(np.float32), mask=np.isnan(age[order])),
        "popularity_rank": pa.array(rank[order]),
        "trend_7d_30d": pa.array(trend[order].astype(np.float32)),
        "category": names_of(category[order], catalog.categories),
        "brand": names_of(brand[order], catalog.brands),
        "price_band": pa.array(band[order], mask=band[order] < 0, type=pa.int64()),
    }
    return pa.table(arrays, schema=SCHEMA)


def _popularity_rank(day: np.ndarray, keys_desc: list[np.ndarray]) -> np.ndarray:
    """1-based rank within each day by keys, descending, most important first, ties share the best rank.

    Items that saw nothing tie for the last place, so popularity_rank = (number of active items) + 1 for them.
    """
    order = np.lexsort([-k for k in reversed(keys_desc)] + [day])
    sorted_day = day[order]
    sorted_keys = np.column_stack([k[order] for k in keys_desc] + [sorted_day])
    new_value = np.r_[True, np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)]
    new_day = np.r_[True, sorted_day[1:] != sorted_day[:-1]]
    position = np.arange(len(order))
    tie_start = np.maximum.accumulate(np.where(new_value, position, 0))
    day_start_pos = np.maximum.accumulate(np.where(new_day, position, 0))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = tie_start - day_start_pos + 1
    return rank
