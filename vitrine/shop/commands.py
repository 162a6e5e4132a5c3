"""CLI commands of the shop stage, named in `vitrine.cli`, which imports them when they run.

    vitrine generate [--users N --items M --days D --seed S --start YYYY-MM-DD] [--scale]   (default: ends yesterday)
    vitrine import amazon-reviews --reviews F --meta F [--images DIR]
    vitrine ingest [--source DIR] [--append]
    vitrine ingest --live          (the service's spool: merged into the shop, past days' files moved)

Each one ends with `ingest`, so the shop in `data/shop` is always validated, and prints the counts
(a table, or JSON with `--json`). Invalid rows never fail a command: they go to `data/rejects/`.
A file that is unusable as a whole exits 2 (`UnusableFile`), through `vitrine.cli`.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vitrine.options import DataDirOption, JsonOption, data_dir, print_json

if TYPE_CHECKING:
    from vitrine.shop.ingest import IngestReport

out = Console()


def _counts_table(title: str, counts: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in counts.items():
        shown = f"{value:,}" if isinstance(value, int) else f"{value:.3f}" if isinstance(value, float) else str(value)
        table.add_row(key, shown)
    return table


def _print_ingest(report: "IngestReport") -> None:
    out.print(report.to_table())


def generate(
    users: Annotated[Optional[int], typer.Option(help="Users (default: the preset's).", min=1)] = None,
    items: Annotated[Optional[int], typer.Option(help="Items (default: the preset's).", min=1)] = None,
    days: Annotated[Optional[int], typer.Option(help="Days of events (default: the preset's).", min=1)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed; a seed gives the same shop.")] = None,
    start: Annotated[
        Optional[str], typer.Option(help="First day of events, YYYY-MM-DD (UTC); default: the period ends yesterday.", show_default=False)
    ] = None,
    scale: Annotated[bool, typer.Option("--scale", help="Start from the benchmark preset (1M users, 100k items, 20M+ events).")] = False,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Generate the synthetic multimodal shop, validate it and store it in the data dir."""
    # Imported here: the generator is heavy and only this command needs it.
    from vitrine.errors import InvalidInput
    from vitrine.shop.generate import generate_shop
    from vitrine.shop.ingest import ingest
    from vitrine.shop.spec import DEMO, SCALE, ending_yesterday

    base = SCALE if scale else DEMO
    spec = replace(
        base,
        users=base.users if users is None else users,
        items=base.items if items is None else items,
        days=base.days if days is None else days,
        seed=base.seed if seed is None else seed,
    )
    if start is None:
        spec = replace(spec, start=ending_yesterday(spec.days))
    else:
        try:
            spec = replace(spec, start=date.fromisoformat(start))
        except ValueError as exc:
            raise InvalidInput(f"--start {start!r}: not a YYYY-MM-DD date") from exc
    data = data_dir(data_dir_option)
    # incoming/ is a staging area: leftovers of an earlier import would be ingested with the new shop.
    if data.incoming.exists():
        shutil.rmtree(data.incoming)
    summary = generate_shop(data, spec, progress=not as_json)
    report = ingest(data)
    if as_json:
        print_json({"generate": summary, "ingest": report.to_dict()})
        return
    out.print(_counts_table(f"generated shop (seed {spec.seed})", summary))
    _print_ingest(report)


def ingest_command(
    source: Annotated[Optional[Path], typer.Option(help="Dir with the contract files (default: <data-dir>/incoming).")] = None,
    append: Annotated[bool, typer.Option("--append", help="Add to the stored shop: upsert items/users, replace only the event days given.")] = False,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="Ingest the events posted to the service (<data-dir>/live), merged into the days stored (a row stored "
            "already is not stored twice); then move past days' spool files to live/ingested/.",
        ),
    ] = False,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Validate a shop in the data contract and store it; invalid rows go to <data-dir>/rejects/."""
    from vitrine.errors import InvalidInput
    from vitrine.shop.ingest import ingest, ingest_live

    if live and source is not None:
        raise InvalidInput("--live reads <data-dir>/live; leave out --source")
    data = data_dir(data_dir_option)
    report = ingest_live(data) if live else ingest(data, source, append=append)
    if as_json:
        print_json(report.to_dict())
    else:
        _print_ingest(report)


def amazon_reviews(
    reviews: Annotated[Path, typer.Option(help="Reviews JSON-lines, e.g. Gift_Cards_5.json.")],
    meta: Annotated[Path, typer.Option(help="Metadata JSON-lines, e.g. meta_Gift_Cards.json.")],
    images: Annotated[Optional[Path], typer.Option(help="Dir of <asin>.jpg product photos.")] = None,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import an Amazon Reviews 2018 shop (a review counts as a purchase), validate it and store it."""
    from vitrine.shop.amazon import import_amazon_reviews

    result = import_amazon_reviews(data_dir(data_dir_option), reviews, meta, images)
    if as_json:
        print_json(result.to_dict())
        return
    out.print(_counts_table("converted from Amazon Reviews 2018", result.to_dict()["converted"]))
    for bad in result.bad_lines[:5]:
        # File names and parser messages are data: escaped, so a `[` in them is not read as rich markup.
        out.print(f"[yellow]{escape(bad.file)}:{bad.line}[/] {bad.reason}: {escape(bad.problem)}", highlight=False)
    if result.ingest is not None:
        _print_ingest(result.ingest)

