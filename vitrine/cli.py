"""The `vitrine` command: one subcommand per job.

Each stage package registers its own commands (`<package>/commands.py: register(cli)`), so this
module only assembles them and maps the error tree to exit codes, in one place.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import typer
from rich.console import Console

from vitrine.errors import VitrineError

err = Console(stderr=True)


@dataclass(frozen=True)
class Groups:
    """The command groups a stage can add to."""

    root: typer.Typer
    train: typer.Typer
    evaluate: typer.Typer
    features: typer.Typer
    pipeline: typer.Typer


def build() -> typer.Typer:
    root = typer.Typer(help="Vitrine: multimodal recommendations for online shops.", no_args_is_help=True)
    groups = Groups(
        root=root,
        train=typer.Typer(help="Train a model and register it in MLflow.", no_args_is_help=True),
        evaluate=typer.Typer(help="Evaluate a model against baselines (`--json` for figures).", no_args_is_help=True),
        features=typer.Typer(help="Build, register and materialize Feast features.", no_args_is_help=True),
        pipeline=typer.Typer(help="The scheduled training pipeline.", no_args_is_help=True),
    )
    root.add_typer(groups.train, name="train")
    root.add_typer(groups.evaluate, name="evaluate")
    root.add_typer(groups.features, name="features")
    root.add_typer(groups.pipeline, name="pipeline")

    # Imported here so that `vitrine --help` stays cheap and a broken stage names itself.
    from embeddings import commands as embedding_commands
    from ranking import commands as ranking_commands
    from training import commands as training_commands
    from vitrine.shop import commands as shop_commands

    for stage in (shop_commands, embedding_commands, training_commands, ranking_commands):
        stage.register(groups)
    return root


def main() -> None:
    try:
        build()(standalone_mode=False)
    except VitrineError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click's usage errors arrive here in standalone_mode=False
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
