"""The moment feature freshness is judged at: the wall clock, or a replayed past day.

`--as-of TIME` on the serving and evaluation commands, or `$VITRINE_AS_OF`, sets it; the CLI
options (`vitrine.options`) and serving (`ranking`) both parse it here.

Example:
    >>> parse_as_of("2026-03-02")
    datetime.datetime(2026, 3, 2, 0, 0, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from vitrine.errors import InvalidInput

# The environment variable that sets the moment freshness is judged at (as `--as-of` does).
AS_OF_ENV = "VITRINE_AS_OF"


def parse_as_of(text: str, source: str = "--as-of") -> datetime:
    """An ISO 8601 date or time as an aware UTC datetime; a time without a zone is UTC.

    Raises:
        InvalidInput: `text` is not ISO 8601 (the message names `source`).
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidInput(f"{source}: {text!r} is not an ISO 8601 time, e.g. 2026-03-02 or 2026-03-02T12:00:00+01:00") from exc
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def as_of_from_environment() -> datetime | None:
    """`$VITRINE_AS_OF` parsed (see `parse_as_of`), None when it is unset or empty."""
    text = os.environ.get(AS_OF_ENV, "").strip()
    return parse_as_of(text, AS_OF_ENV) if text else None
