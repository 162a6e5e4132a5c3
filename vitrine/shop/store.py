"""Canonical storage of a shop after ingest: Parquet under `DataDir.shop`.

Events are partitioned by UTC day (`event_date=YYYY-MM-DD`) so that incremental stages read only
new days and Feast reads the folder as one offline source. Writers replace what they write;
`append_events` adds days without rewriting history; `EventWriter(data, WriteMode.MERGE_DAYS)` adds
rows to the days they fall on (the service's live events into days a shop's export already holds).
"""

from __future__ import annotations

import enum
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from vitrine.errors import InvalidInput
from vitrine.paths import DataDir
from vitrine.shop.contract import EVENT_OPTIONAL, EVENT_REQUIRED

PARTITION = "event_date"
# The columns that say what an event is: two rows equal in all of them are one event (merge mode).
EVENT_COLUMNS: tuple[str, ...] = (*EVENT_REQUIRED, *EVENT_OPTIONAL)


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
    with EventWriter(data, WriteMode.REPLACE_ALL) as writer:
        writer.write(events)


def append_events(data: DataDir, events: pd.DataFrame) -> None:
    """Add events; days already stored are replaced whole, other days are left untouched."""
    with EventWriter(data, WriteMode.REPLACE_DAYS) as writer:
        writer.write(events)


class WriteMode(enum.Enum):
    """What `EventWriter.publish` does with the events already stored."""

    REPLACE_ALL = "replace_all"  # every stored event goes; the store holds the batches only
    REPLACE_DAYS = "replace_days"  # each UTC day in the batches replaces that day whole; other days untouched
    # Each UTC day in the batches is added to that day: rows the day holds already are not stored twice
    # (see `EventWriter`); other days untouched. For sources read again and again, like the service's spool.
    MERGE_DAYS = "merge_days"


@dataclass(frozen=True)
class Published:
    """What one `EventWriter.publish` changed."""

    days: list[str]  # UTC days whose partitions were written, sorted (a merge that added nothing leaves its day alone)
    already_stored: int = 0  # staged rows the store held already, so not stored again (MERGE_DAYS only)


class EventWriter:
    """Writes events batch by batch into a staging folder, then publishes them day by day.

    Batches bound memory when ingesting tens of millions of events; staging means a failure half way
    leaves the stored events as they were. `mode` says what publishing does with stored events
    (`WriteMode`). Each day is swapped in whole: a reader, or a crash, sees the day as it was or as
    it is after, and a crash between the two leaves the old day in `.events-replaced/`, which the
    next writer puts back.

    Merging (`WriteMode.MERGE_DAYS`) compares rows on EVENT_COLUMNS. A row the batches hold n times
    and the day m times is stored max(n, m) times: rows already stored are never removed (a shop's
    export may hold a repeated event), and a source read again adds only what it did not hold the
    last time (a spool file that grew since). Memory: one stored day and its staged rows at a time.

    Example:
        >>> with EventWriter(data, WriteMode.MERGE_DAYS) as writer:
        ...     for batch in batches:
        ...         writer.write(batch)
        >>> # published on leaving the block; discarded if it raised
    """

    def __init__(self, data: DataDir, mode: WriteMode) -> None:
        self.data = data
        self.mode = mode
        self.staging = data.shop / ".events-staging"
        self.replaced = data.shop / ".events-replaced"
        _put_back_interrupted(self.replaced, data.events)
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

    def publish(self) -> Published:
        """Move the staged days into the store, as `mode` says."""
        if not self.staging.exists():
            if self.mode is WriteMode.REPLACE_ALL and self.data.events.exists():
                shutil.rmtree(self.data.events)
            return Published([])
        if self.mode is WriteMode.REPLACE_ALL:
            days = sorted(self.staging.glob(f"{PARTITION}=*"))
            self._swap(self.staging, self.data.events)
            return Published([day.name.split("=", 1)[1] for day in days])
        self.data.events.mkdir(parents=True, exist_ok=True)
        written, already_stored = [], 0
        for day in sorted(self.staging.glob(f"{PARTITION}=*")):
            target = self.data.events / day.name
            if self.mode is WriteMode.MERGE_DAYS and target.exists():
                held = _merge_into_staged(day, target)
                already_stored += held.already_stored
                if not held.added:
                    continue  # nothing new: the stored day stays as it is, file for file
            self._swap(day, target)
            written.append(day.name.split("=", 1)[1])
        shutil.rmtree(self.staging)
        return Published(written, already_stored)

    def _swap(self, new: Path, target: Path) -> None:
        """Put folder `new` at `target`, the old `target` going by way of `self.replaced` (see the class docstring)."""
        old = self.replaced / target.name
        if target.exists():
            if old.exists():
                shutil.rmtree(old)
            old.parent.mkdir(parents=True, exist_ok=True)
            target.replace(old)
        new.replace(target)
        if old.exists():
            shutil.rmtree(old)
            self.replaced.rmdir()  # it holds one old folder at a time

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


def _put_back_interrupted(replaced: Path, events: Path) -> None:
    """Undo a swap that a crash cut in two: a folder in `replaced` whose place in the store is empty goes back."""
    if not replaced.exists():
        return
    for old in replaced.iterdir():
        target = events if old.name == events.name else events / old.name
        if target.exists():
            shutil.rmtree(old)  # the swap finished; only the clean-up was cut
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            old.replace(target)
    replaced.rmdir()


@dataclass(frozen=True)
class _Merge:
    added: int  # staged rows the stored day did not hold
    already_stored: int  # staged rows it held


def _merge_into_staged(staged: Path, stored: Path) -> _Merge:
    """Rewrite the staged day as the stored day plus the staged rows it does not hold yet (see `EventWriter`)."""
    old = pq.read_table(stored).to_pandas()
    new = pq.read_table(staged).to_pandas()
    held = _held_already(new, old)
    merge = _Merge(added=int((~held).sum()), already_stored=int(held.sum()))
    if merge.added:
        merged = pd.concat([old, new[~held]], ignore_index=True).sort_values("timestamp", kind="stable")
        shutil.rmtree(staged)
        staged.mkdir()
        pq.write_table(_plain_table(merged), staged / "part-merged-0.parquet")
    return merge


def _held_already(new: pd.DataFrame, old: pd.DataFrame) -> np.ndarray:
    """Per row of `new`: whether `old` holds it already, counting copies.

    Rows are equal when all EVENT_COLUMNS are (two nulls are equal). The k-th copy of a row in `new`
    is held when `old` has at least k copies of it."""
    both = pd.concat([_comparable(old), _comparable(new)], ignore_index=True)
    ids = both.groupby(list(EVENT_COLUMNS), dropna=False, sort=False).ngroup().to_numpy()
    old_ids, new_ids = ids[: len(old)], ids[len(old) :]
    stored_copies = np.bincount(old_ids, minlength=int(ids.max()) + 1 if len(ids) else 0)
    copy = pd.Series(new_ids).groupby(new_ids).cumcount().to_numpy()
    return np.asarray(copy < stored_copies[new_ids], dtype=bool)


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """EVENT_COLUMNS in one dtype each whatever types the file was written with (an absent column is all nulls)."""
    out = {}
    for name in EVENT_COLUMNS:
        column = frame[name] if name in frame else pd.Series(None, index=frame.index, dtype=object)
        if name == "timestamp":
            out[name] = pd.to_datetime(column, utc=True)
        elif name in ("quantity", "price"):
            out[name] = pd.to_numeric(column).astype("float64")
        else:
            out[name] = column.astype(object).where(column.notna(), None)
    return pd.DataFrame(out, index=frame.index)


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
