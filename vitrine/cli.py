"""The `vitrine` command: the stages' commands, known here by name only.

Each stage owns its commands in its own `commands` module; this module maps command names to
`"module:function"` strings (click's LazyGroup pattern) and imports a stage only when one of its
commands runs or its help is shown. So the CLI sits on top of every stage while no stage imports
it, and `vitrine --help` stays cheap (the command modules import only typer and rich at load time).

It also maps the error tree (`vitrine.errors`) to exit codes, in one place.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import typer
from rich.console import Console
from typer.core import TyperGroup

from vitrine.errors import VitrineError

err = Console(stderr=True)


@dataclass(frozen=True)
class Group:
    """A command group: its help text and its commands (name -> "module:function" or a nested Group)."""

    help: str
    commands: Mapping[str, "Entry"] = field(default_factory=dict)


Entry = Union[str, Group]

COMMANDS: dict[str, Entry] = {
    "generate": "vitrine.shop.commands:generate",
    "ingest": "vitrine.shop.commands:ingest_command",
    "import": Group("Import a real shop into the data contract.", {"amazon-reviews": "vitrine.shop.commands:amazon_reviews"}),
    "embed": "embeddings.commands:embed_command",
    "tag": "embeddings.commands:tag_command",
    "search": "embeddings.commands:search_command",
    "similar": "embeddings.commands:similar_command",
    "features": Group(
        "Build, register and materialize Feast features.",
        {
            "build": "feature_repo.commands:build_command",
            "apply": "feature_repo.commands:apply_command",
            "materialize": "feature_repo.commands:materialize_command",
        },
    ),
    "train": Group(
        "Train a model and register it in MLflow.",
        {
            "encoder": "embeddings.commands:train_encoder_command",
            "next-item": "training.next_item_commands:train",
            "retriever": "training.retriever_commands:train",
            "ranker": "training.ranker_commands:train",
        },
    ),
    "evaluate": Group(
        "Evaluate a model against baselines (`--json` for figures).",
        {
            "encoder": "embeddings.commands:evaluate_encoder_command",
            "next-item": "training.next_item_commands:evaluate",
            "retriever": "training.retriever_commands:evaluate",
            "ranker": "training.ranker_commands:evaluate",
        },
    ),
    "pipeline": Group("The scheduled training pipeline.", {"run": "training.pipeline_commands:run_command"}),
    "demo": "training.pipeline_commands:demo_command",
    "serve": "ranking.commands:serve_command",
    "recommend": "ranking.commands:recommend_command",
}


class LazyGroup(TyperGroup):
    """A Typer group whose commands are imported when they are looked up, not when the CLI starts."""

    def __init__(self, *, entries: Mapping[str, Entry], **attrs: Any) -> None:
        super().__init__(no_args_is_help=True, **attrs)
        self.entries = entries

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.entries)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        entry = self.entries.get(cmd_name)
        if entry is None:
            return None
        if isinstance(entry, Group):
            return LazyGroup(name=cmd_name, help=entry.help, entries=entry.commands)
        module, _, attr = entry.partition(":")
        app = typer.Typer(add_completion=False)
        app.command(cmd_name)(getattr(importlib.import_module(module), attr))
        return typer.main.get_command(app)


def build() -> LazyGroup:
    return LazyGroup(name="vitrine", help="Vitrine: multimodal recommendations for online shops.", entries=COMMANDS)


def main() -> None:
    from vitrine.options import json_only_on_stdout

    try:
        # With --json, stdout is the JSON document alone, whatever a stage or library prints.
        with json_only_on_stdout() if "--json" in sys.argv[1:] else contextlib.nullcontext():
            build().main(prog_name="vitrine", standalone_mode=False)
    except VitrineError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors (a bad option, a missing argument) arrive here
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", 2)
        if show is None:
            raise
        show()
        sys.exit(code)


if __name__ == "__main__":
    main()
