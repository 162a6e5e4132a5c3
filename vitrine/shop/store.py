"""Canonical storage of a shop after ingest: Parquet under `DataDir.shop`.

Events are partitioned by UTC day (`event_date=YYYY-MM-DD`) so that incremental stages read only
new days and Feast reads the folder as one offline source. Writers replace what they write;
`append_events` adds days without rewriting history.
"""

from __future__ import annotations

import shutil
from datetime import datetime

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from vitrine.errors import InvalidInput
from vitrine.paths import DataDir

PARTITION = "event_date"


def write_items(data: DataDir, items: pd.DataFrame) -> None:
    data.shop.mkdir(parents=True, exist_ok=True)
    items.to_parquet(data.items, index=False)


def write_users(data: DataDir, users: pd.DataFrame) -> None:
    data.shop.mkdir(parents=True, exist_ok=True)
    users.to_parquet(data.users, index=False)


def write_events(data: DataDir, events: pd.DataFrame) -> None:
    """Replace all events with `events`, partitioned by UTC day."""
    if data.events.exists():
        shutil.rmtree(data.events)
    append_events(data, events)


def append_events(data: DataDir, events: pd.DataFrame) -> None:
    """Add events; days already stored are replaced whole, other days are left untouched."""
    if events.empty:
        return
    frame = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    frame[PARTITION] = frame["timestamp"].dt.strftime("%Y-%m-%d")
    for day in frame[PARTITION].unique():
        part = data.events / f"{PARTITION}={day}"
        if part.exists():
            shutil.rmtree(part)
    data.events.mkdir(parents=True, exist_ok=True)
    pq.write_to_dataset(
        pa.Table.from_pandas(frame, preserve_index=False),
        root_path=str(data.events),
        partition_cols=[PARTITION],
        basename_template="part-{i}.parquet",
    )


def utc(moment: datetime | str | pd.Timestamp) -> pd.Timestamp:
    """`moment` as a UTC timestamp; naive values are taken to be UTC already."""
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")


def read_items(data: DataDir) -> pd.DataFrame:
    if not data.items.exists():
        raise InvalidInput(f"{data.items}: no items; run `vitrine generate` or `vitrine import` first")
    return pd.read_parquet(data.items)


def read_users(data: DataDir) -> pd.DataFrame:
    if not data.users.exists():
        return pd.DataFrame({"user_id": pd.Series(dtype=str)})
    return pd.read_parquet(data.users)


def read_events(
    data: DataDir, start: datetime | None = None, end: datetime | None = None
) -> pd.DataFrame:
    """Events with `start <= timestamp < end` (UTC), sorted by time; partitions outside are not read."""
    if not data.events.exists():
        raise InvalidInput(f"{data.events}: no events; run `vitrine generate` or `vitrine import` first")
    dataset = ds.dataset(str(data.events), format="parquet", partitioning="hive")
    filt = None
    if start is not None:
        filt = ds.field(PARTITION) >= pd.Timestamp(start).strftime("%Y-%m-%d")
    if end is not None:
        upper = ds.field(PARTITION) <= pd.Timestamp(end).strftime("%Y-%m-%d")
        filt = upper if filt is None else filt & upper
    frame = dataset.to_table(filter=filt).to_pandas()
    frame = frame.drop(columns=[PARTITION])
    if start is not None:
        frame = frame[frame["timestamp"] >= utc(start)]
    if end is not None:
        frame = frame[frame["timestamp"] < utc(end)]
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def event_days(data: DataDir) -> list[str]:
    """The UTC days that have events, sorted."""
    if not data.events.exists():
        return []
    return sorted(p.name.split("=", 1)[1] for p in data.events.glob(f"{PARTITION}=*"))
