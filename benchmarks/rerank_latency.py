"""Rerank latency: features + LightGBM scoring of 500 candidates for one request, on one core.

Measures, per request, `build_features` (the ranker's one feature builder) and `Reranker.score`
(LightGBM predict with num_threads=1), separately and together; prints p50/p99 in ms as JSON.

One core: LightGBM predicts with `SERVING_THREADS` = 1 and numpy's BLAS is limited to one thread
(threadpoolctl), as in serving. For a few hundred rows, OpenMP's thread start-up and
synchronisation cost more than a second core saves, and the service runs requests in parallel
in workers, so per-request threads would only compete with each other (and with other processes
on a shared machine, where a thread that waits for a busy core stalls the whole call).

The model is either a saved ranker (`--model-dir`, e.g. data/models/ranker/<run id>) or, by
default, one trained here on synthetic rows with the production training config (same tree count
bound, leaves and feature count), so the benchmark runs without a shop.

    python benchmarks/rerank_latency.py --json
    python benchmarks/rerank_latency.py --model-dir data/models/ranker/<run> --candidates 500 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ranking.ranker_features import FEATURE_NAMES, ItemTable, UserContext, build_features  # noqa: E402
from ranking.reranker import SERVING_THREADS, RankerMetadata, Reranker, save_ranker  # noqa: E402

# The goal for scoring 500 candidates on one core.
GOAL_MS = 2.0


def synthetic_items(n_items: int, dim: int, seed: int) -> ItemTable:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "item_id": [f"I{i:06d}" for i in range(n_items)],
            "price": np.where(rng.random(n_items) < 0.05, np.nan, rng.lognormal(3.5, 0.8, n_items)),
            "price_band": rng.integers(0, 5, n_items),
            "ctr_7d": rng.beta(2, 30, n_items), "ctr_30d": rng.beta(2, 30, n_items),
            "cart_rate_7d": rng.beta(1, 60, n_items), "cart_rate_30d": rng.beta(1, 60, n_items),
            "cvr_7d": rng.beta(1, 120, n_items), "cvr_30d": rng.beta(1, 120, n_items),
            "views_30d": rng.poisson(40, n_items), "purchases_30d": rng.poisson(2, n_items),
            "popularity_rank": rng.permutation(n_items) + 1, "trend_7d_30d": rng.lognormal(0, 0.3, n_items),
            "age_days": rng.uniform(0, 400, n_items),
            "category": rng.choice([f"c{i}" for i in range(12)], n_items),
            "brand": rng.choice([f"b{i}" for i in range(400)], n_items),
            "embedding": list(rng.normal(size=(n_items, dim)).astype(np.float32)),
        }
    )  # fmt: skip
    return ItemTable.from_frame(frame)


def synthetic_model(directory: Path, rounds: int, leaves: int, seed: int) -> Path:
    """A LambdaRank booster of the production shape, trained on random rows with a planted signal."""
    import lightgbm

    from training.ranker_dataset import LABEL_GAIN

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40_000, len(FEATURE_NAMES))).astype(np.float32)
    utility = X[:, :8].sum(axis=1) + rng.normal(size=len(X))
    y = np.digitize(utility, np.quantile(utility, [0.9, 0.96, 0.99]))
    params = {"objective": "lambdarank", "label_gain": list(LABEL_GAIN), "num_leaves": leaves, "min_data_in_leaf": 20,
              "learning_rate": 0.05, "verbosity": -1, "num_threads": 2, "seed": seed}  # fmt: skip
    dataset = lightgbm.Dataset(X, label=y, group=np.full(len(X) // 200, 200), feature_name=list(FEATURE_NAMES))
    booster = lightgbm.train(params, dataset, num_boost_round=rounds)
    return save_ranker(booster, directory, RankerMetadata(FEATURE_NAMES, LABEL_GAIN, best_iteration=rounds))


def percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(values, 50)), 4), "p99_ms": round(float(np.percentile(values, 99)), 4),
            "mean_ms": round(float(values.mean()), 4)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--items", type=int, default=100_000, help="catalog size of the synthetic item table")
    parser.add_argument("--dim", type=int, default=256, help="item vector width")
    parser.add_argument("--model-dir", type=Path, default=None, help="a saved ranker (default: a synthetic one)")
    parser.add_argument("--rounds", type=int, default=200, help="trees of the synthetic model")
    parser.add_argument("--leaves", type=int, default=31, help="leaves per tree of the synthetic model")
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()

    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # numpy's BLAS on one core for the whole run, as in serving
    rng = np.random.default_rng(args.seed)
    items = synthetic_items(args.items, args.dim, args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.model_dir or synthetic_model(Path(scratch) / "ranker", args.rounds, args.leaves, args.seed)
        ranker = Reranker.load(directory)
    trees = ranker.booster.num_trees()

    requests = []
    for _ in range(64):
        rows = rng.choice(len(items), args.candidates, replace=False)
        user = UserContext.from_features({
            "recent_item_ids": list(items.item_ids[rng.integers(0, len(items), 20)]),
            "avg_price_paid": 35.0, "max_price_paid": 120.0, "events_30d": 40, "purchase_rate_30d": 0.02,
            "affinity_categories": ["c1", "c2", "c3"], "affinity_category_shares": [0.5, 0.3, 0.2],
            "affinity_brands": ["b1", "b7"], "affinity_brand_shares": [0.6, 0.4], "top_category": "c1",
        })  # fmt: skip
        requests.append((user, items.item_ids[rows], np.sort(rng.random(args.candidates))[::-1].astype(np.float32)))

    features_s, score_s, total_s, cpu_s = [], [], [], []
    for i in range(args.requests + 50):
        user, ids, scores = requests[i % len(requests)]
        cpu = time.thread_time()
        start = time.perf_counter()
        X = build_features(items, user, ids, scores)
        built = time.perf_counter()
        ranker.score(X)
        done = time.perf_counter()
        cpu_done = time.thread_time()
        if i >= 50:  # warm-up
            features_s.append(built - start)
            score_s.append(done - built)
            total_s.append(done - start)
            cpu_s.append(cpu_done - cpu)
    report = {
        "candidates": args.candidates,
        "catalog_items": len(items),
        "vector_dim": args.dim,
        "features": len(FEATURE_NAMES),
        "trees": trees,
        "model": str(args.model_dir) if args.model_dir else f"synthetic lambdarank, {args.rounds} rounds x {args.leaves} leaves",
        "lightgbm_threads": SERVING_THREADS,
        "requests": args.requests,
        "build_features": percentiles(features_s),
        "lightgbm_score": percentiles(score_s),
        "total": percentiles(total_s),
        # CPU time of the calling thread: what the request costs one core, without time spent
        # waiting for a core on a shared machine (wall-clock above includes that wait).
        "total_cpu": percentiles(cpu_s),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "goal_ms": GOAL_MS,
    }
    report["meets_goal_p50"] = report["total"]["p50_ms"] < GOAL_MS
    report["meets_goal_p99"] = report["total"]["p99_ms"] < GOAL_MS
    report["meets_goal_cpu_p99"] = report["total_cpu"]["p99_ms"] < GOAL_MS
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
