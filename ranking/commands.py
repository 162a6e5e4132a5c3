"""CLI commands of this stage, named in `vitrine.cli`, which imports them when they run.

    vitrine serve [--host 127.0.0.1] [--port 8000] [--workers 1] [--online sqlite|redis] [--as-of TIME]
    vitrine recommend USER_ID... [--k 20] [--category C] [--as-of TIME] [--json]
    vitrine recommend --users users.txt --k 20 --out recs.parquet      (batch, same code path)

`--as-of TIME` (or `VITRINE_AS_OF`) judges feature freshness at TIME instead of now, to replay a past
day. Without it, served views materialized longer than their ttl ago are named in a warning on
stderr (every answer is then flagged degraded, with the reason).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, Sequence

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ranking.model_watcher import POLL_INTERVAL_S
from vitrine.errors import InvalidInput
from vitrine.options import AsOfOption, DataDirOption, JsonOption, OnlineOption, as_of, data_dir, online_store, print_json

if TYPE_CHECKING:
    from ranking.online_features import StaleView

out = Console()
err = Console(stderr=True)

# Loopback by default: the service has no authentication, so exposing it is an explicit choice.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def warn_if_stale(stale: Sequence["StaleView"], moment: datetime | None, ahead: Sequence[str] = ()) -> None:
    """On stderr: the served views older than their ttl at the judging moment, and what to do about it.

    Args:
        stale: the stale views (`Recommender.stale_views()`, or a batch summary's, via `StaleView.from_dict`).
        moment: the `--as-of` moment, None for now.
        ahead: views materialized past `moment` (a replay then sees values from after it).
    """
    from ranking.online_features import stale_reason

    reason = stale_reason(stale)
    if reason:
        when = f" (judged at --as-of {moment.isoformat()})" if moment else ""
        err.print(f"[bold yellow]warning:[/] every answer is degraded{when}: {escape(reason)}", highlight=False, soft_wrap=True)
    if ahead and moment is not None:
        err.print(
            f"[bold yellow]warning:[/] {', '.join(ahead)} materialized past --as-of {moment.isoformat()}: the online "
            "store holds their latest values, which may include events after it",
            highlight=False,
            soft_wrap=True,
        )


def serve_command(
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes the service to the network.")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = DEFAULT_PORT,
    workers: Annotated[int, typer.Option(help="Worker processes (about one per core; each loads the models).", min=1, max=64)] = 1,
    online: OnlineOption = "sqlite",
    alias: Annotated[str, typer.Option(help="Registry alias of the models to serve.")] = "champion",
    poll_s: Annotated[float, typer.Option("--poll-s", help="Seconds between looks for a new champion or materialization.", min=0.1)] = POLL_INTERVAL_S,
    as_of_option: AsOfOption = None,
    data_dir_option: DataDirOption = None,
) -> None:
    """Serve recommendations, search and similar items over HTTP (FastAPI + uvicorn)."""
    from ranking.service import ServiceConfig, serve

    moment = as_of(as_of_option)
    config = ServiceConfig(data_dir=data_dir(data_dir_option).root, online=online_store(online), alias=alias,
                           poll_interval_s=poll_s, as_of=moment)
    err.print(f"serving on http://{host}:{port} (docs at /docs, metrics at /metrics)")
    if moment is not None:
        err.print(f"judging feature freshness as of {moment.isoformat()}, not now")
    serve(host, port, workers, config)


def recommend_command(
    user_ids: Annotated[Optional[list[str]], typer.Argument(help="User ids.", show_default=False)] = None,
    # The upper bound is ranking.recommender.MAX_K, checked by the recommender (imported lazily: CLI start-up).
    k: Annotated[int, typer.Option("--k", help="Items per user (capped by the recommender's MAX_K).", min=1)] = 20,
    category: Annotated[Optional[str], typer.Option(help="Only items of this category.")] = None,
    include_purchased: Annotated[bool, typer.Option("--include-purchased", help="Keep items the user already bought.")] = False,
    users: Annotated[Optional[Path], typer.Option("--users", help="Batch mode: file of user ids (txt, csv or parquet).")] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Batch mode: write recommendations here (parquet).")] = None,
    processes: Annotated[
        Optional[int], typer.Option("--processes", min=1, max=64, help="Batch mode: worker processes (default: one per core).")
    ] = None,
    online: OnlineOption = "sqlite",
    as_of_option: AsOfOption = None,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recommend items to users: titles and scores, or a Parquet file of many users (batch)."""
    from ranking.recommender import Recommender
    from ranking.service import recommend_payload

    if users is None and not user_ids:
        raise InvalidInput("give user ids, or --users FILE --out recs.parquet for a batch")
    if users is not None and out_path is None:
        raise InvalidInput("--users needs --out recs.parquet")
    data = data_dir(data_dir_option)
    moment = as_of(as_of_option)
    if users is not None:
        assert out_path is not None
        from ranking.batch import read_user_file, recommend_users_to_file

        summary = recommend_users_to_file(
            data, read_user_file(users), k, out_path, processes=processes or os.cpu_count() or 1, online=online_store(online),
            exclude_purchased=not include_purchased, category=category, as_of=moment,
        )  # fmt: skip
        from ranking.online_features import StaleView

        warn_if_stale([StaleView.from_dict(view) for view in summary["stale_features"]], moment)
        if as_json:
            print_json(summary)
        else:
            err.print(f"{summary['users']} users, {summary['rows']} rows -> {out_path} ({summary['users_per_second']:.0f} users/s)")
        return
    recommender = Recommender.from_data(data, online=online_store(online), as_of=moment)
    warn_if_stale(recommender.stale_views(), moment, recommender.freshness.ahead_of(moment) if moment else ())
    results = recommender.recommend_batch(user_ids or [], k, exclude_purchased=not include_purchased, category=category, explain=True)
    if as_json:
        print_json([recommend_payload(r, k) for r in results])
        return
    for result in results:
        flags = " ".join(flag for flag, on in (("cold start", result.cold_start), ("degraded", result.degraded)) if on)
        table = Table(title=f"{result.user_id}" + (f" ({flags})" if flags else ""))
        for column in ("#", "item", "title", "score", "retriever", "top reason"):
            table.add_column(column)
        for n, rec in enumerate(result, 1):
            reason = rec.reasons[0].feature if rec.reasons else rec.source
            retriever = "" if rec.retriever_score is None else f"{rec.retriever_score:.3f}"
            # Titles are catalog data ("[Gift Card] ..."): escaped so brackets are not read as rich markup.
            table.add_row(str(n), escape(rec.item_id), escape(rec.title), f"{rec.score:.3f}", retriever, reason)
        out.print(table)
        if result.reason:
            out.print(f"degraded: {result.reason}", markup=False, highlight=False, soft_wrap=True)

