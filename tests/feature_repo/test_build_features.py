"""`vitrine features build`: snapshot semantics, window arithmetic, change-day rows, incremental rebuild."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from feature_repo.snapshots.build import build
from feature_repo.snapshots.item_stats import PRIOR_STRENGTH
from vitrine.errors import InvalidInput
from vitrine.paths import DataDir
from vitrine.shop.store import write_events, write_items

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2026-03-01", tz="UTC")


def _shop(tmp_path, events: list[tuple[str, str, str, pd.Timestamp]], items: pd.DataFrame | None = None) -> DataDir:
    data = DataDir.resolve(tmp_path)
    if items is None:
        items = pd.DataFrame(
            {"item_id": ["A", "B"], "title": ["a", "b"], "category": ["shoes", "hats"], "brand": ["x", "y"], "price": [10.0, 30.0]}
        )
    write_items(data, items)
    frame = pd.DataFrame(events, columns=["user_id", "item_id", "event_type", "timestamp"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    write_events(data, frame)
    return data


def _rows(data: DataDir, view: str) -> pd.DataFrame:
    return pd.read_parquet(data.features / view).sort_values(["event_timestamp"]).reset_index(drop=True)


def test_item_windows_count_events_strictly_before_the_snapshot_day(tmp_path) -> None:
    events = [
        ("u1", "A", "view", T0 + pd.Timedelta(hours=10)),
        ("u1", "A", "click", T0 + pd.Timedelta(hours=11)),
        ("u2", "A", "view", T0 + 5 * DAY),
        ("u2", "B", "purchase", T0 + 20 * DAY),
    ]
    data = _shop(tmp_path, events)
    build(data)
    stats = _rows(data, "item_stats")
    a = stats[stats.item_id == "A"].set_index("event_timestamp")
    # The snapshot of day T0 sees nothing; T0+1 sees day T0's view and click.
    assert a.loc[T0 + DAY, ["views_1d", "clicks_1d", "views_7d", "views_30d"]].tolist() == [1, 1, 1, 1]
    assert a.loc[T0 + 2 * DAY, ["views_1d", "views_7d"]].tolist() == [0, 1]
    assert a.loc[T0 + 6 * DAY, ["views_1d", "views_7d", "views_30d"]].tolist() == [1, 2, 2]
    assert a.loc[T0 + 8 * DAY, "views_7d"] == 1  # day T0 left the 7-day window
    assert a.loc[T0 + 21 * DAY, ["views_30d", "clicks_30d"]].tolist() == [2, 1]
    # Items get a row every day, from the first snapshot to the day after the last event.
    assert len(a) == 21 and a.index.min() == T0 + DAY
    # Static attributes ride along; rank: B (a purchase) beats A on day T0+21.
    last = stats[stats.event_timestamp == T0 + 21 * DAY].set_index("item_id")
    assert last.loc["B", "popularity_rank"] == 1 and last.loc["A", "popularity_rank"] == 2
    assert last.loc["A", "category"] == "shoes" and last.loc["B", "price"] == pytest.approx(30.0)


def test_rates_are_smoothed_toward_the_catalog_rate(tmp_path) -> None:
    events = [("u", "A", "view", T0 + pd.Timedelta(minutes=m)) for m in range(40)]
    events += [("u", "A", "click", T0 + pd.Timedelta(minutes=m, seconds=1)) for m in range(10)]
    data = _shop(tmp_path, events)
    build(data)
    stats = _rows(data, "item_stats")
    day = stats[stats.event_timestamp == T0 + DAY].set_index("item_id")
    catalog_ctr = 10 / 40  # only A had exposure
    assert day.loc["B", "ctr_7d"] == pytest.approx(catalog_ctr)  # no exposure: the prior mean
    assert day.loc["A", "ctr_7d"] == pytest.approx((10 + PRIOR_STRENGTH * catalog_ctr) / (40 + PRIOR_STRENGTH))
    assert (stats[[c for c in stats if c.startswith(("ctr", "cvr", "cart_rate"))]].to_numpy() <= 1).all()


def test_user_rows_only_on_change_days(tmp_path) -> None:
    events = [("u1", "A", "purchase", T0 + pd.Timedelta(hours=3)), ("u2", "B", "view", T0 + 45 * DAY)]
    data = _shop(tmp_path, events)
    build(data)
    u1 = _rows(data, "user_stats").query("user_id == 'u1'").set_index("event_timestamp")
    # Activity on day T0 changes the windows at T0+1 (enters), +2 (1d expires), +8 (7d), +31 (30d).
    assert list(u1.index) == [T0 + DAY, T0 + 2 * DAY, T0 + 8 * DAY, T0 + 31 * DAY]
    assert u1["events_30d"].tolist() == [1, 1, 1, 0]
    assert u1["events_1d"].tolist() == [1, 0, 0, 0]
    assert u1.iloc[0]["avg_price_paid"] == pytest.approx(10.0)  # catalog price when the event has none
    assert u1.iloc[0]["days_since_last_purchase"] == pytest.approx(21 / 24, abs=1e-4)
    assert list(u1.iloc[0]["affinity_categories"]) == ["shoes"] and u1.iloc[0]["top_category"] == "shoes"
    assert np.isnan(u1.iloc[-1]["days_since_last_event"]) and len(u1.iloc[-1]["affinity_categories"]) == 0
    recent = _rows(data, "user_recent_items").query("user_id == 'u1'")
    assert [list(v) for v in recent["recent_item_ids"]] == [["A"], []]


def test_recent_items_are_distinct_newest_first(tmp_path) -> None:
    events = [
        ("u", "A", "view", T0 + pd.Timedelta(hours=1)),
        ("u", "B", "view", T0 + pd.Timedelta(hours=2)),
        ("u", "A", "add_to_cart", T0 + pd.Timedelta(hours=3)),
    ]
    data = _shop(tmp_path, events)
    build(data)
    recent = _rows(data, "user_recent_items")
    assert list(recent.iloc[0]["recent_item_ids"]) == ["A", "B"]


def test_incremental_build_equals_full_build(tmp_path) -> None:
    rng = np.random.default_rng(3)
    stamps = T0 + pd.to_timedelta(rng.uniform(0, 50 * 86_400, 600), unit="s")
    events = [
        (f"u{rng.integers(12)}", ["A", "B"][rng.integers(2)], ["view", "click", "add_to_cart", "purchase"][rng.integers(4)], t)
        for t in stamps
    ]
    data = _shop(tmp_path, events)
    build(data)
    full = {v: _rows(data, v) for v in ("item_stats", "user_stats", "user_recent_items", "user_sequence", "item_covisitation")}
    since = (T0 + 40 * DAY).date()
    files_before = {p.name: p.stat().st_mtime_ns for p in (data.features / "user_stats").glob("*.parquet")}
    report = build(data, since=since)
    assert report.first_day == since.isoformat()
    for view, frame in full.items():
        pd.testing.assert_frame_equal(_rows(data, view), frame)
    # Days before --since were not rewritten.
    after = {p.name: p.stat().st_mtime_ns for p in (data.features / "user_stats").glob("*.parquet")}
    assert all(after[name] == stamp for name, stamp in files_before.items() if name < since.isoformat())


def test_shop_without_prices_categories_or_dates(tmp_path) -> None:
    items = pd.DataFrame({"item_id": ["A", "B"], "title": ["a", "b"], "price": [np.nan, 3.0]})
    data = _shop(tmp_path, [("u", "A", "purchase", T0), ("u", "B", "purchase", T0 + DAY)], items=items)
    build(data)
    stats = _rows(data, "item_stats")
    assert stats["category"].isna().all() and stats["age_days"].isna().all()
    assert stats.query("item_id == 'A'")["price_band"].isna().all()
    users = _rows(data, "user_stats")
    assert users["top_category"].isna().all() and users["max_price_paid"].max() == pytest.approx(3.0)


def test_since_after_the_last_day_is_refused(tmp_path) -> None:
    data = _shop(tmp_path, [("u", "A", "view", T0)])
    with pytest.raises(InvalidInput, match="after the last snapshot day"):
        build(data, since=date(2027, 1, 1))
