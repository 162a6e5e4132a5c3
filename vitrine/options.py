"""CLI options that every `vitrine` subcommand shares, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vitrine.paths import DATA_DIR_ENV, DataDir

DataDirOption = Annotated[
    Optional[Path],
    typer.Option("--data-dir", envvar=DATA_DIR_ENV, help="Data dir (default ./data).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


def data_dir(option: Path | None) -> DataDir:
    return DataDir.resolve(option)
