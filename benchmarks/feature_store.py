"""Feature store benchmark: build, materialize into Redis, Redis memory, online read latency, PIT join.

Synthesises a bare shop (users, items with category/brand/price, a session-shaped event log without
session ids, heavy-tailed user activity, and 64-d item vectors) unless `--data-dir` already holds one, then measures:

- `features build` (all snapshot days),
- `feast materialize` of every view into Redis (a dedicated db, flushed first and after),
- Redis memory per million users (delta of used_memory across the user views),
- online read p50/p99: one user's retriever user features; 500 items' ranker features,
- `get_historical_features` for `--pit-rows` entity rows (the offline store choice).

    .venv/bin/python benchmarks/feature_store.py --users 1000000 --items 100000 --events 20000000 --json

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from feature_repo import store as feature_store  # noqa: E402
from feature_repo.snapshots.build import build  # noqa: E402
from vitrine.paths import DataDir  # noqa: E402
from vitrine.shop.contract import EVENT_TYPES  # noqa: E402

# Event mix of a typical shop funnel (view, click, add_to_cart, purchase).
EVENT_MIX = (0.70, 0.20, 0.07, 0.03)
# Mean events per session: a session is one user on one day.
EVENTS_PER_SESSION = 5
CATEGORIES, BRANDS = 50, 2000
START = pd.Timestamp("2026-01-01", tz="UTC")


def synthesise(data: DataDir, users: int, items: int, events: int, days: int, dim: int, seed: int = 0) -> None:
    """Write items, a partitioned event log and item vectors in the shop's canonical layout."""
    rng = np.random.default_rng(seed)
    item_ids = np.char.add("I", np.char.zfill(np.arange(items).astype(str), 7)).astype(object)
    user_ids = np.char.add("U", np.char.zfill(np.arange(users).astype(str), 8)).astype(object)
    data.shop.mkdir(parents=True, exist_ok=True)
    catalog = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": "item",
            "category": np.char.add("cat", rng.integers(0, CATEGORIES, items).astype(str)).astype(object),
            "brand": np.char.add("brand", rng.integers(0, BRANDS, items).astype(str)).astype(object),
            "price": np.where(rng.random(items) < 0.05, np.nan, np.round(rng.lognormal(3.0, 0.8, items), 2)),
            "created_at": START - pd.to_timedelta(rng.integers(0, 365, items), unit="D"),
        }
    )
    catalog.to_parquet(data.items, index=False)

    sessions = events // EVENTS_PER_SESSION
    # Heavy-tailed activity: a few users have many sessions, most have one or two.
    weights = rng.pareto(1.5, users) + 1.0
    session_user = rng.choice(users, sessions, p=weights / weights.sum())
    session_day = rng.integers(0, days, sessions)
    session_start = rng.integers(0, 86_400 - 3_600, sessions)
    per_session = np.full(sessions, EVENTS_PER_SESSION)
    event_session = np.repeat(np.arange(sessions), per_session)
    n = len(event_session)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    event_item = rng.choice(items, n, p=popularity / popularity.sum())
    kind = rng.choice(len(EVENT_TYPES), n, p=EVENT_MIX)
    seconds = session_day[event_session] * 86_400 + session_start[event_session] + rng.integers(0, 3_600, n)
    stamp = START.value + seconds.astype(np.int64) * 1_000_000_000
    day_of_event = session_day[event_session]
    data.events.mkdir(parents=True, exist_ok=True)
    for day in range(days):
        rows = np.flatnonzero(day_of_event == day)
        rows = rows[np.argsort(stamp[rows], kind="stable")]
        table = pa.table(
            {
                "user_id": pa.array(user_ids[session_user[event_session[rows]]], type=pa.string()),
                "item_id": pa.array(item_ids[event_item[rows]], type=pa.string()),
                "event_type": pa.array(np.asarray(EVENT_TYPES, dtype=object)[kind[rows]], type=pa.string()),
                "timestamp": pa.array(stamp[rows], type=pa.timestamp("ns", tz="UTC")),
                "quantity": pa.array(np.ones(len(rows))),
                "price": pa.nulls(len(rows), pa.float64()),
            }
        )
        folder = data.events / f"event_date={(START + pd.Timedelta(days=day)).strftime('%Y-%m-%d')}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-0.parquet")

    data.embeddings.mkdir(parents=True, exist_ok=True)
    vectors = rng.standard_normal((items, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pq.write_table(
        pa.table(
            {
                "item_id": pa.array(item_ids, type=pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim).cast(pa.list_(pa.float32())),
                "has_image": pa.array(rng.random(items) < 0.9),
                "model_version": pa.array(["bench-1"] * items),
                "event_timestamp": pa.array([START.value] * items, type=pa.timestamp("ns", tz="UTC")),
            }
        ),
        data.item_embeddings,
    )


def percentiles(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p99_ms": round(float(np.percentile(values, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--dim", type=int, default=64, help="item vector size")
    parser.add_argument("--data-dir", type=Path, default=None, help="existing data dir (default: a fresh temp dir)")
    parser.add_argument("--redis", default="127.0.0.1:6379,db=14", help="Feast connection string; the db is flushed")
    parser.add_argument("--pit-rows", type=int, default=200_000, help="entity rows for get_historical_features")
    parser.add_argument("--reads", type=int, default=200, help="online reads per latency figure")
    parser.add_argument("--json", action="store_true", help="print JSON only (the default output anyway)")
    args = parser.parse_args()

    os.environ[feature_store.REDIS_ENV] = args.redis
    temp = None if args.data_dir else tempfile.mkdtemp(prefix="vitrine-bench-")
    data = DataDir.resolve(args.data_dir or temp)
    result: dict[str, object] = {"users": args.users, "items": args.items, "events": args.events, "days": args.days, "dim": args.dim}
    try:
        if not data.events.exists():
            began = time.perf_counter()
            synthesise(data, args.users, args.items, args.events, args.days, args.dim)
            result["synthesise_s"] = round(time.perf_counter() - began, 1)

        began = time.perf_counter()
        report = build(data)
        result["build_s"] = round(time.perf_counter() - began, 1)
        result["build"] = report.__dict__

        import redis

        store = feature_store.open_store(data, "redis")
        client = redis.Redis.from_url(_redis_url(args.redis))
        client.flushdb()
        with redirect_stdout(sys.stderr):
            feature_store.apply(data, "redis")
            end = START + pd.Timedelta(days=args.days + 2)
            began = time.perf_counter()
            items_stats = feature_store.materialize(data, START - pd.Timedelta(days=1), end, "redis", views=["item_stats", "item_embedding"])
            memory_items = int(client.info("memory")["used_memory"])
            users_stats = feature_store.materialize(data, START - pd.Timedelta(days=1), end, "redis", views=["user_stats", "user_recent_items"])
            result["materialize_s"] = round(time.perf_counter() - began, 1)
        memory_users = int(client.info("memory")["used_memory"])
        users_online = len(store.get_feature_view("user_stats").entities) and _count_users(data)
        result["materialize_views_s"] = {**items_stats["views"], **users_stats["views"]}
        result["redis_keys"] = int(client.dbsize())
        result["redis_mb_per_million_users"] = round((memory_users - memory_items) / max(users_online, 1) * 1e6 / 2**20, 1)
        result["redis_used_mb"] = round(memory_users / 2**20, 1)

        users = pd.read_parquet(data.features / "user_stats", columns=["user_id"])["user_id"].unique()
        items = pd.read_parquet(data.items, columns=["item_id"])["item_id"].to_numpy()
        rng = np.random.default_rng(1)
        store = feature_store.open_store(data, "redis")
        user_refs = [f"user_stats:{f.name}" for f in store.get_feature_view("user_stats").features] + ["user_recent_items:recent_item_ids"]
        ranker = store.get_feature_service("ranker_v1")
        # The ranker's item side: one request scores 500 candidates of one user, whose own
        # features are the single-user read above.
        ranker_item_refs = [f"{p.name}:{f.name}" for p in ranker.feature_view_projections if p.name.startswith("item") for f in p.features]
        one_user = []
        for user in rng.choice(users, args.reads):
            began = time.perf_counter()
            store.get_online_features(features=user_refs, entity_rows=[{"user_id": str(user)}]).to_dict()
            one_user.append(time.perf_counter() - began)
        result["online_one_user"] = percentiles(one_user[5:])
        many_items = []
        for user in rng.choice(users, max(args.reads // 4, 20)):
            chosen = [str(i) for i in rng.choice(items, 500, replace=False)]
            began = time.perf_counter()
            store.get_online_features(features=ranker_item_refs, entity_rows={"item_id": chosen}).to_dict()
            many_items.append(time.perf_counter() - began)
        result["online_500_items_ranker"] = percentiles(many_items[2:])

        if args.pit_rows:
            stamps = START + pd.to_timedelta(rng.integers(1, args.days, args.pit_rows), unit="D") + pd.to_timedelta(
                rng.integers(0, 86_400, args.pit_rows), unit="s"
            )
            entity = pd.DataFrame(
                {"user_id": rng.choice(users, args.pit_rows).astype(str), "item_id": rng.choice(items, args.pit_rows).astype(str), "event_timestamp": stamps}
            )
            began = time.perf_counter()
            frame = feature_store.historical_features(data, entity, "ranker")
            result["historical_ranker_s"] = round(time.perf_counter() - began, 1)
            result["historical_rows"] = len(frame)
        client.flushdb()
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    print(json.dumps(result, indent=2))


def _count_users(data: DataDir) -> int:
    return int(pd.read_parquet(data.features / "user_stats", columns=["user_id"])["user_id"].nunique())


def _redis_url(connection: str) -> str:
    host_port, *params = connection.split(",")
    options = dict(p.split("=", 1) for p in params)
    return f"redis://{host_port}/{options.get('db', 0)}"


if __name__ == "__main__":
    main()
