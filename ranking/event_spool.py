"""Events posted to the service (`POST /events`): checked one by one, then appended durably to the spool.

The spool is the data dir's `live/events/` folder (`DataDir.live_events`), in the data contract's
events format (`vitrine.shop.contract`): CSV with the header

    user_id,item_id,event_type,timestamp,session_id,quantity,price

one file per UTC day of receipt and serving process, `events-YYYY-MM-DD-<pid>.csv`, so that several
uvicorn workers never write to the same file. Timestamps are UTC, ISO 8601 with a `Z`; an absent
optional value is an empty cell. `vitrine ingest --live` (`ingest_live(data)`) merges the folder into the shop.

An accepted event is on disk before the caller hears so: each batch is written, flushed and
`fsync`ed (and the folder too when the file is new) before `EventSpool.append` returns. A batch is
all or nothing: when a write fails half way (disk full), the file is cut back to where it was, so
no half line can later be read as a wrong event.

Example:
    >>> events = parse_events(b'[{"user_id": "U1", "item_id": "I9", "event_type": "view"}]', now)
    >>> EventSpool(data.live_events).append(events, now)
    PosixPath('.../live/events/events-2026-12-06-4242.csv')
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from ranking.recommender import ID_PATTERN, MAX_ID_LENGTH
from vitrine.errors import InvalidInput, PayloadTooLarge, StorageUnavailable
from vitrine.shop.contract import EVENT_OPTIONAL, EVENT_REQUIRED, EVENT_TYPES

# Most events in one post. A shop's tracker flushes tens of events at a time; 500 at ~150 bytes each
# is ~75 kB, far under the body limit, and one fsync per post amortizes well over it.
MAX_EVENT_BATCH = 500
# How far ahead of the server's clock an event's timestamp may be. Device clocks drift by seconds to
# minutes; an event an hour or more ahead comes from a broken clock and would be filed under a day
# that has not happened yet, which training would read as the newest data.
MAX_CLOCK_SKEW = timedelta(hours=1)
# Events older than this are refused: before the Unix epoch a timestamp is a default value, not a
# moment (and the shop's storage holds nanoseconds since 1677 only).
EARLIEST_EVENT = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Problems named in one 422 answer: enough to fix a systematic error, short enough to read.
MAX_PROBLEMS_SHOWN = 20
# The spool's columns: the contract's events columns, required ones first.
SPOOL_COLUMNS: tuple[str, ...] = (*EVENT_REQUIRED, *EVENT_OPTIONAL)

# ISO 8601 text with a zone -> aware datetime, in pydantic's lax parsing (RFC 3339 and its variants).
_AWARE: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


class EventIn(BaseModel):
    """One event as posted; the same fields as the data contract's events table."""

    # strict: a number is not an id and "2" is not a quantity (the schema says what each field is).
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN.pattern, description="The user's id")
    item_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN.pattern, description="The item's id")
    event_type: str = Field(json_schema_extra={"enum": list(EVENT_TYPES)}, description="One of the funnel's steps")
    timestamp: AwareDatetime | None = Field(
        None,
        description="ISO 8601 with a time zone (2026-05-01T12:00:00Z), from 1970 to one hour ahead of the server's clock; "
        "absent: the moment the server receives it",
        # The window, for validators that read it (JSON Schema's format-annotation drafts, ajv); the upper end moves with the clock.
        json_schema_extra={"formatMinimum": EARLIEST_EVENT.isoformat().replace("+00:00", "Z")},
    )
    session_id: str | None = Field(None, min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN.pattern)
    quantity: float | None = Field(None, ge=1, allow_inf_nan=False, description="Units (purchase, add_to_cart)")
    price: float | None = Field(None, gt=0, allow_inf_nan=False, description="Paid per unit, in the shop's currency")

    @field_validator("event_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in EVENT_TYPES:
            raise ValueError(f"{value[:40]!r} is not one of {', '.join(EVENT_TYPES)}")
        return value

    @field_validator("timestamp", mode="before")
    @classmethod
    def _iso_text(cls, value: Any) -> Any:
        # Strict mode takes datetimes only; JSON brings text, parsed here (and never a number of
        # seconds: seconds, milliseconds and microseconds since the epoch all look alike).
        if value is None or isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise ValueError("must be ISO 8601 text with a time zone, e.g. 2026-05-01T12:00:00Z")
        return _AWARE.validate_python(value)



def parse_events(body: bytes, now: datetime) -> list[EventIn]:
    """The events of one post: a JSON object (one event) or a list of at most MAX_EVENT_BATCH.

    Every event gets a UTC timestamp (`now` when it came without one). One bad event refuses the
    whole post: the message names each problem by index and field (`events[3].timestamp: ...`).

    Raises:
        InvalidInput: not JSON, not an event or a list of events, or an event that breaks the contract.
        PayloadTooLarge: more than MAX_EVENT_BATCH events.
    """
    try:
        payload = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInput(f"body: not JSON ({str(exc)[:200]})") from None
    single = isinstance(payload, dict)
    posted = [payload] if single else payload
    if not isinstance(posted, list):
        raise InvalidInput("body: must be one event (a JSON object) or a list of events")
    if not posted:
        raise InvalidInput("body: an empty list; send at least one event")
    if len(posted) > MAX_EVENT_BATCH:
        raise PayloadTooLarge(f"body: {len(posted)} events; at most {MAX_EVENT_BATCH} per post")
    events, problems = [], []
    for index, raw in enumerate(posted):
        where = "event" if single else f"events[{index}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be a JSON object, not {type(raw).__name__}")
            continue
        try:
            event = EventIn.model_validate(raw)
        except ValidationError as exc:
            problems += [f"{where}{''.join(f'.{part}' for part in e['loc'])}: {e['msg']}" for e in exc.errors()]
            continue
        moment, problem = _utc_moment(event.timestamp, now)
        if problem:
            problems.append(f"{where}.timestamp: {problem}")
            continue
        events.append(event.model_copy(update={"timestamp": moment}))
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = len(problems) - MAX_PROBLEMS_SHOWN
        raise InvalidInput(shown + (f"; and {more} more problems" if more > 0 else "") + "; nothing was stored")
    return events


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _utc_moment(timestamp: datetime | None, now: datetime) -> tuple[datetime | None, str | None]:
    """(the event's moment in UTC, None) or (None, why it is refused)."""
    if timestamp is None:
        return now.astimezone(timezone.utc), None
    try:
        moment = timestamp.astimezone(timezone.utc)
    except OverflowError:  # year 1 at +05:00 is before year 1 in UTC
        return None, f"{timestamp.isoformat()} is out of range"
    if moment < EARLIEST_EVENT:
        return None, f"{moment.isoformat()} is before {EARLIEST_EVENT.date()}"
    if moment > now + MAX_CLOCK_SKEW:
        return None, f"{moment.isoformat()} is more than {MAX_CLOCK_SKEW} ahead of the server's clock ({now.isoformat()})"
    return moment, None


# One lock per spool file: threads of one process (concurrent posts, or two apps in one process)
# append whole batches, never interleaved lines. Processes never share a file (the pid is in its name).
_FILE_LOCKS: dict[Path, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(path, threading.Lock())


class EventSpool:
    """Appends accepted events to `folder`, one CSV per UTC day of receipt and process (see the module docstring).

    Args:
        folder: where the files go (`DataDir.live_events`); made on the first append, so a data dir
            that cannot be written does not stop the service from starting.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def file_for(self, moment: datetime) -> Path:
        """The file that events received at `moment` go to, from this process."""
        return self.folder / f"events-{moment.astimezone(timezone.utc):%Y-%m-%d}-{os.getpid()}.csv"

    def append(self, events: list[EventIn], now: datetime) -> Path:
        """Write `events` (received at `now`) and fsync them; returns the file. Blocking: call it off the event loop.

        Raises:
            StorageUnavailable: the folder or file cannot be made or written (read-only, full, no
                permission); nothing of `events` is left in the file.
        """
        path = self.file_for(now)
        rows = _csv_rows(events)
        with _lock_for(path):
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                raise _unavailable(path, exc) from exc
            try:
                size = os.fstat(fd).st_size
                data = ((_HEADER if size == 0 else "") + rows).encode()
                try:
                    _write_all(fd, data)  # os.write is unbuffered: nothing is left to flush
                    os.fsync(fd)
                    if size == 0:  # a new file: its name must survive a crash too
                        _fsync_folder(self.folder)
                except OSError as exc:
                    _cut_back(fd, size)
                    raise _unavailable(path, exc) from exc
            finally:
                os.close(fd)
        return path


def _csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


_HEADER = _csv_text([list(SPOOL_COLUMNS)])


def _csv_rows(events: list[EventIn]) -> str:
    def text(value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, datetime):
            return f"{value:%Y-%m-%dT%H:%M:%S.%f}Z"  # always UTC here (parse_events)
        return repr(value) if isinstance(value, float) else str(value)  # repr: every digit of a price

    return _csv_text([[text(getattr(event, column)) for column in SPOOL_COLUMNS] for event in events])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cut_back(fd: int, size: int) -> None:
    """Drop a half-written batch, so that no partial line is ever read as an event."""
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass  # not a regular file (a device), or the file system refuses: the write itself failed anyway


def _unavailable(path: Path, exc: OSError) -> StorageUnavailable:
    reason = errno.errorcode.get(exc.errno or 0, "OSError")
    return StorageUnavailable(
        f"{path}: the event spool cannot be written ({reason}: {exc.strerror or exc}); nothing of this post was stored", reason
    )
