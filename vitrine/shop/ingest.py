"""Validation of a shop in the data contract, and its canonical storage.

`ingest` reads the contract files a shop brings (`items`, `events`, optional `users`, as Parquet or
CSV, plus images), checks every row against the pandera schemas in `vitrine.shop.contract` and the
cross-table rules, and writes what passes to `DataDir.shop` (see `vitrine.shop.store`).

Nothing is dropped silently. Every problem becomes one row of `DataDir.rejects/<table>.parquet`:
the row's original columns as text (each cut to MAX_REJECT_VALUE_CHARS), plus

    reject_file    the source file, relative to the source dir (e.g. `events/part-003.csv`)
    reject_row     1-based data row in that file (the CSV header line is not counted)
    reject_field   the column at fault
    reject_value   its value as text (None when missing)
    reject_reason  one of REASONS

A row with several problems has one reject row per problem and is counted once as rejected.
Image problems and missing titles are the exceptions to "an invalid row is dropped": the item is
kept with `image_path` null (every later stage copes with items without images), or with an empty
title (the encoder's text then comes from its description, category and brand; dropping it would
drop its sales too), and still gets a reject row as a warning.

Whole-file problems (no such file, unreadable, a required column missing, a column whose values
cannot be read as its type at all) raise `UnusableFile` before anything is written, so a failed
ingest leaves the previous canonical shop as it was.

`ingest_live` reads what the service received (`POST /events`, the spool in `DataDir.live`) into
the shop in merge mode: the days it holds are added to, never replaced, and a spool file read
again adds only the lines it did not hold the last time (`store.WriteMode.MERGE_DAYS`). Files of
past days then move to `live/ingested/`.

Example:
    >>> from vitrine.paths import DataDir
    >>> report = ingest(DataDir.resolve("data"))          # reads data/incoming/
    >>> report.tables["events"].accepted
    412734
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pyarrow
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from PIL import Image
from rich.table import Table

from vitrine.errors import InvalidInput, UnusableFile
from vitrine.paths import DataDir
from vitrine.shop import contract, store

# Rows validated at once. Bounds memory at 20M+ events (one chunk of ~10 object columns is
# about 1 GB at peak) while keeping pandera's fixed per-call cost negligible (~1.3 s per 1M rows).
EVENT_CHUNK_ROWS = 1_000_000
# Threads that decode images. PIL releases the GIL while decoding, so a few threads overlap
# file reads and decoding without starving the other work on a 2-core machine.
IMAGE_WORKERS = 4
# Longest reject_value (and original cell) kept, so that a garbage megabyte-long cell does not bloat the rejects file.
MAX_REJECT_VALUE_CHARS = 500
# Longest text cell accepted. Real descriptions run to a few KB; a cell past 64 KB is an unclosed quote that
# swallowed the rest of the file, or an attack, and every later stage would copy it (features, index, API).
MAX_TEXT_CHARS = 65_536
# How far past the ingest's clock a timestamp may lie: shop servers' clocks drift, and local times labelled
# UTC run up to 14 h ahead; a day more is a broken clock or a placeholder date (2099-12-31), not an event.
MAX_FUTURE_SKEW = pd.Timedelta(days=1)
# The earliest timestamp accepted. Earlier ones are placeholders (1900-01-01) or negative epoch numbers;
# no shop's history, and no created_at or signup_at, goes back past 1970.
EARLIEST_TIMESTAMP = pd.Timestamp("1970-01-01", tz="UTC")
# Bytes of a CSV file checked for UTF-8 at once: big enough for the check to run at disk speed.
UTF8_CHECK_BLOCK = 1 << 20
# UTC days handed to the event writer at once: Arrow's dataset writer refuses more than 1,024
# partitions per call, and a real review log spans years (Amazon's Toys: 1999-2014, 5,000+ days).
MAX_DAYS_PER_WRITE = 1_000
# Bytes read at once from the end of a spool file, looking back for its last newline. A spool line is
# under 1 KB, so one read almost always finds it.
TAIL_BLOCK = 1 << 16
# Most bytes of a half-written line read for its reject row: a spool line is under 1 KB; the first MiB
# of anything longer is enough to name the cell it stops in.
MAX_HALF_LINE_BYTES = 1 << 20
# How long after a UTC day ends `ingest_live` leaves that day's spool files in place. A file is named for
# the day a post was received, and a post received at 23:59:59 is written a moment later; 10 minutes is far
# past the time one post takes, so no line reaches a file after it has moved.
SPOOL_SETTLE = pd.Timedelta(minutes=10)
# A spool file's name (`ranking.event_spool.EventSpool.file_for`): the UTC day its posts were received.
SPOOL_FILE = re.compile(r"^events-(\d{4}-\d{2}-\d{2})-\d+\.csv$")
# Where `ingest_live` moves the spool files of past days, under DataDir.live.
INGESTED_FOLDER = "ingested"

# Why a row was rejected (reject_reason). The README lists them with what to fix.
MISSING_VALUE = "missing_value"  # a required field is empty
UNKNOWN_EVENT_TYPE = "unknown_event_type"  # event_type not in contract.EVENT_TYPES
UNKNOWN_ITEM = "unknown_item"  # an event's item_id is not an accepted item
UNPARSABLE_TIMESTAMP = "unparsable_timestamp"  # timestamp / created_at / signup_at is not a date
NOT_A_NUMBER = "not_a_number"  # price / quantity is not a number
NON_POSITIVE_PRICE = "non_positive_price"  # price <= 0
INVALID_QUANTITY = "invalid_quantity"  # quantity < 1
DUPLICATE_ID = "duplicate_id"  # item_id / user_id seen on an earlier row (the first one is kept)
# item_id / user_id equal to an earlier row's once both are NFKC-normalised ("Ａ1" and "A1", "ﬁ1" and "fi1"):
# two ids a person reads as one; the first is kept. Ids are stored as given (trimmed), not normalised, so
# that the shop finds its own ids in every answer.
COLLIDING_ID = "colliding_id"
NUL_BYTE = "nul_byte"  # a cell holds a NUL character (binary garbage; C-based readers cut the text at it)
VALUE_TOO_LONG = "value_too_long"  # a cell is longer than MAX_TEXT_CHARS (reject_value holds its start)
FUTURE_TIMESTAMP = "future_timestamp"  # a timestamp more than MAX_FUTURE_SKEW after the ingest's clock
PRE_1970_TIMESTAMP = "pre_1970_timestamp"  # a timestamp before EARLIEST_TIMESTAMP (1970-01-01 UTC)
IMAGE_MISSING = "image_missing"  # image_path names no file inside the source dir (item kept)
# image_path leads out of the source dir (`../`, an absolute path, a symlink pointing out): the file is
# neither read nor copied (item kept).
IMAGE_OUTSIDE_SOURCE = "image_outside_source"
IMAGE_CORRUPT = "image_corrupt"  # the file does not decode as an image (item kept)
# More pixels than contract.MAX_IMAGE_PIXELS: a decompression bomb, refused before decoding (item kept).
IMAGE_TOO_LARGE = "image_too_large"
MISSING_TITLE_KEPT = "missing_title_kept"  # an item without a title (item kept, title "", its events too)
# The last line of a spool file lacks its newline (`spool=True` only): a post still being written, or one a
# crash cut. The line is read again, whole, by the next ingest of the spool (reject_field: the cell it stops in).
HALF_WRITTEN_LINE = "half_written_line"
REASONS = (
    MISSING_VALUE, UNKNOWN_EVENT_TYPE, UNKNOWN_ITEM, UNPARSABLE_TIMESTAMP, NOT_A_NUMBER,
    NON_POSITIVE_PRICE, INVALID_QUANTITY, DUPLICATE_ID, COLLIDING_ID, NUL_BYTE, VALUE_TOO_LONG,
    FUTURE_TIMESTAMP, PRE_1970_TIMESTAMP, IMAGE_MISSING, IMAGE_OUTSIDE_SOURCE, IMAGE_CORRUPT, IMAGE_TOO_LARGE,
    MISSING_TITLE_KEPT, HALF_WRITTEN_LINE,
)
# Reasons that flag a row but keep it (with the field nulled or emptied).
KEEP_ROW_REASONS = frozenset({IMAGE_MISSING, IMAGE_OUTSIDE_SOURCE, IMAGE_CORRUPT, IMAGE_TOO_LARGE, MISSING_TITLE_KEPT})

# Working column: a row's 0-based place in its source file, for reject rows found after filtering.
SOURCE_ROW = "_source_row"
REJECT_COLUMNS = ("reject_file", "reject_row", "reject_field", "reject_value", "reject_reason")
TABLES = ("items", "users", "events")
FORMATS = (".parquet", ".csv")


@dataclass
class TableReport:
    """Counts for one table of one ingest."""

    table: str
    files: list[str] = field(default_factory=list)  # source files read, relative to the source dir
    read: int = 0  # data rows read
    accepted: int = 0  # rows written to the canonical shop
    rejected: int = 0  # rows dropped (each has at least one reject row)
    reasons: Counter[str] = field(default_factory=Counter)  # reject rows by reason (kept rows included)
    # Accepted rows the shop held already, so not stored twice (events of a merge only; else None).
    already_stored: int | None = None

    @property
    def new(self) -> int | None:
        """Accepted rows the shop did not hold yet (a merge's events; else None: every accepted row was written)."""
        return None if self.already_stored is None else self.accepted - self.already_stored

    def to_dict(self) -> dict[str, Any]:
        counts = {
            "files": self.files, "read": self.read, "accepted": self.accepted,
            "rejected": self.rejected, "reasons": dict(sorted(self.reasons.items())),
        }
        if self.already_stored is not None:
            counts |= {"new": self.new, "already_stored": self.already_stored}
        return counts


@dataclass
class IngestReport:
    """What one `ingest` read, accepted and rejected; prints as a rich table or JSON."""

    source: Path
    shop: Path
    rejects: Path
    append: bool
    tables: dict[str, TableReport]
    images: int = 0  # images copied or linked into the shop
    event_days: list[str] = field(default_factory=list)  # UTC days whose partitions were written
    merge: bool = False  # event days were merged into, not replaced
    moved: list[Path] = field(default_factory=list)  # spool files moved to live/ingested/ (`ingest_live`)

    @property
    def problems(self) -> int:
        """Reject rows written, over all tables."""
        return sum(sum(t.reasons.values()) for t in self.tables.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source), "shop": str(self.shop), "rejects": str(self.rejects),
            "append": self.append, "merge": self.merge, "images": self.images,
            "event_days": {"count": len(self.event_days), "first": self.event_days[0] if self.event_days else None,
                           "last": self.event_days[-1] if self.event_days else None},
            "tables": {name: report.to_dict() for name, report in self.tables.items()},
            "moved": [str(path) for path in self.moved],
        }

    def to_table(self) -> Table:
        table = Table(title=f"ingest {self.source} -> {self.shop}" + (" (merge)" if self.merge else ""))
        columns = ("table", "read", "accepted", *(("already stored",) if self.merge else ()), "rejected", "reject rows by reason")
        for column in columns:
            table.add_column(column, justify="left" if column in ("table", "reject rows by reason") else "right")
        for name, report in self.tables.items():
            reasons = ", ".join(f"{reason} {count:,}" for reason, count in sorted(report.reasons.items()))
            held = () if not self.merge else ("-" if report.already_stored is None else f"{report.already_stored:,}",)
            table.add_row(name, f"{report.read:,}", f"{report.accepted:,}", *held, f"{report.rejected:,}", reasons or "-")
        table.caption = (
            f"{self.images:,} images, {len(self.event_days)} event days"
            + (f" ({self.event_days[0]} .. {self.event_days[-1]})" if self.event_days else "")
            + (f"; reject rows in {self.rejects}" if self.problems else "")
            + (f"; {len(self.moved)} spool files moved to {self.moved[0].parent}" if self.moved else "")
        )
        return table


def ingest(
    data: DataDir, source: Path | None = None, *, append: bool = False, merge: bool = False, spool: bool = False
) -> IngestReport:
    """Validate the contract files in `source` and write what passes to the canonical shop.

    Args:
        data: the data dir; the shop goes to `data.shop`, reject rows to `data.rejects`.
        source: dir holding `items.{parquet,csv}`, `events.{parquet,csv}` or an `events/` folder of
            Parquet/CSV parts, optional `users.{parquet,csv}`, and the images that `image_path` names
            (relative to `source`). Defaults to `data.incoming`.
        append: add to the existing shop instead of replacing it: items and users are upserted by
            id, event days present in `source` replace those days (other days are not rewritten),
            and `items` may be absent (events may refer to items already in the shop).
        merge: with `append`: event days present in `source` are merged into those days instead of
            replacing them; a row the shop holds already is not stored twice, so ingesting the same
            files again changes nothing (`store.WriteMode.MERGE_DAYS`; counts in `already_stored`).
        spool: `source` is the service's spool (`data.live`), whose CSV files may still be growing:
            each is read up to its last newline, and the bytes after it are one `half_written_line`
            reject row (read whole next time). No event files at all is an empty ingest, not an error.

    Returns:
        The counts per table; `report.to_table()` / `report.to_dict()` print them.

    Raises:
        UnusableFile: a file is missing, unreadable, lacks a required column, or has a column whose
            values cannot be read as its type at all. Nothing has been written then.

    Example:
        >>> report = ingest(DataDir.resolve("data"), Path("exports/2024-06-01"), append=True)
        >>> report.tables["events"].reasons
        Counter({'unknown_item': 3})
    """
    if merge and not append:
        raise ValueError("merge=True merges into a stored shop: pass append=True too")
    source = (source or data.incoming).resolve()
    if not source.is_dir():
        raise InvalidInput(f"{source}: no such directory to ingest")
    if source == data.shop or data.shop in source.parents:
        raise InvalidInput(f"{source}: is the canonical shop itself; ingest reads a copy in the contract format")
    reports = {name: TableReport(name) for name in TABLES}
    rejects = RejectWriter(data.rejects)

    items_file = _one_file(source, "items", required=not append)
    users_file = _one_file(source, "users", required=False)
    event_files = _event_files(source, required=not spool)
    # Where each spool CSV's finished lines end (bytes after it are a half line); None: read it whole.
    ends = {path: _finished_length(path) if spool and path.suffix == ".csv" else None for path in event_files}
    # Whole-file problems first, so that a failed ingest writes nothing.
    for path in [items_file, users_file, *event_files]:
        if path is not None and ends.get(path) != 0:  # 0: not even the header is finished yet
            _check_columns(path, source, _schema_for(path, source), ends.get(path))

    # What an append adds to: the ids new rows must not collide with, and the rows they are upserted into.
    old_items = store.read_items(data) if append and data.items.exists() else None
    old_users = store.read_users(data) if append and users_file is not None and data.users.exists() else None
    items = pd.DataFrame()
    if items_file is not None:
        items = _validate_table(items_file, source, contract.ITEMS, reports["items"], rejects)
        items = _drop_duplicates(items, "item_id", items_file, source, reports["items"], rejects, old_items)
        items = _keep_untitled(items, items_file, source, reports["items"], rejects)
    users = None
    if users_file is not None:
        users = _validate_table(users_file, source, contract.USERS, reports["users"], rejects)
        users = _drop_duplicates(users, "user_id", users_file, source, reports["users"], rejects, old_users)

    known = [items["item_id"].astype(object)] if items_file is not None else []
    if old_items is not None:
        known.append(old_items["item_id"].astype(object))
    known_items = pyarrow.array(pd.concat(known).unique() if known else [], type=pyarrow.large_string())

    mode = store.WriteMode.MERGE_DAYS if merge else store.WriteMode.REPLACE_DAYS if append else store.WriteMode.REPLACE_ALL
    writer = store.EventWriter(data, mode)
    try:
        for path in event_files:
            reports["events"].files.append(_relative(path, source))
            end, rows = ends[path], 0
            if end != 0:
                for offset, chunk in _chunks(path, source, end):
                    events = _validate_chunk(chunk, offset, path, source, contract.EVENTS, reports["events"], rejects,
                                             known_items=known_items)
                    rows = offset + chunk.num_rows
                    for days in _day_slices(events):
                        writer.write(days)
            if end is not None:
                _reject_half_line(path, source, end, rows, reports["events"], rejects)
        image_count = 0
        if items_file is not None:
            items, image_count = _place_images(items, items_file, source, data, append, reports["items"], rejects)
    except BaseException:
        writer.discard()
        rejects.discard()
        raise

    # Everything validated: publish. Events first (the largest), then the tables that name them.
    published = writer.publish()
    if merge:
        reports["events"].already_stored = published.already_stored
    if items_file is not None:
        store.write_items(data, _upserted(_canonical(items, contract.ITEMS), old_items, "item_id"))
    if users is not None:
        store.write_users(data, _upserted(_canonical(users, contract.USERS), old_users, "user_id"))
    # A table not delivered in an append keeps its last rejects; otherwise they describe this ingest.
    rejects.publish([name for name in TABLES if reports[name].files or not append])
    return IngestReport(source, data.shop, data.rejects, append, reports, image_count, published.days, merge)


def ingest_live(data: DataDir, now: datetime | None = None) -> IngestReport:
    """Ingest what the service received (`data.live`) in merge mode, then move past days' spool files.

    Reads every spool file in `data.live_events` with `ingest(data, data.live, append=True,
    merge=True, spool=True)`: the days they hold are added to (a shop's export of the same day
    stays), rows stored by an earlier run are not stored again, and a half-written last line is one
    reject row. Then the files of UTC days that ended more than SPOOL_SETTLE before `now` move to
    `live/ingested/`; today's stay, since the service still appends to them, and the next run reads
    them again. `live/` needs no items or users file: events are checked against the shop's items.

    Args:
        data: the data dir, holding the shop and the spool.
        now: the moment that decides which files are past (default: the clock); naive is UTC.

    Returns:
        The ingest's counts, `moved` naming the files moved.

    Example:
        >>> report = ingest_live(DataDir.resolve("data"))
        >>> report.tables["events"].already_stored, [p.name for p in report.moved]
        (1200, ['events-2026-12-05-4242.csv'])
    """
    moment = store.utc(now if now is not None else pd.Timestamp.now(tz="UTC"))
    # Chosen before reading, so that every file moved below has been read whole by this ingest.
    settled = [path for path in _spool_files(data) if _spool_day(path) + pd.Timedelta(days=1) + SPOOL_SETTLE <= moment]
    data.live_events.mkdir(parents=True, exist_ok=True)
    report = ingest(data, data.live, append=True, merge=True, spool=True)
    report.moved = _move_to_ingested(settled, data.live / INGESTED_FOLDER)
    return report


def _spool_files(data: DataDir) -> list[Path]:
    """The spool files named as the service names them; other files are read but never moved."""
    if not data.live_events.is_dir():
        return []
    return sorted(path for path in data.live_events.iterdir() if path.is_file() and SPOOL_FILE.match(path.name))


def _spool_day(path: Path) -> pd.Timestamp:
    match = SPOOL_FILE.match(path.name)
    assert match is not None  # `_spool_files` keeps matching names only
    return pd.Timestamp(match.group(1), tz="UTC")


def _move_to_ingested(files: list[Path], folder: Path) -> list[Path]:
    """Move `files` into `folder`; a name already there gets a number (`events-D-pid.1.csv`), never overwritten."""
    moved = []
    for path in files:
        folder.mkdir(parents=True, exist_ok=True)
        target, copy = folder / path.name, 0
        while target.exists():
            copy += 1
            target = folder / f"{path.stem}.{copy}{path.suffix}"
        path.rename(target)
        moved.append(target)
    return moved


def _day_slices(events: pd.DataFrame) -> Iterator[pd.DataFrame]:
    """`events` in parts of at most MAX_DAYS_PER_WRITE distinct UTC days each (one part for most chunks)."""
    if events.empty:
        return
    codes, _ = pd.factorize(events["timestamp"].dt.floor("D"), sort=True)
    if codes.max() < MAX_DAYS_PER_WRITE:
        yield events
        return
    for first in range(0, int(codes.max()) + 1, MAX_DAYS_PER_WRITE):
        yield events[(codes >= first) & (codes < first + MAX_DAYS_PER_WRITE)]


def _upserted(new: pd.DataFrame, old: pd.DataFrame | None, key: str) -> pd.DataFrame:
    """`new`, plus the rows of `old` whose `key` is not in `new` (an append's upsert)."""
    if old is None:
        return new
    rest = old[~old[key].isin(new[key])]
    # A re-delivered table replaces every row: nothing of the old one to keep (and pandas warns on empty concats).
    return new if rest.empty else pd.concat([rest, new], ignore_index=True)


# --- finding and reading files -------------------------------------------------------------------


def _one_file(source: Path, table: str, *, required: bool) -> Path | None:
    found = [source / f"{table}{suffix}" for suffix in FORMATS if (source / f"{table}{suffix}").is_file()]
    if len(found) > 1:
        raise UnusableFile(f"{source}: both {found[0].name} and {found[1].name}; keep one")
    if not found and required:
        raise UnusableFile(f"{source}: no {table}.parquet or {table}.csv")
    return found[0] if found else None


def _event_files(source: Path, *, required: bool = True) -> list[Path]:
    single = _one_file(source, "events", required=False)
    folder = source / "events"
    parts = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in FORMATS) if folder.is_dir() else []
    if single is not None and parts:
        raise UnusableFile(f"{source}: both {single.name} and an events/ folder; keep one")
    if single is None and not parts and required:
        raise UnusableFile(f"{source}: no events.parquet, events.csv or events/ folder of .parquet/.csv parts")
    return [single] if single is not None else parts


def _schema_for(path: Path, source: Path) -> pa.DataFrameSchema:
    name = _relative(path, source).split("/")[0].split(".")[0]
    return {"items": contract.ITEMS, "users": contract.USERS, "events": contract.EVENTS}[name]


def _relative(path: Path, source: Path) -> str:
    return path.relative_to(source).as_posix()


def _columns(path: Path, source: Path) -> list[str]:
    try:
        if path.suffix == ".parquet":
            return list(pq.read_schema(path).names)
        # utf-8-sig: a byte order mark (Excel's "CSV UTF-8" writes one) is not part of the first column's name.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, pyarrow.ArrowException, csv.Error) as exc:
        raise UnusableFile(f"{_relative(path, source)}: unreadable ({exc})") from exc


def _check_columns(path: Path, source: Path, schema: pa.DataFrameSchema, end: int | None = None) -> None:
    if path.suffix == ".csv":
        _check_utf8(path, source, end)
    columns = _columns(path, source)
    missing = [name for name, column in schema.columns.items() if column.required and name not in columns]
    if missing:
        raise UnusableFile(
            f"{_relative(path, source)}: required column {', '.join(repr(m) for m in missing)} missing "
            f"(columns present: {', '.join(columns) or 'none'})"
        )


def _check_utf8(path: Path, source: Path, end: int | None = None) -> None:
    """UnusableFile naming the byte, line and bytes where a CSV file (its first `end` bytes) stops being UTF-8.

    Such a file is refused whole, not row by row: a byte that is not UTF-8 means the file was saved in
    another encoding (Excel's plain "CSV" writes cp1252), so every row holding an accent, a euro sign or
    a curly quote is affected, and rejecting those rows would quietly drop exactly the shop's non-ASCII
    items and their sales. Guessing the encoding is no better: latin-1 decodes any bytes, so a wrong guess
    stores garbled titles without a word. Saving the file as UTF-8 fixes it, and until then the previous
    shop stays as it was.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 0
    with _opened(path, end) as handle:
        while True:
            block = handle.read(UTF8_CHECK_BLOCK)
            pending = decoder.getstate()[0]  # the start of a character cut by the previous block
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                line = lines + exc.object[: exc.start].count(b"\n") + 1
                raise UnusableFile(
                    f"{_relative(path, source)}: not UTF-8 at byte {offset - len(pending) + exc.start:,} (line {line}: "
                    f"{exc.object[exc.start : exc.start + 8]!r}); it was saved in another encoding (cp1252 or latin-1?): "
                    f"save it as UTF-8 (Excel: 'CSV UTF-8')"
                ) from exc
            if not block:
                return
            offset, lines = offset + len(block), lines + block.count(b"\n")


def _read_whole(path: Path, source: Path) -> pyarrow.Table:
    return pyarrow.concat_tables([chunk for _, chunk in _chunks(path, source)]) if path.stat().st_size else pyarrow.table({})


def _chunks(path: Path, source: Path, end: int | None = None) -> Iterator[tuple[int, pyarrow.Table]]:
    """(row offset, table) pieces of at most about EVENT_CHUNK_ROWS rows; CSV cells stay text.

    `end`: read a CSV file's first `end` bytes only (a spool file's finished lines)."""
    head = None if end is None or path.suffix != ".csv" else _opened(path, end)
    try:
        if path.suffix == ".parquet":
            reader = pq.ParquetFile(path)
            batches: Iterator[pyarrow.RecordBatch] = reader.iter_batches(batch_size=EVENT_CHUNK_ROWS)
            schema = reader.schema_arrow
        else:
            # Every CSV cell is read as text: ids like "00123" stay ids and bad values stay visible.
            columns = _columns(path, source)
            stream = pacsv.open_csv(
                path if head is None else head,
                read_options=pacsv.ReadOptions(block_size=64 << 20),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pyarrow.string() for name in columns},
                    strings_can_be_null=True, quoted_strings_can_be_null=True,
                ),
            )
            batches, schema = iter(stream), stream.schema
        offset, pending, pending_rows = 0, [], 0
        for batch in batches:
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= EVENT_CHUNK_ROWS:
                yield offset, pyarrow.Table.from_batches(pending, schema=schema)
                offset, pending, pending_rows = offset + pending_rows, [], 0
        if pending or offset == 0:
            yield offset, pyarrow.Table.from_batches(pending, schema=schema)
    except (OSError, pyarrow.ArrowException) as exc:
        raise UnusableFile(f"{_relative(path, source)}: unreadable ({exc})") from exc
    finally:
        if head is not None:
            head.close()


class _Head(io.RawIOBase):
    """The first `size` bytes of a file, as a stream: the finished part of a spool file that may still grow."""

    def __init__(self, path: Path, size: int) -> None:
        super().__init__()
        self._file = path.open("rb")
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[: self._left]
        read = self._file.readinto(view) if len(view) else 0
        self._left -= read
        return read

    def close(self) -> None:
        self._file.close()
        super().close()


def _opened(path: Path, end: int | None) -> io.BufferedIOBase:
    """`path` opened for binary reading, or its first `end` bytes when `end` is given."""
    return path.open("rb") if end is None else io.BufferedReader(_Head(path, end))


def _finished_length(path: Path) -> int:
    """The bytes of `path` up to and including its last newline: the lines a writer has finished."""
    with path.open("rb") as handle:
        position = handle.seek(0, os.SEEK_END)
        while position > 0:
            start = max(0, position - TAIL_BLOCK)
            handle.seek(start)
            newline = handle.read(position - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            position = start
    return 0


def _reject_half_line(path: Path, source: Path, end: int, rows: int, report: TableReport, rejects: RejectWriter) -> None:
    """The bytes after `end` (a line still being written, or cut by a crash) as one HALF_WRITTEN_LINE reject row.

    `rows` is the number of finished data rows before it. The reject row holds the cells the line has so far,
    named by the header, and names the cell it stops in; a file without a finished header gets `line` instead."""
    with path.open("rb") as handle:
        handle.seek(end)
        tail = handle.read(MAX_HALF_LINE_BYTES)
    if not tail:
        return
    text = tail.decode("utf-8", errors="replace")  # a line may stop inside a character
    header = _columns(path, source) if end else []
    try:
        cells = next(csv.reader([text]), [])
    except csv.Error:  # an unclosed quote
        cells = [text]
    if header and cells:
        row = {name: [cells[i] if i < len(cells) else None] for i, name in enumerate(header)}
        cut = header[min(len(cells), len(header)) - 1]
    else:
        row, cut = {"line": [text]}, "line"
    chunk = pyarrow.table({name: pyarrow.array(values, pyarrow.string()) for name, values in row.items()})
    rejects.add(report.table, chunk, [_Problem(0, cut, text, HALF_WRITTEN_LINE)], rows, _relative(path, source))
    report.read += 1
    report.rejected += 1
    report.reasons[HALF_WRITTEN_LINE] += 1


# --- validating rows -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    row: int  # 0-based position in the chunk
    field: str
    value: str | None
    reason: str


def _kind(column: pa.Column) -> str:
    dtype = str(column.dtype)
    return "timestamp" if dtype.startswith("datetime") else "number" if dtype.startswith("float") else "text"


def _coerce(table: pyarrow.Table, schema: pa.DataFrameSchema, path: Path, source: Path) -> tuple[pd.DataFrame, list[_Problem]]:
    """The chunk as pandas with contract columns in their contract types, and the values that did not parse."""
    columns: dict[str, pd.Series] = {}
    problems: list[_Problem] = []
    for name in table.column_names:
        if name not in schema.columns:
            columns[name] = table.column(name).to_pandas()
            continue
        column = schema.columns[name]
        raw = table.column(name)
        if pyarrow.types.is_dictionary(raw.type):
            raw = raw.cast(raw.type.value_type)
        kind = _kind(column)
        where = f"{_relative(path, source)}: column {name!r}"
        if kind == "text":
            columns[name] = _text(raw, where)
            continue
        if kind == "number":
            values, text = _number(raw, where)
            reason = NOT_A_NUMBER
        else:
            values, text = _timestamp(raw, where)
            reason = UNPARSABLE_TIMESTAMP
        if text is not None:
            given = text.notna() & (text.str.strip() != "")
            failed = given & values.isna()
            if failed.any() and failed.sum() == given.sum() and given.sum() > 1:
                sample = text[failed].iloc[0]
                raise UnusableFile(f"{where} cannot be read as {kind} (no value parses, e.g. {sample!r})")
            problems += [_Problem(int(i), name, text.iat[i], reason) for i in failed.to_numpy().nonzero()[0]]
        if kind == "timestamp":
            values, outside = _within_range(values, name)
            problems += outside
        columns[name] = values
    frame = pd.DataFrame({name: series.reset_index(drop=True) for name, series in columns.items()}, index=pd.RangeIndex(table.num_rows))
    return frame, problems


def _text(raw: pyarrow.ChunkedArray, where: str) -> pd.Series:
    if pyarrow.types.is_nested(raw.type):
        raise UnusableFile(f"{where} holds {raw.type}, not text")
    if not (pyarrow.types.is_string(raw.type) or pyarrow.types.is_large_string(raw.type)):
        raw = raw.cast(pyarrow.string())
    # Surrounding blanks are noise in every text field; an empty field is a missing one.
    trimmed = pc.utf8_trim_whitespace(raw)
    trimmed = pc.if_else(pc.equal(trimmed, ""), pyarrow.scalar(None, pyarrow.string()), trimmed)
    # Arrow-backed strings: no Python object per cell, which is most of the cost at 20M rows.
    return pd.Series(pd.arrays.ArrowStringArray(trimmed.cast(pyarrow.large_string()).combine_chunks()))


def _number(raw: pyarrow.ChunkedArray, where: str) -> tuple[pd.Series, pd.Series | None]:
    if pyarrow.types.is_integer(raw.type) or pyarrow.types.is_floating(raw.type) or pyarrow.types.is_null(raw.type):
        return raw.cast(pyarrow.float64()).to_pandas(), None
    if pyarrow.types.is_string(raw.type) or pyarrow.types.is_large_string(raw.type):
        fast = _arrow_cast(raw, pyarrow.float64())
        if fast is not None:
            return fast, None
        text = raw.to_pandas()
        return pd.to_numeric(text.str.strip(), errors="coerce").astype("float64"), text
    raise UnusableFile(f"{where} holds {raw.type}, not numbers")


def _arrow_cast(raw: pyarrow.ChunkedArray, target: pyarrow.DataType) -> pd.Series | None:
    """`raw` parsed by Arrow, or None when any value does not parse (Arrow casts all or nothing).

    Clean text columns take this path, ~30x faster than pandas; a chunk with a bad value falls
    back to pandas, which parses value by value and so tells which rows are bad."""
    try:
        return raw.cast(target).to_pandas()
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError):
        return None


def _timestamp(raw: pyarrow.ChunkedArray, where: str) -> tuple[pd.Series, pd.Series | None]:
    """The values as UTC timestamps (NaT where text does not parse), and the text when some did not.

    Typed columns keep the file's unit, so that a year outside the contract type's range (1677-2262 in
    nanoseconds) is a value `_within_range` rejects rather than an overflow that stops the ingest."""
    kind = raw.type
    if pyarrow.types.is_date(kind):
        raw = raw.cast(pyarrow.timestamp("ms"))  # a day count of any year fits in milliseconds
    if pyarrow.types.is_timestamp(raw.type):
        # Naive timestamps are taken to be UTC already, as the contract says.
        return pd.to_datetime(raw.to_pandas(coerce_temporal_nanoseconds=False), utc=True), None
    if pyarrow.types.is_null(kind):
        return pd.Series(pd.NaT, index=range(len(raw)), dtype=contract.UTC_TIMESTAMP), None
    if pyarrow.types.is_string(kind) or pyarrow.types.is_large_string(kind):
        zoned = _arrow_cast(raw, pyarrow.timestamp("ns", "UTC"))
        if zoned is not None:
            return zoned.astype(contract.UTC_TIMESTAMP), None
        naive = _arrow_cast(raw, pyarrow.timestamp("ns"))
        if naive is not None:
            return naive.dt.tz_localize("UTC").astype(contract.UTC_TIMESTAMP), None
        text = raw.to_pandas()
        values = pd.to_datetime(text.str.strip(), utc=True, errors="coerce", format="ISO8601")
        return values.astype(contract.UTC_TIMESTAMP), text
    # Numbers are refused rather than guessed: seconds, milliseconds and nanoseconds all look alike.
    raise UnusableFile(f"{where} holds {kind}; write ISO 8601 text (2024-05-01T12:00:00Z) or a timestamp type")


def _within_range(values: pd.Series, name: str) -> tuple[pd.Series, list[_Problem]]:
    """`values` in the contract type with those before 1970 or too far ahead of the clock nulled, one problem each."""
    latest = pd.Timestamp.now(tz="UTC") + MAX_FUTURE_SKEW
    early, late = (values < EARLIEST_TIMESTAMP).to_numpy(), (values > latest).to_numpy()
    problems = [_Problem(int(i), name, None, PRE_1970_TIMESTAMP) for i in early.nonzero()[0]]
    problems += [_Problem(int(i), name, None, FUTURE_TIMESTAMP) for i in late.nonzero()[0]]
    return values.mask(early | late).astype(contract.UTC_TIMESTAMP), problems


def _text_problems(table: pyarrow.Table) -> list[_Problem]:
    """Cells no column may hold, whatever its type in the contract: a NUL character, or more than MAX_TEXT_CHARS."""
    problems = []
    for name in table.column_names:
        raw = table.column(name)
        if pyarrow.types.is_dictionary(raw.type):
            raw = raw.cast(raw.type.value_type)
        if not (pyarrow.types.is_string(raw.type) or pyarrow.types.is_large_string(raw.type)):
            continue
        # Cheap screens before the exact per-cell checks (which cost ~0.3 s per 1M rows of 7 columns): no cell
        # has more characters than bytes, and a NUL in a cell is a zero byte in the column's data buffers.
        found = []
        if (pc.max(pc.binary_length(raw)).as_py() or 0) > MAX_TEXT_CHARS:
            found.append((VALUE_TOO_LONG, pc.greater(pc.utf8_length(raw), MAX_TEXT_CHARS)))
        buffers = [chunk.buffers()[2] for chunk in raw.chunks]  # [validity, offsets, data]
        if any(data is not None and (np.frombuffer(data, np.uint8) == 0).any() for data in buffers):
            found.append((NUL_BYTE, pc.match_substring(raw, "\x00")))
        for reason, bad in found:
            rows = pc.fill_null(bad, False).to_numpy().nonzero()[0]
            problems += [_Problem(int(i), name, None, reason) for i in rows]
    return problems


# pandera check name -> reject reason; the rest of the check names are the schema's own.
_CHECK_REASONS = {
    "not_nullable": MISSING_VALUE,
    "str_length": MISSING_VALUE,
    "isin": UNKNOWN_EVENT_TYPE,
    "greater_than": NON_POSITIVE_PRICE,
    "greater_than_or_equal_to": INVALID_QUANTITY,
}


_CHECKS_ONLY: dict[str, pa.DataFrameSchema] = {}


def _checks_only(schema: pa.DataFrameSchema) -> pa.DataFrameSchema:
    """`schema` without coercion and uniqueness, which `_coerce` and `_drop_duplicates` do instead."""
    if str(schema.name) not in _CHECKS_ONLY:
        changes: dict[str, dict[str, Any]] = {name: {"coerce": False, "unique": False} for name in schema.columns}
        for name, column in schema.columns.items():
            if _kind(column) == "text":
                # `_text` made these strings already; pandera's `str` check would test every cell in Python.
                changes[name]["dtype"] = None
        checks = schema.update_columns(changes)
        checks.coerce = False
        _CHECKS_ONLY[str(schema.name)] = checks
    return _CHECKS_ONLY[str(schema.name)]


def _schema_problems(frame: pd.DataFrame, schema: pa.DataFrameSchema, skip: set[tuple[int, str]], file: str) -> list[_Problem]:
    """Every row-level failure pandera finds (lazy: all of them, not just the first)."""
    # Coercion is done by `_coerce`, which tells unparsable from missing; uniqueness by `_drop_duplicates`,
    # which keeps the first row of an id.
    checks = _checks_only(schema)
    try:
        with warnings.catch_warnings():
            # pandera's own failure-case concat trips a pandas FutureWarning; it is not ours to fix.
            warnings.simplefilter("ignore", FutureWarning)
            checks.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    else:
        return []
    problems = []
    for case in cases.itertuples(index=False):
        if pd.isna(case.index):
            raise UnusableFile(f"{file}: column {case.column!r} fails {case.check} as a whole ({case.failure_case})")
        if (int(case.index), str(case.column)) in skip:
            continue
        check = str(case.check).split("(")[0]
        reason = _CHECK_REASONS.get(check, check)
        value = None if pd.isna(case.failure_case) else str(case.failure_case)
        problems.append(_Problem(int(case.index), str(case.column), value, reason))
    return problems


def _validate_chunk(
    table: pyarrow.Table, offset: int, path: Path, source: Path, schema: pa.DataFrameSchema,
    report: TableReport, rejects: RejectWriter, *, known_items: pyarrow.Array | None = None,
) -> pd.DataFrame:
    """The valid rows of one chunk, in contract types; the invalid ones go to `rejects`."""
    problems = _text_problems(table)
    frame, unparsed = _coerce(table, schema, path, source)
    # One reject row per faulty cell: a 10 MB price is too long, not also not a number.
    skip = {(p.row, p.field) for p in problems}
    problems += [p for p in unparsed if (p.row, p.field) not in skip]
    skip |= {(p.row, p.field) for p in unparsed}
    problems += _schema_problems(frame, schema, skip, _relative(path, source))
    if known_items is not None:
        ids = frame["item_id"]
        # Arrow's hash lookup; pandas' isin would rebuild the 100k-id set for every chunk.
        found = pc.is_in(pyarrow.array(ids, type=pyarrow.large_string()), value_set=known_items)
        unknown = ids.notna() & ~pd.Series(found.to_numpy(zero_copy_only=False), index=ids.index)
        problems += [_Problem(int(i), "item_id", ids.iat[i], UNKNOWN_ITEM) for i in unknown.to_numpy().nonzero()[0]]
    dropped = sorted({p.row for p in problems})
    report.read += len(frame)
    report.rejected += len(dropped)
    report.reasons.update(p.reason for p in problems)
    rejects.add(report.table, table, problems, offset, _relative(path, source))
    keep = pd.Series(True, index=frame.index)
    keep.iloc[dropped] = False
    valid = _canonical(frame[keep.to_numpy()].reset_index(drop=True), schema)
    report.accepted += len(valid)
    return valid


def _validate_table(path: Path, source: Path, schema: pa.DataFrameSchema, report: TableReport, rejects: RejectWriter) -> pd.DataFrame:
    report.files.append(_relative(path, source))
    table = _read_whole(path, source)
    frame = _validate_chunk(table, 0, path, source, schema, report, rejects)
    # Remember each row's place in the file for the reject rows that come later (duplicates, images).
    keep_rows = _surviving_rows(table.num_rows, rejects.rows_for(report.table, _relative(path, source)))
    frame[SOURCE_ROW] = keep_rows
    rejects.keep_source(report.table, _relative(path, source), table)
    return frame


def _surviving_rows(total: int, rejected: set[int]) -> np.ndarray:
    return np.setdiff1d(np.arange(total), np.fromiter(rejected, dtype=np.int64, count=len(rejected)))


def _drop_duplicates(
    frame: pd.DataFrame, key: str, path: Path, source: Path, report: TableReport, rejects: RejectWriter, old: pd.DataFrame | None,
) -> pd.DataFrame:
    """Keep the first valid row of each id; later ones are rejected as duplicates, or as colliding ids when
    they equal an earlier id only once both are NFKC-normalised (`COLLIDING_ID`). With `old` (the shop an
    append adds to), a row whose id the shop holds in another form collides too; the same id is an upsert."""
    duplicated = frame[key].duplicated(keep="first")
    normalised = _nfkc(frame[key])
    colliding = normalised.duplicated(keep="first") & ~duplicated
    if old is not None:
        colliding |= normalised.isin(_nfkc(old[key])) & ~frame[key].isin(old[key]) & ~duplicated
    problems = []
    for reason, dropped in ((DUPLICATE_ID, duplicated), (COLLIDING_ID, colliding)):
        rows = frame[dropped]
        problems += [_Problem(int(row), key, value, reason) for row, value in zip(rows[SOURCE_ROW], rows[key])]
    if problems:
        rejects.add_from_source(report.table, _relative(path, source), problems)
        report.rejected += len(problems)
        report.accepted -= len(problems)
        report.reasons.update(p.reason for p in problems)
    return frame[~(duplicated | colliding)].reset_index(drop=True)


def _nfkc(ids: pd.Series) -> pd.Series:
    return pd.Series(pc.utf8_normalize(pyarrow.array(ids, type=pyarrow.large_string()), form="NFKC").to_pandas(), index=ids.index)


def _keep_untitled(frame: pd.DataFrame, path: Path, source: Path, report: TableReport, rejects: RejectWriter) -> pd.DataFrame:
    """Items without a title keep their row (title "") and get a `missing_title_kept` warning row."""
    untitled = frame["title"].isna()
    if untitled.any():
        problems = [_Problem(int(row), "title", None, MISSING_TITLE_KEPT) for row in frame.loc[untitled, SOURCE_ROW]]
        rejects.add_from_source(report.table, _relative(path, source), problems)
        report.reasons[MISSING_TITLE_KEPT] += len(problems)
        frame = frame.assign(title=frame["title"].fillna(""))
    return frame


def _canonical(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Contract columns first, in contract types (absent optional ones as nulls), then extra columns."""
    out = pd.DataFrame(index=frame.index)
    for name, column in schema.columns.items():
        kind = _kind(column)
        if name in frame:
            out[name] = frame[name]
        elif kind == "timestamp":
            out[name] = pd.Series(pd.NaT, index=frame.index, dtype=contract.UTC_TIMESTAMP)
        elif kind == "number":
            out[name] = pd.Series(float("nan"), index=frame.index, dtype="float64")
        else:
            out[name] = pd.Series(None, index=frame.index, dtype=object)
    for name in frame.columns:
        if name not in out and name != SOURCE_ROW:
            out[name] = frame[name]
    return out


# --- images --------------------------------------------------------------------------------------


def _image_file(image_path: str, source: Path) -> Path | str:
    """The decodable image file that `image_path` names inside `source` (symlinks followed), or the reject reason.

    Where the path leads is settled before the file is touched: a path out of `source` is not even opened."""
    try:
        path = (source / image_path).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name too long for the file system
        return IMAGE_MISSING
    if source not in path.parents:
        return IMAGE_OUTSIDE_SOURCE
    if not path.is_file():
        return IMAGE_MISSING
    try:
        # The header gives the size: a decompression bomb is refused before its pixels are decoded.
        with Image.open(path) as image:
            if image.width * image.height > contract.MAX_IMAGE_PIXELS:
                return IMAGE_TOO_LARGE
            # verify() checks structure without decoding; load() then decodes the pixels (truncated files fail here).
            image.verify()
        with Image.open(path) as image:
            image.load()
    except Image.DecompressionBombError:  # so large in pixels that PIL refuses to open it at all
        return IMAGE_TOO_LARGE
    except Exception:  # PIL raises many unrelated types for bad files; every one means "not an image"
        return IMAGE_CORRUPT
    return path


def _image_name(item_id: str, suffix: str) -> str:
    """A file name for the item's image: the id itself when it is file-safe, else a safe form plus a hash."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", item_id)
    if safe != item_id or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}"
    return f"{safe}{suffix.lower()}"


def link_or_copy(src: Path, dst: Path) -> None:
    """Put `src` at `dst`: a hard link when both are on one file system (no second copy), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _place_images(
    items: pd.DataFrame, path: Path, source: Path, data: DataDir, append: bool, report: TableReport, rejects: RejectWriter,
) -> tuple[pd.DataFrame, int]:
    """Check each item's image, copy the good ones into the shop and point image_path at the copy."""
    items = items.copy()
    given = items["image_path"].notna() if "image_path" in items else pd.Series(False, index=items.index)
    candidates = [(i, str(items.at[i, "image_path"])) for i in items.index[given]]
    with ThreadPoolExecutor(IMAGE_WORKERS) as pool:
        verdicts = list(pool.map(lambda pair: _image_file(pair[1], source), candidates))
    staging = data.shop / ".images-staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    problems, placed = [], {}
    for (i, given_path), image in zip(candidates, verdicts):
        if isinstance(image, str):  # the reject reason
            problems.append(_Problem(int(items.at[i, SOURCE_ROW]), "image_path", given_path, image))
            continue
        name = _image_name(str(items.at[i, "item_id"]), image.suffix)
        link_or_copy(image, staging / name)
        placed[i] = f"{data.images.name}/{name}"
    rejects.add_from_source(report.table, _relative(path, source), problems)
    report.reasons.update(p.reason for p in problems)
    if "image_path" in items:
        items["image_path"] = pd.Series(placed, dtype=object).reindex(items.index)
    # Swap the new images in: replacing the folder, or adding to it when appending.
    if not append and data.images.exists():
        shutil.rmtree(data.images)
    data.images.mkdir(parents=True, exist_ok=True)
    for image in staging.iterdir():
        image.replace(data.images / image.name)
    shutil.rmtree(staging)
    return items, len(placed)


# --- reject rows ---------------------------------------------------------------------------------


class RejectWriter:
    """Collects reject rows per table and writes `rejects/<table>.parquet` once the ingest succeeds."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._frames: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
        self._rows: dict[tuple[str, str], set[int]] = {}
        self._sources: dict[tuple[str, str], pyarrow.Table] = {}

    def add(self, table: str, chunk: pyarrow.Table, problems: list[_Problem], offset: int, file: str) -> None:
        """Reject rows for `problems` found in `chunk` (rows 0-based within the chunk, which starts at `offset`)."""
        # Rows dropped, for `rows_for`; a kept row's warning does not remove it from the table.
        self._rows.setdefault((table, file), set()).update(p.row + offset for p in problems if p.reason not in KEEP_ROW_REASONS)
        if not problems:
            return
        rows = [p.row for p in problems]
        original = _as_text(chunk.take(pyarrow.array(rows, pyarrow.int64())))
        original["reject_file"] = file
        original["reject_row"] = [row + offset + 1 for row in rows]
        original["reject_field"] = [p.field for p in problems]
        # The value as the file holds it (before trimming or parsing), so that it can be found there.
        values = [original.at[i, p.field] if p.field in original else p.value for i, p in enumerate(problems)]
        original["reject_value"] = [None if v is None or v is pd.NA else str(v)[:MAX_REJECT_VALUE_CHARS] for v in values]
        original["reject_reason"] = [p.reason for p in problems]
        self._frames[table].append(original)

    def rows_for(self, table: str, file: str) -> set[int]:
        return self._rows.get((table, file), set())

    def keep_source(self, table: str, file: str, chunk: pyarrow.Table) -> None:
        """Keep a whole (small) file, so that later checks can quote its rows."""
        self._sources[(table, file)] = chunk

    def add_from_source(self, table: str, file: str, problems: list[_Problem]) -> None:
        self.add(table, self._sources[(table, file)], problems, 0, file)

    def discard(self) -> None:
        self._frames = {name: [] for name in TABLES}

    def publish(self, tables: list[str]) -> None:
        """Replace `rejects/<table>.parquet` for each of `tables` (removed when the table has none)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for table in tables:
            target = self.folder / f"{table}.parquet"
            frames = self._frames[table]
            if not frames:
                target.unlink(missing_ok=True)
                continue
            frame = pd.concat(frames, ignore_index=True).sort_values(["reject_file", "reject_row"], kind="stable")
            columns = [c for c in frame.columns if c not in REJECT_COLUMNS] + list(REJECT_COLUMNS)
            frame[columns].to_parquet(target, index=False)


def _as_text(chunk: pyarrow.Table) -> pd.DataFrame:
    """Every column as text (None for nulls) of at most MAX_REJECT_VALUE_CHARS, for the reject file."""
    out = {}
    for name in chunk.column_names:
        column = chunk.column(name)
        try:
            out[name] = pc.utf8_slice_codeunits(column.cast(pyarrow.string()), 0, MAX_REJECT_VALUE_CHARS).to_pandas()
        except (pyarrow.ArrowNotImplementedError, pyarrow.ArrowInvalid):
            out[name] = pd.Series([None if v is None else str(v)[:MAX_REJECT_VALUE_CHARS] for v in column.to_pylist()], dtype=object)
    return pd.DataFrame(out, index=range(chunk.num_rows))
