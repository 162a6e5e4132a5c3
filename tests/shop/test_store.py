"""The canonical shop storage: events partitioned by UTC day, read back by time window, merged into day by day."""

from __future__ import annotations

import pandas as pd
import pytest

from vitrine.paths import DataDir
from vitrine.shop.store import EventWriter, Published, WriteMode, event_days, read_events, write_events


def test_time_window_in_another_zone_reads_the_utc_days_it_covers(data_dir: DataDir) -> None:
    """A window starting 01:00 in Berlin (23:00 UTC the day before) must see that UTC day's last hour."""
    stamps = pd.to_datetime(["2024-05-31T22:00Z", "2024-05-31T23:30Z", "2024-06-01T12:00Z", "2024-06-02T00:30Z"], utc=True)
    write_events(data_dir, pd.DataFrame({
        "user_id": ["U1"] * 4, "item_id": ["I1"] * 4, "event_type": ["view"] * 4, "timestamp": stamps,
    }))
    assert event_days(data_dir) == ["2024-05-31", "2024-06-01", "2024-06-02"]
    start = pd.Timestamp("2024-06-01T01:00", tz="Europe/Berlin")  # 2024-05-31 23:00 UTC
    end = pd.Timestamp("2024-06-02T02:00", tz="Europe/Berlin")  # 2024-06-02 00:00 UTC
    window = read_events(data_dir, start, end)
    assert window["timestamp"].tolist() == list(stamps[1:3])


def day_events(users: list[str], minutes: list[int], session: list[str | None] | None = None) -> pd.DataFrame:
    """Views of I1 on 2024-06-01 by `users` at 10:`minutes` UTC."""
    return pd.DataFrame({
        "user_id": users, "item_id": ["I1"] * len(users), "event_type": ["view"] * len(users),
        "timestamp": pd.to_datetime([f"2024-06-01T10:{m:02d}Z" for m in minutes], utc=True),
        "session_id": session if session is not None else [None] * len(users),
        "quantity": [float("nan")] * len(users), "price": [float("nan")] * len(users),
    })  # fmt: skip


def merged(data: DataDir, events: pd.DataFrame) -> Published:
    writer = EventWriter(data, WriteMode.MERGE_DAYS)
    writer.write(events)
    return writer.publish()


def stored_rows(data: DataDir) -> list[tuple[str, int, str | None]]:
    frame = read_events(data)
    return sorted(zip(frame["user_id"], frame["timestamp"].dt.minute, frame["session_id"]), key=str)


def test_merge_keeps_the_days_events_and_adds_the_new_ones(data_dir: DataDir) -> None:
    write_events(data_dir, day_events(["A", "B"], [1, 2]))  # the shop's export of the day

    published = merged(data_dir, day_events(["B", "C"], [2, 3]))  # one row it holds, one it does not

    assert (published.days, published.already_stored) == (["2024-06-01"], 1)
    assert stored_rows(data_dir) == [("A", 1, None), ("B", 2, None), ("C", 3, None)]


def test_merging_the_same_rows_again_changes_nothing(data_dir: DataDir) -> None:
    write_events(data_dir, day_events(["A"], [1]))
    merged(data_dir, day_events(["B", "C"], [2, 3], session=["s1", None]))
    day = data_dir.events / "event_date=2024-06-01"
    files = {path: path.stat().st_mtime_ns for path in day.iterdir()}
    before = read_events(data_dir)

    published = merged(data_dir, day_events(["B", "C"], [2, 3], session=["s1", None]))

    assert (published.days, published.already_stored) == ([], 2)
    pd.testing.assert_frame_equal(read_events(data_dir), before)
    assert {path: path.stat().st_mtime_ns for path in day.iterdir()} == files  # the day was not even rewritten


def test_merge_counts_copies_so_repeated_events_are_neither_lost_nor_doubled(data_dir: DataDir) -> None:
    """The export holds one event twice (same second); a spool that grew since holds it three times."""
    write_events(data_dir, day_events(["A", "A"], [1, 1]))

    assert merged(data_dir, day_events(["A"], [1])).already_stored == 1
    assert stored_rows(data_dir) == [("A", 1, None)] * 2
    assert merged(data_dir, day_events(["A", "A", "A"], [1, 1, 1])).already_stored == 2
    assert stored_rows(data_dir) == [("A", 1, None)] * 3


def test_merge_leaves_other_days_untouched_and_adds_new_days(data_dir: DataDir) -> None:
    other = day_events(["A"], [1]).assign(timestamp=pd.Timestamp("2024-05-31T08:00Z"))
    write_events(data_dir, other)
    old_part = next((data_dir.events / "event_date=2024-05-31").glob("*.parquet"))
    old_stat = old_part.stat()

    published = merged(data_dir, day_events(["B"], [2]))

    assert (published.days, published.already_stored) == (["2024-06-01"], 0)
    assert event_days(data_dir) == ["2024-05-31", "2024-06-01"]
    assert (old_part.stat().st_ino, old_part.stat().st_mtime_ns) == (old_stat.st_ino, old_stat.st_mtime_ns)


def test_a_failed_merge_leaves_the_store_as_it_was(data_dir: DataDir) -> None:
    write_events(data_dir, day_events(["A"], [1]))
    before = read_events(data_dir)
    with pytest.raises(RuntimeError), EventWriter(data_dir, WriteMode.MERGE_DAYS) as writer:
        writer.write(day_events(["B"], [2]))
        raise RuntimeError("the source broke half way")
    pd.testing.assert_frame_equal(read_events(data_dir), before)
    assert not writer.staging.exists()


def test_a_swap_cut_by_a_crash_is_put_back_by_the_next_writer(data_dir: DataDir) -> None:
    """The state a crash between a swap's two renames leaves: the day sits in .events-replaced/, not in the store."""
    write_events(data_dir, day_events(["A", "B"], [1, 2]))
    replaced = data_dir.shop / ".events-replaced"
    replaced.mkdir()
    (data_dir.events / "event_date=2024-06-01").replace(replaced / "event_date=2024-06-01")

    merged(data_dir, day_events(["C"], [3]))

    assert stored_rows(data_dir) == [("A", 1, None), ("B", 2, None), ("C", 3, None)]
    assert not replaced.exists()
