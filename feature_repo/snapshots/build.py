"""`vitrine features build`: the Feast offline sources, as one Parquet file per view per snapshot day.

    data/features/item_stats/2026-01-02.parquet         rows with event_timestamp 2026-01-02 00:00 UTC
    data/features/user_stats/2026-01-02.parquet
    data/features/user_recent_items/2026-01-02.parquet
    data/features/user_sequence/2026-01-02.parquet      the users' ordered items (whole history)
    data/features/item_covisitation/2026-03-02.parquet  neighbours, one table at the last day

A snapshot at day D holds values from events with timestamp < D, so the last snapshot is the day
after the last event day. A full build replaces every file; `since=D` rebuilds snapshot days >= D
only, reading events from D - 31 (the longest look-back plus the day a 30-day window empties) and
leaving older files untouched. Both give byte-for-byte the same rows for the days they write.
The two sequence views have no look-back: they read every positive interaction before the last day.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feature_repo.sequences import Sequences, positive_interactions
from feature_repo.snapshots.daily_windows import HORIZON_DAYS, NS_PER_DAY
from feature_repo.snapshots.event_log import Catalog, EventLog
from feature_repo.snapshots.item_covisitation import item_covisitation
from feature_repo.snapshots.item_stats import item_stats
from feature_repo.snapshots.recent_items import recent_items
from feature_repo.snapshots.user_sequence import user_sequence
from feature_repo.snapshots.user_stats import user_stats
from vitrine.errors import InvalidInput
from vitrine.paths import DataDir
from vitrine.shop.store import event_days, read_events, read_items

Builder = Callable[[EventLog, Catalog, int, int], pa.Table]
SequenceBuilder = Callable[[Sequences, int, int], pa.Table]

# Feature view name -> the function that computes its snapshots from the windowed event log.
# Names match feature_repo/definitions.py.
BUILDERS: dict[str, Builder] = {
    "item_stats": item_stats,
    "user_stats": user_stats,
    "user_recent_items": recent_items,
}
# Views computed from every user's whole sequence (`Sequences`), no look-back window.
SEQUENCE_BUILDERS: dict[str, SequenceBuilder] = {
    "user_sequence": user_sequence,
    "item_covisitation": lambda sequences, first_day, last_day: item_covisitation(sequences, last_day),
}
# Event columns a sequence is made of (`positive_interactions`).
SEQUENCE_COLUMNS = ["user_id", "item_id", "event_type", "session_id"]


@dataclass(frozen=True)
class BuildReport:
    """What one build wrote.

    Attributes:
        first_day, last_day: snapshot days written (ISO dates, inclusive).
        events_read: events read from the shop (including the look-back before first_day).
        rows: feature view -> rows written.
        seconds: feature view -> seconds spent computing and writing it; "read" for the event log.
    """

    first_day: str
    last_day: str
    events_read: int
    rows: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def source_dir(data: DataDir, view: str) -> str:
    """The folder Feast reads as the offline source of `view`."""
    return str(data.features / view)


def build(data: DataDir, since: date | None = None, progress: Callable[[str], None] | None = None) -> BuildReport:
    """Compute and write every view's snapshots (all days, or days >= `since`).

    Args:
        data: the data dir; reads data/shop, writes data/features.
        since: first snapshot day to rebuild; None rebuilds everything from the first event day + 1.
        progress: called with a short message after each step.

    Raises:
        InvalidInput: no events, or `since` after the last snapshot day.

    Example:
        >>> build(DataDir.resolve("data")).rows["item_stats"] > 0
        True
    """
    days = event_days(data)
    if not days:
        raise InvalidInput(f"{data.events}: no events; nothing to compute features from")
    first_event, last_event = (np.datetime64(d, "D").astype(np.int64) for d in (days[0], days[-1]))
    last_day = int(last_event) + 1
    first_day = int(first_event) + 1 if since is None else int(np.datetime64(since, "D").astype(np.int64))
    if first_day > last_day:
        raise InvalidInput(f"--since {since}: after the last snapshot day {_iso(last_day)} (events end {days[-1]})")
    first_day = max(first_day, int(first_event) + 1)

    started = time.perf_counter()
    read_from = (first_day - HORIZON_DAYS - 1) * NS_PER_DAY
    events = read_events(data, start=_timestamp(read_from), end=_timestamp(last_day * NS_PER_DAY))
    catalog = Catalog.of(read_items(data))
    log = EventLog.of(events, catalog)
    del events
    report = BuildReport(_iso(first_day), _iso(last_day), len(log))
    report.seconds["read"] = round(time.perf_counter() - started, 3)
    if progress:
        progress(f"read {len(log):,} events in {report.seconds['read']:.1f}s")

    for view, builder in BUILDERS.items():
        started = time.perf_counter()
        table = builder(log, catalog, first_day, last_day)
        _write_days(data, view, table, first_day, full=since is None)
        report.rows[view] = table.num_rows
        del table  # written: free it before the next view is computed
        report.seconds[view] = round(time.perf_counter() - started, 3)
        if progress:
            progress(f"{view}: {report.rows[view]:,} rows in {report.seconds[view]:.1f}s")
    del log

    started = time.perf_counter()
    sequences = read_sequences(data, end=_timestamp(last_day * NS_PER_DAY))
    report.seconds["sequences"] = round(time.perf_counter() - started, 3)
    for view, sequence_builder in SEQUENCE_BUILDERS.items():
        started = time.perf_counter()
        table = sequence_builder(sequences, first_day, last_day)
        _write_days(data, view, table, first_day, full=since is None)
        report.rows[view] = table.num_rows
        del table
        report.seconds[view] = round(time.perf_counter() - started, 3)
        if progress:
            progress(f"{view}: {report.rows[view]:,} rows in {report.seconds[view]:.1f}s")
    return report


def read_sequences(data: DataDir, end: pd.Timestamp | None = None) -> Sequences:
    """Every user's sequence (`Sequences`) from the shop's events before `end`, in the catalog's rows."""
    columns = [c for c in SEQUENCE_COLUMNS if c in _event_columns(data)]
    events = read_events(data, end=end, columns=columns, categorical=True)
    return Sequences.of(positive_interactions(events), read_items(data)["item_id"])


def _event_columns(data: DataDir) -> list[str]:
    import pyarrow.dataset as ds

    return ds.dataset(str(data.events), format="parquet", partitioning="hive").schema.names


def last_snapshot_day(data: DataDir) -> date | None:
    """The newest snapshot day any view's source holds (None before the first build).

    The day after it ends the materialization range (`vitrine features materialize`, the pipeline).
    """
    days = [path.stem for view in (*BUILDERS, *SEQUENCE_BUILDERS) for path in (data.features / view).glob("*.parquet")]
    return date.fromisoformat(max(days)) if days else None


def _write_days(data: DataDir, view: str, table: pa.Table, first_day: int, full: bool) -> None:
    """Replace the view's files for days >= first_day (all files when `full`) with `table`'s rows."""
    folder = data.features / view
    if full and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        if old.stem >= _iso(first_day):
            old.unlink()
    stamps = table.column("event_timestamp").cast(pa.int64()).to_numpy()
    day = stamps // NS_PER_DAY
    bounds = np.flatnonzero(np.r_[True, day[1:] != day[:-1], True]) if len(day) else np.array([0])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        pq.write_table(table.slice(lo, hi - lo), folder / f"{_iso(int(day[lo]))}.parquet")
    if not any(folder.glob("*.parquet")):
        # Feast needs a readable source even when no entity has a row yet.
        pq.write_table(table.schema.empty_table(), folder / f"{_iso(first_day)}.parquet")


def _iso(day: int) -> str:
    return str(np.datetime64(day, "D"))


def _timestamp(ns: int) -> pd.Timestamp:
    return pd.Timestamp(ns, unit="ns", tz="UTC")
