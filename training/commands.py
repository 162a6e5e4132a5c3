"""CLI commands of the offline jobs, registered into `vitrine` by `vitrine.cli`.

Each job keeps its commands beside it; this module only gathers them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from training import feature_commands, pipeline_commands, ranker_commands, retriever_commands

if TYPE_CHECKING:
    from vitrine.cli import Groups


def register(cli: "Groups") -> None:
    for job in (feature_commands, retriever_commands, ranker_commands, pipeline_commands):
        job.register(cli)
