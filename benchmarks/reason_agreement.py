"""How far the served reasons (path contributions) agree with TreeSHAP, and what each costs. Prints JSON.

    python benchmarks/reason_agreement.py --data-dir /work/scale/data --online redis --requests 300 --json

For each request (a known user drawn from users.parquet) the served path builds the ranker's
features of its candidates, as `recommend` does; the first `--k` candidates by score are explained
both ways. Reported: the share of items whose top reason is the same feature, the mean overlap of
the top-3 sets (`REASONS_PER_ITEM`), the share whose top reason pushes the score the same way, and
milliseconds per list of k for each method (one thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.recommend_latency import percentiles, request_users
    from ranking.ranker_features import UserContext, build_features
    from ranking.recommender import REASONS_PER_ITEM, Recommender, retrieve, serving_threads, shortlist
    from vitrine.paths import DataDir

    serving_threads()
    data = DataDir.resolve(args.data_dir)
    recommender = Recommender.from_data(data, online=args.online, candidates=args.candidates)
    bundle, ranker = recommender.bundle, recommender.bundle.reranker
    users = [u for u in request_users(data, args.requests * 2, args.seed) if not u.startswith("U-unknown")][: args.requests]
    rows = recommender.users.read(users) if recommender.users is not None else [None] * len(users)
    top1 = top3 = same_sign = items = 0
    path_ms: list[float] = []
    shap_ms: list[float] = []
    for user, row in zip(users, rows):
        if row is None:
            continue
        found = retrieve(bundle, [{**row, "user_id": user}], args.candidates)[0]
        ids, scores, table_rows = shortlist(*found, frozenset(), args.candidates)
        matrix = build_features(bundle.items.table, UserContext.from_features(row), ids, scores, table_rows)
        listed = matrix[np.argsort(-ranker.relevance(matrix), kind="stable")[: args.k]]
        began = time.perf_counter()
        paths = ranker.contributions(listed)
        path_ms.append((time.perf_counter() - began) * 1000.0)
        began = time.perf_counter()
        shap = ranker.booster.predict(listed, pred_contrib=True, num_threads=1)[:, :-1]
        shap_ms.append((time.perf_counter() - began) * 1000.0)
        for p, s in zip(paths, shap):
            p_top, s_top = np.argsort(-np.abs(p))[:REASONS_PER_ITEM], np.argsort(-np.abs(s))[:REASONS_PER_ITEM]
            top1 += p_top[0] == s_top[0]
            top3 += len(set(p_top) & set(s_top)) / REASONS_PER_ITEM
            same_sign += np.sign(p[p_top[0]]) == np.sign(s[p_top[0]])
            items += 1
    return {
        "data_dir": str(data.root),
        "ranker": ranker.version,
        "trees": ranker.booster.num_trees(),
        "requests": len(path_ms),
        "items": items,
        "k": args.k,
        "top1_agreement": round(top1 / max(items, 1), 4),
        "top3_overlap": round(top3 / max(items, 1), 4),
        "top1_same_sign": round(same_sign / max(items, 1), 4),
        "path_ms_per_list": percentiles(path_ms),
        "treeshap_ms_per_list": percentiles(shap_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--online", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    args = parser.parse_args()
    report = run(args)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
