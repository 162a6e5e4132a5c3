"""The canonical shop storage: events partitioned by UTC day, read back by time window."""

from __future__ import annotations

import pandas as pd

from vitrine.paths import DataDir
from vitrine.shop.store import event_days, read_events, write_events


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
