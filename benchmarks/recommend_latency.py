"""In-process latency of `Recommender.recommend` with a per-stage breakdown, and batch throughput. Prints JSON.

    python benchmarks/recommend_latency.py --data-dir /data/scale --requests 5000 --json
    python benchmarks/recommend_latency.py --data-dir /tmp/shop --prepare --users 300 --items 120 --days 20

The data dir must hold a served shop: the canonical shop, Feast features materialized into the
online store, and `vitrine-retriever@champion` / `vitrine-ranker@champion` in its MLflow registry.
`--prepare` makes one when the dir has no models: `generate_shop` + `ingest` + the training pipeline
(`training.pipeline.run_pipeline`, which embeds, builds features, materializes, trains and promotes).
The benchmark scale of the issue is `--users 1000000 --items 100000` (hours to prepare on 2 cores).

Serving runs as it does in `vitrine serve`: torch with one thread, LightGBM with one thread, the
online store chosen by `--online`. Requests are one user each, sequential, after a warm-up; users
are drawn from users.parquet (mostly known users) plus a share of unknown ids (cold start).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Share of requests for users the shop has never seen (the cold-start path is part of real traffic).
UNKNOWN_SHARE = 0.05
WARMUP_REQUESTS = 200
STAGES = ("features", "retrieve", "rank_features", "score", "filter")


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    if len(array) == 0:
        return {}
    return {
        "p50": round(float(np.percentile(array, 50)), 3),
        "p90": round(float(np.percentile(array, 90)), 3),
        "p99": round(float(np.percentile(array, 99)), 3),
        "max": round(float(array.max()), 3),
        "mean": round(float(array.mean()), 3),
    }


def has_models(data: Any) -> bool:
    import mlflow

    from vitrine.tracking import CHAMPION_ALIAS, RANKER_MODEL, RETRIEVER_MODEL, configure

    if not (data.mlflow / "mlflow.db").exists() and not os.environ.get("MLFLOW_TRACKING_URI"):
        return False
    configure(data)
    client = mlflow.MlflowClient()
    try:
        client.get_model_version_by_alias(RETRIEVER_MODEL, CHAMPION_ALIAS)
        client.get_model_version_by_alias(RANKER_MODEL, CHAMPION_ALIAS)
    except Exception:
        return False
    return True


def prepare(data: Any, users: int, items: int, days: int) -> dict[str, Any]:
    """Generate a shop of the given size and run the training pipeline on it (see the module docstring)."""
    from datetime import datetime, timedelta, timezone

    from training.pipeline import PipelineConfig, run_pipeline
    from vitrine.shop.generate import generate_shop
    from vitrine.shop.ingest import ingest
    from vitrine.shop.spec import DEMO, SCALE

    started = time.perf_counter()
    base = SCALE if users >= SCALE.users else DEMO
    # Events end today so that online features are fresh with respect to the views' ttl.
    today = datetime.now(timezone.utc).date()
    spec = replace(base, users=users, items=items, days=days, start=today - timedelta(days=days))
    generate_shop(data, spec, progress=False)
    ingest(data)
    result = run_pipeline(data, PipelineConfig(progress=False))
    return {"seconds": round(time.perf_counter() - started, 1), "pipeline": str(getattr(result, "status", "done"))}


def request_users(data: Any, n: int, seed: int) -> list[str]:
    from vitrine.shop.store import read_events, read_users

    rng = np.random.default_rng(seed)
    known = read_users(data)["user_id"].astype(str).to_numpy()
    if not len(known):  # an order-only shop (the Amazon sets) has no user table: its buyers are the users
        known = read_events(data, columns=["user_id"])["user_id"].astype(str).unique()
    picked = rng.choice(known, size=n, replace=True).tolist()
    for position in rng.choice(n, size=int(n * UNKNOWN_SHARE), replace=False):
        picked[position] = f"U-unknown-{position}"
    return picked


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ranking.recommender import Recommender, serving_threads
    from vitrine.paths import DataDir

    serving_threads()
    data = DataDir.resolve(args.data_dir)
    report: dict[str, Any] = {"data_dir": str(data.root)}
    if not has_models(data):
        if not args.prepare:
            raise SystemExit(f"{data.root}: no models @champion; pass --prepare to build a shop there")
        report["prepare"] = prepare(data, args.users, args.items, args.days)
    started = time.perf_counter()
    recommender = Recommender.from_data(data, online=args.online, candidates=args.candidates)
    report["load_seconds"] = round(time.perf_counter() - started, 2)
    report["catalog_items"] = len(recommender.bundle.items)
    report["index_items"] = len(recommender.bundle.retriever.item_ids)
    report["versions"] = recommender.bundle.versions
    report.update({"explain": args.explain, "candidates": args.candidates, "k": args.k, "online": args.online, "torch_threads": torch.get_num_threads()})

    users = request_users(data, args.requests + WARMUP_REQUESTS, args.seed)
    for user in users[:WARMUP_REQUESTS]:
        recommender.recommend(user, args.k, explain=args.explain)
    totals: list[float] = []
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    cold = degraded = short = 0
    for user in users[WARMUP_REQUESTS:]:
        began = time.perf_counter()
        result = recommender.recommend(user, args.k, explain=args.explain)
        totals.append((time.perf_counter() - began) * 1000.0)
        for stage in STAGES:
            stages[stage].append(result.timings_ms.get(stage, 0.0))
        cold += result.cold_start
        degraded += result.degraded
        short += len(result) < args.k
    report["requests"] = len(totals)
    report["latency_ms"] = percentiles(totals)
    report["stage_ms"] = {stage: percentiles(values) for stage, values in stages.items()}
    report["cold_start_share"] = round(cold / max(len(totals), 1), 4)
    report["degraded"] = degraded
    report["short_lists"] = short

    report["load_average_1m"] = os.getloadavg()[0]
    report["cpu_count"] = os.cpu_count()
    if not args.batch_users:  # --batch-users 0: the requests alone
        return report
    # Batch as `vitrine recommend --users --out --processes N` runs it: shards in N processes, one file.
    from ranking.batch import recommend_users_to_file

    del recommender  # the batch processes load their own models; free this one's memory first
    batch_users = request_users(data, args.batch_users, args.seed + 1)
    with tempfile.TemporaryDirectory() as tmp:
        batch = recommend_users_to_file(data, batch_users, args.k, Path(tmp) / "recs.parquet", processes=args.batch_processes, online=args.online)
    report["batch"] = {key: batch[key] for key in ("users", "rows", "processes", "seconds", "users_per_second", "load_seconds", "wall_seconds")}
    report["load_average_1m"] = os.getloadavg()[0]
    report["cpu_count"] = os.cpu_count()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="a served shop (or where --prepare builds one)")
    parser.add_argument("--prepare", action="store_true", help="build the shop and models when the dir has none")
    parser.add_argument("--users", type=int, default=1_000_000, help="--prepare: users (issue scale: 1M)")
    parser.add_argument("--items", type=int, default=100_000, help="--prepare: items (issue scale: 100k)")
    parser.add_argument("--days", type=int, default=60, help="--prepare: days of events")
    parser.add_argument("--online", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--requests", type=int, default=3000, help="timed requests after the warm-up")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--batch-users", type=int, default=20_000, help="users for the batch throughput figure (0: none)")
    parser.add_argument("--batch-processes", type=int, default=os.cpu_count() or 1, help="batch worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--explain", action=argparse.BooleanOptionalAction, default=True,
        help="attach reasons (path contributions), as recommend() does by default (--no-explain: what a client skipping them pays)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON only (the default output is JSON too)")
    args = parser.parse_args()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
