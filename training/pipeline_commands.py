"""CLI commands of this stage, registered into `vitrine` by `vitrine.cli`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitrine.cli import Groups


def register(cli: "Groups") -> None:
    """Add this stage's commands to the `vitrine` CLI."""
