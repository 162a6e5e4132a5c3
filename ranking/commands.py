"""CLI commands of this stage, registered into `vitrine` by `vitrine.cli`.

    vitrine serve [--host 127.0.0.1] [--port 8000] [--workers 1] [--online sqlite|redis]
    vitrine recommend USER_ID... [--k 20] [--category C] [--json]
    vitrine recommend --users users.txt --k 20 --out recs.parquet      (batch, same code path)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vitrine.errors import InvalidInput
from vitrine.options import DataDirOption, JsonOption, data_dir, print_json

if TYPE_CHECKING:
    from vitrine.cli import Groups

out = Console()
err = Console(stderr=True)

# Loopback by default: the service has no authentication, so exposing it is an explicit choice.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Users scored per `recommend_batch` call in batch mode: big enough to amortise the tower pass and the
# LightGBM call, small enough that one chunk's features (users x candidates x 31 floats) stay ~100 MB.
BATCH_CHUNK = 2_000

OnlineOption = Annotated[
    str, typer.Option("--online", help="Online store for user and item features: sqlite (embedded) or redis ($VITRINE_REDIS).")
]


def _online(value: str) -> Literal["sqlite", "redis"]:
    if value not in ("sqlite", "redis"):
        raise InvalidInput(f"--online: {value!r} is not sqlite or redis")
    return value  # type: ignore[return-value]


def serve_command(
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes the service to the network.")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = DEFAULT_PORT,
    workers: Annotated[int, typer.Option(help="Worker processes (about one per core; each loads the models).", min=1, max=64)] = 1,
    online: OnlineOption = "sqlite",
    alias: Annotated[str, typer.Option(help="Registry alias of the models to serve.")] = "champion",
    data_dir_option: DataDirOption = None,
) -> None:
    """Serve recommendations, search and similar items over HTTP (FastAPI + uvicorn)."""
    from ranking.service import ServiceConfig, serve

    config = ServiceConfig(data_dir=data_dir(data_dir_option).root, online=_online(online), alias=alias)
    err.print(f"serving on http://{host}:{port} (docs at /docs, metrics at /metrics)")
    serve(host, port, workers, config)


def read_user_file(path: Path) -> list[str]:
    """User ids from a text file (one per line), a CSV/Parquet file with a `user_id` column.

    Raises:
        InvalidInput: the file is missing, empty, or has no `user_id` column.
    """
    import pandas as pd

    if not path.is_file():
        raise InvalidInput(f"--users {path}: no such file")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=str)
    else:
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        frame = pd.DataFrame({"user_id": ids})
    if "user_id" not in frame.columns:
        raise InvalidInput(f"--users {path}: no user_id column (columns: {list(frame.columns)})")
    empty = frame["user_id"].isna() | (frame["user_id"].astype(str).str.strip() == "")
    if empty.any():  # a row without an id is a broken export, not a user to skip silently
        rows = (frame.index[empty][:5] + 1).tolist()
        raise InvalidInput(f"--users {path}: {int(empty.sum())} rows without a user_id (rows {rows}...)")
    ids = frame["user_id"].astype(str).tolist()
    if not ids:
        raise InvalidInput(f"--users {path}: no user ids")
    return ids


def recommend_command(
    user_ids: Annotated[Optional[list[str]], typer.Argument(help="User ids.", show_default=False)] = None,
    # The upper bound is ranking.recommender.MAX_K, checked by the recommender (imported lazily: CLI start-up).
    k: Annotated[int, typer.Option("--k", help="Items per user (capped by the recommender's MAX_K).", min=1)] = 20,
    category: Annotated[Optional[str], typer.Option(help="Only items of this category.")] = None,
    include_purchased: Annotated[bool, typer.Option("--include-purchased", help="Keep items the user already bought.")] = False,
    users: Annotated[Optional[Path], typer.Option("--users", help="Batch mode: file of user ids (txt, csv or parquet).")] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Batch mode: write recommendations here (parquet).")] = None,
    online: OnlineOption = "sqlite",
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
    recommender = Recommender.from_data(data, online=_online(online))
    if users is not None:
        assert out_path is not None
        summary = recommend_to_file(recommender, read_user_file(users), k, out_path, exclude_purchased=not include_purchased, category=category)
        if as_json:
            print_json(summary)
        else:
            err.print(f"{summary['users']} users, {summary['rows']} rows -> {out_path} ({summary['users_per_second']:.0f} users/s)")
        return
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


def recommend_to_file(
    recommender: Any, user_ids: list[str], k: int, path: Path, *, exclude_purchased: bool = True, category: str | None = None
) -> dict[str, Any]:
    """Score `user_ids` in chunks through `recommend_batch` and write one row per (user, rank) to Parquet.

    Columns: user_id, rank (1 = best), item_id, score, retriever_score, source, cold_start, degraded.
    Returns counts and throughput.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ranking.recommender import check_id

    bad = [u for u in user_ids if not _valid(check_id, u)]
    if bad:
        raise InvalidInput(f"users file: {len(bad)} malformed ids, e.g. {bad[0][:80]!r}")
    started = time.perf_counter()
    columns: dict[str, list[Any]] = {name: [] for name in ("user_id", "rank", "item_id", "score", "retriever_score", "source", "cold_start", "degraded")}
    for start in range(0, len(user_ids), BATCH_CHUNK):
        for result in recommender.recommend_batch(user_ids[start : start + BATCH_CHUNK], k, exclude_purchased=exclude_purchased, category=category):
            for rank, rec in enumerate(result, 1):
                columns["user_id"].append(result.user_id)
                columns["rank"].append(rank)
                columns["item_id"].append(rec.item_id)
                columns["score"].append(rec.score)
                columns["retriever_score"].append(rec.retriever_score)
                columns["source"].append(rec.source)
                columns["cold_start"].append(result.cold_start)
                columns["degraded"].append(result.degraded)
    seconds = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return {
        "users": len(user_ids),
        "rows": len(columns["user_id"]),
        "path": str(path),
        "seconds": round(seconds, 3),
        # Rounded, and 0.0 for an unmeasurably short run: Infinity is not valid JSON.
        "users_per_second": round(len(user_ids) / seconds, 1) if seconds > 0 else 0.0,
        "versions": recommender.bundle.versions,
    }


def _valid(check: Any, value: str) -> bool:
    try:
        check(value)
    except InvalidInput:
        return False
    return True


def register(cli: "Groups") -> None:
    """Add this stage's commands to the `vitrine` CLI."""
    cli.root.command("serve")(serve_command)
    cli.root.command("recommend")(recommend_command)
