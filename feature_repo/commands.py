"""`vitrine features build | apply | materialize`, named in `vitrine.cli`, which imports them when they run.

    vitrine features build [--since 2026-02-01] [--json]     daily snapshots -> data/features (Feast sources)
    vitrine features apply [--online sqlite|redis]           feast apply of feature_repo/definitions.py
    vitrine features materialize [--online redis] [--start ISO] [--end ISO] [--view NAME ...] [--json]

The same repo works with the stock CLI: `cd feature_repo && VITRINE_DATA_DIR=$PWD/../data feast apply`.
"""

from __future__ import annotations

import contextlib
import sys
from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated, Optional

import typer
from rich.console import Console

from vitrine.options import DataDirOption, JsonOption, OnlineOption, data_dir, online_store, print_json
from vitrine.paths import DataDir

err = Console(stderr=True)


def build_command(
    data_dir_option: DataDirOption = None,
    since: Annotated[
        Optional[str], typer.Option("--since", help="Rebuild snapshot days from this UTC day (YYYY-MM-DD) only.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Compute item_stats, user_stats and user_recent_items snapshots from the event log."""
    from feature_repo.snapshots.build import build
    from vitrine.errors import InvalidInput

    try:
        since_day = date.fromisoformat(since) if since else None
    except ValueError as exc:
        raise InvalidInput(f"--since {since!r}: expected YYYY-MM-DD") from exc
    report = build(data_dir(data_dir_option), since=since_day, progress=None if as_json else err.print)
    if as_json:
        print_json(report.__dict__)
    else:
        err.print(f"snapshots {report.first_day} .. {report.last_day}: {report.rows}")


def apply_command(data_dir_option: DataDirOption = None, online: OnlineOption = "sqlite") -> None:
    """Register entities, sources, feature views and services (feast apply)."""
    from feature_repo.store import apply

    apply(data_dir(data_dir_option), online_store(online))
    err.print(f"applied feature_repo/definitions.py to the {online} configuration")


def materialize_command(
    data_dir_option: DataDirOption = None,
    online: OnlineOption = "sqlite",
    start: Annotated[
        Optional[str], typer.Option("--start", help="Range start (ISO, UTC); omitted: incremental from the last run.")
    ] = None,
    end: Annotated[
        Optional[str],
        typer.Option("--end", help="Range end (ISO, UTC); default the day after the last snapshot day, as the pipeline ends it."),
    ] = None,
    view: Annotated[
        Optional[list[str]], typer.Option("--view", help="Only this feature view (repeatable); default all.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Load the latest feature values into the online store (feast materialize)."""
    from feature_repo.store import materialize

    data = data_dir(data_dir_option)
    # The watermark serving judges feature age by is this end: the data's, not the wall clock's,
    # so that a shop whose data stopped days ago shows it (`vitrine recommend` warns, `/readyz` says).
    end_at = _moment(end, "--end") if end else default_end(data)
    start_at = _moment(start, "--start") if start else None
    # Feast prints progress to stdout; keep stdout for the JSON.
    with contextlib.redirect_stdout(sys.stderr):
        stats = materialize(data, start_at, end_at, online_store(online), views=view)
    if as_json:
        print_json(stats)
    else:
        err.print(f"materialized {', '.join(stats['views'])} into {online} in {stats['seconds']:.1f}s")


def default_end(data: DataDir) -> datetime:
    """The day after the last snapshot day: the end of the range the pipeline's feast step materializes.

    Raises:
        InvalidInput: no snapshots built yet (then only `--end` says what to materialize up to).
    """
    from feature_repo.snapshots.build import last_snapshot_day
    from vitrine.errors import InvalidInput

    last = last_snapshot_day(data)
    if last is None:
        raise InvalidInput(f"{data.features}: no feature snapshots; run `vitrine features build` first, or pass --end")
    return datetime.combine(last + timedelta(days=1), time(0), tzinfo=timezone.utc)


def _moment(text: str, option: str) -> datetime:
    from vitrine.errors import InvalidInput

    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput(f"{option} {text!r}: expected an ISO date or datetime") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)

