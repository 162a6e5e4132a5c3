"""Batch recommendations to a Parquet file (`vitrine recommend --users FILE --out recs.parquet`).

The same `Recommender.recommend_batch` as the service, in chunks. Its Python parts (feature
building, filtering) hold the GIL, so using more than one core means more than one process:
`processes=N` splits the users into N contiguous shards, each scored by its own process with its
own models (loaded by the same registry alias), and concatenates their parts in input order. The
parts must come from one model version; if the champion moved while the shards loaded, the batch
fails rather than mix two versions in one file. `as_of` (a past moment to replay) reaches every
process, so all shards judge feature age at the same moment; the summary names the views that are
older than their ttl at it (`stale_features`), and each row carries its answer's `degraded`/`reason`.

Example:
    summary = recommend_users_to_file(DataDir.resolve(), read_user_file(Path("users.txt")), 20, Path("recs.parquet"), processes=2)
"""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from vitrine.errors import InvalidInput, ModelUnavailable
from vitrine.options import OnlineKind
from vitrine.paths import DataDir

# Users scored per `recommend_batch` call: big enough to amortise the tower pass and the LightGBM
# call, small enough that one chunk's features (users x candidates x 31 floats) stay ~100 MB.
BATCH_CHUNK = 2_000
COLUMNS = ("user_id", "rank", "item_id", "score", "retriever_score", "source", "cold_start", "degraded", "reason")
# Arrow type of each column, by name. Explicit, because a shard whose answers are all cold start (or
# none degraded) would otherwise infer a null column and not concatenate with the other shards'.
COLUMN_TYPES = ("string", "int64", "string", "float64", "float64", "string", "bool", "bool", "string")


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


def check_user_ids(user_ids: list[str]) -> None:
    """InvalidInput naming the first malformed id and how many there are."""
    from ranking.recommender import check_id

    bad = []
    for user in user_ids:
        try:
            check_id(user)
        except InvalidInput:
            bad.append(user)
    if bad:
        raise InvalidInput(f"users file: {len(bad)} malformed ids, e.g. {bad[0][:80]!r}")


def recommend_to_file(
    recommender: Any, user_ids: list[str], k: int, path: Path, *, exclude_purchased: bool = True, category: str | None = None
) -> dict[str, Any]:
    """Score `user_ids` in chunks through `recommend_batch` and write one row per (user, rank) to Parquet.

    Columns: COLUMNS (rank 1 = best). Returns counts, throughput, the model versions, the moment
    feature age was judged at (`as_of`, null for the wall clock) and the views stale at it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_user_ids(user_ids)
    started = time.perf_counter()
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
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
                columns["reason"].append(result.reason)
    seconds = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([(name, pa.type_for_alias(kind)) for name, kind in zip(COLUMNS, COLUMN_TYPES)])
    pq.write_table(pa.table(columns, schema=schema), path)
    return {
        "users": len(user_ids),
        "rows": len(columns["user_id"]),
        "path": str(path),
        "seconds": round(seconds, 3),
        # Rounded, and 0.0 for an unmeasurably short run: Infinity is not valid JSON.
        "users_per_second": round(len(user_ids) / seconds, 1) if seconds > 0 else 0.0,
        "versions": recommender.bundle.versions,
        "as_of": recommender.as_of.isoformat() if recommender.as_of else None,
        "stale_features": [view.to_dict() for view in recommender.stale_views()],
    }


def _score_shard(
    root: str, online: OnlineKind, user_ids: list[str], k: int, path: str, exclude_purchased: bool, category: str | None, as_of: datetime | None
) -> dict[str, Any]:
    """One shard in a worker process: load the models as serving does, score, write the part."""
    from ranking.recommender import Recommender, serving_threads

    serving_threads()
    started = time.perf_counter()
    recommender = Recommender.from_data(DataDir.resolve(root), online=online, as_of=as_of)
    loaded = time.perf_counter() - started
    summary = recommend_to_file(recommender, user_ids, k, Path(path), exclude_purchased=exclude_purchased, category=category)
    return {**summary, "load_seconds": round(loaded, 3)}


def recommend_users_to_file(
    data: DataDir,
    user_ids: list[str],
    k: int,
    path: Path,
    *,
    processes: int = 1,
    online: OnlineKind = "sqlite",
    exclude_purchased: bool = True,
    category: str | None = None,
    as_of: datetime | None = None,
) -> dict[str, Any]:
    """`recommend_to_file` over `processes` worker processes (see the module docstring).

    `as_of` is the moment feature age is judged at in every process (None: each one's wall clock).

    `users_per_second` counts scoring only (the slowest shard's time; shards run side by side);
    `load_seconds` is the slowest model load, `wall_seconds` everything.

    Raises:
        InvalidInput: malformed ids (before any process starts).
        ModelUnavailable: the shards loaded different model versions.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_user_ids(user_ids)
    processes = max(1, min(processes, len(user_ids)))
    began = time.perf_counter()
    size = -(-len(user_ids) // processes)
    shards = [user_ids[start : start + size] for start in range(0, len(user_ids), size)]
    workdir = Path(tempfile.mkdtemp(prefix="vitrine-batch-", dir=path.parent if path.parent.exists() else None))
    try:
        parts = [workdir / f"part-{n:03d}.parquet" for n in range(len(shards))]
        # spawn, not fork: the parent may hold torch/OpenMP threads, which fork does not copy safely.
        with ProcessPoolExecutor(len(shards), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [
                pool.submit(_score_shard, str(data.root), online, shard, k, str(part), exclude_purchased, category, as_of)
                for shard, part in zip(shards, parts)
            ]
            summaries = [future.result() for future in futures]
        versions = [s["versions"] for s in summaries]
        if any(v != versions[0] for v in versions):
            raise ModelUnavailable(f"the champion changed while the batch loaded ({versions}); run it again")
        table = pa.concat_tables([pq.read_table(part) for part in parts])
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    scoring = max(s["seconds"] for s in summaries)
    # Shards read the same registry at slightly different moments: a view stale in any of them is named.
    stale: dict[str, Any] = {}
    for summary in summaries:
        for view in summary["stale_features"]:
            stale.setdefault(view["view"], view)
    return {
        "users": len(user_ids),
        "rows": table.num_rows,
        "path": str(path),
        "processes": len(shards),
        "seconds": round(scoring, 3),
        "users_per_second": round(len(user_ids) / scoring, 1) if scoring > 0 else 0.0,
        "load_seconds": max(s["load_seconds"] for s in summaries),
        "wall_seconds": round(time.perf_counter() - began, 3),
        "versions": versions[0],
        "as_of": summaries[0]["as_of"],
        "stale_features": list(stale.values()),
    }
