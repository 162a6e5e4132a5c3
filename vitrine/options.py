"""CLI options that every `vitrine` subcommand shares, declared once, and the choices behind them."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TextIO, get_args

import typer

from vitrine.as_of import AS_OF_ENV, parse_as_of
from vitrine.errors import InvalidInput
from vitrine.paths import DATA_DIR_ENV, DataDir

# The online stores the feature repo has a configuration for (`feature_repo/feature_store*.yaml`).
OnlineKind = Literal["sqlite", "redis"]
ONLINE_STORES: tuple[str, ...] = get_args(OnlineKind)

DataDirOption = Annotated[
    Optional[Path],
    typer.Option("--data-dir", envvar=DATA_DIR_ENV, help="Data dir (default ./data).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
OnlineOption = Annotated[str, typer.Option("--online", help="Online store: sqlite (embedded) or redis ($VITRINE_REDIS).")]
AsOfOption = Annotated[
    Optional[str],
    typer.Option(
        "--as-of",
        envvar=AS_OF_ENV,
        help="Judge feature freshness at this moment instead of now, to replay a past day (ISO 8601; no zone = UTC).",
        show_default=False,
    ),
]


def data_dir(option: Path | None) -> DataDir:
    return DataDir.resolve(option)


def online_store(value: str) -> OnlineKind:
    """`--online` checked against the configured stores.

    Raises:
        InvalidInput: not one of ONLINE_STORES.
    """
    if value not in ONLINE_STORES:
        raise InvalidInput(f"--online: {value!r} is not one of {', '.join(ONLINE_STORES)}")
    return value  # type: ignore[return-value]


def as_of(option: str | None) -> datetime | None:
    """`--as-of` (or `$VITRINE_AS_OF`) as an aware UTC datetime; None when not given.

    Raises:
        InvalidInput: not ISO 8601.
    """
    return parse_as_of(option) if option and option.strip() else None


# Where `print_json` writes while `json_only_on_stdout` is in force: the stdout that was, before the
# rest of the output went to stderr.
_json_stream: TextIO | None = None


@contextlib.contextmanager
def json_only_on_stdout() -> Iterator[None]:
    """Inside, stdout carries `print_json`'s document only; whatever else prints (our progress lines,
    Feast's materialize log, a library's notice) goes to stderr, so `--json | jq` always parses."""
    global _json_stream
    saved = _json_stream
    _json_stream = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_stream = saved


def print_json(payload: Any) -> None:
    """Print `payload` as JSON on stdout for `--json`: plain `print` (rich would wrap long lines), values
    JSON cannot hold as text (`default=str`: datetimes, paths), and NaN/inf as null so the output is valid."""
    print(json.dumps(_finite(payload), indent=2, default=str, allow_nan=False), file=_json_stream or sys.stdout)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def bar_shown(requested: bool) -> bool:
    """Progress bars only on a terminal: when asked for (not under --json) and stderr is a TTY, not a log or a pipe."""
    return requested and sys.stderr.isatty()
