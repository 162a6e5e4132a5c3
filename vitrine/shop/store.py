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
    pq.write_table(_plain_table(items), data.items)


def write_users(data: DataDir, users: pd.DataFrame) -> None:
    data.shop.mkdir(parents=True, exist_ok=True)
    pq.write_table(_plain_table(users), data.users)


def _plain_table(frame: pd.DataFrame) -> pa.Table:
    """`frame` as Arrow without pandas' dtype metadata, so that every reader gets plain dtypes back
    (object strings, datetime64[ns, UTC]) whichever pandas dtypes the writer happened to use."""
    return pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)


def write_events(data: DataDir, events: pd.DataFrame) -> None:
    """Replace all events with `events`, partitioned by UTC day."""
    with EventWriter(data, append=False) as writer:
        writer.write(events)


def append_events(data: DataDir, events: pd.DataFrame) -> None:
    """Add events; days already stored are replaced whole, other days are left untouched."""
    with EventWriter(data, append=True) as writer:
        writer.write(events)


class EventWriter:
    """Writes events batch by batch into a staging folder, then publishes them in one step.

    Batches bound memory when ingesting tens of millions of events; staging means a failure half way
    leaves the stored events as they were. On `publish`, `append=False` replaces every event;
    `append=True` replaces only the days present in the batches and leaves other days' files untouched.

    Example:
        >>> with EventWriter(data, append=True) as writer:
        ...     for batch in batches:
        ...         writer.write(batch)
        >>> # published on leaving the block; discarded if it raised
    """

    def __init__(self, data: DataDir, *, append: bool) -> None:
        self.data = data
        self.append = append
        self.staging = data.shop / ".events-staging"
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self._schema: pa.Schema | None = None
        self._batches = 0

    def write(self, events: pd.DataFrame) -> None:
        """Stage one batch (any days, any order)."""
        if events.empty:
            return
        frame = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
        # strftime per row is slow at scale; format each distinct day once.
        codes, days = pd.factorize(frame["timestamp"].dt.floor("D"), sort=True)
        frame[PARTITION] = pd.Index(days.strftime("%Y-%m-%d"))[codes]
        table = _plain_table(frame)
        if self._schema is None:
            self._schema = table.schema
        elif table.schema != self._schema:
            # Later batches follow the first one's types, so that the dataset reads as one table.
            table = table.select(self._schema.names).cast(self._schema)
        pq.write_to_dataset(
            table,
            root_path=str(self.staging),
            partition_cols=[PARTITION],
            basename_template=f"part-{self._batches:05d}-{{i}}.parquet",
        )
        self._batches += 1

    def publish(self) -> list[str]:
        """Move the staged days into the store; returns them, sorted."""
        if not self.staging.exists():
            if not self.append and self.data.events.exists():
                shutil.rmtree(self.data.events)
            return []
        days = sorted(self.staging.glob(f"{PARTITION}=*"))
        if not self.append:
            if self.data.events.exists():
                shutil.rmtree(self.data.events)
            self.staging.replace(self.data.events)
        else:
            self.data.events.mkdir(parents=True, exist_ok=True)
            for day in days:
                target = self.data.events / day.name
                if target.exists():
                    shutil.rmtree(target)
                day.replace(target)
            shutil.rmtree(self.staging)
        return [day.name.split("=", 1)[1] for day in days]

    def discard(self) -> None:
        if self.staging.exists():
            shutil.rmtree(self.staging)

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.publish()
        else:
            self.discard()


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
    data: DataDir,
    start: datetime | None = None,
    end: datetime | None = None,
    columns: list[str] | None = None,
    *,
    categorical: bool = False,
) -> pd.DataFrame:
    """Events with `start <= timestamp < end`, sorted by time; partitions outside are not read.

    `start` and `end` may carry any time zone; naive values are taken to be UTC (see `utc`).
    `columns` (default: all) reads only those, plus `timestamp`; `categorical` turns string columns
    into pandas categoricals. Both for large logs: 25M events as Python strings peak near 9 GB,
    four categorical columns under 5 GB.
    """
    if not data.events.exists():
        raise InvalidInput(f"{data.events}: no events; run `vitrine generate` or `vitrine import` first")
    dataset = ds.dataset(str(data.events), format="parquet", partitioning="hive")
    filt = None
    # Partitions are UTC days: name the bounds' UTC days (a local day would skip the hours on either side).
    if start is not None:
        filt = ds.field(PARTITION) >= utc(start).strftime("%Y-%m-%d")
    if end is not None:
        upper = ds.field(PARTITION) <= utc(end).strftime("%Y-%m-%d")
        filt = upper if filt is None else filt & upper
    wanted = None if columns is None else list(dict.fromkeys([*columns, "timestamp"]))
    frame = dataset.to_table(columns=wanted, filter=filt).to_pandas(strings_to_categorical=categorical)
    frame = frame.drop(columns=[PARTITION], errors="ignore")
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
