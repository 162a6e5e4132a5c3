"""Benchmark of the two-tower retriever: training throughput and serving latency, printed as JSON.

    .venv/bin/python benchmarks/retriever.py --json                       # benchmark scale
    .venv/bin/python benchmarks/retriever.py --users 20000 --items 5000   # smaller

Training: examples/s of the real DMP training step (`training.train_retriever.fit`, one process,
CPU threads as given) on synthetic encoded examples with the benchmark shop's vocabulary sizes
(1M users, 100k items); a full epoch at benchmark scale is extrapolated from that measured rate and
the number of training examples the benchmark shop yields (positive interactions per event measured
on the demo shop, times its 20M+ events). Serving: `Retriever.retrieve` for one user (user tower on
CPU + FAISS search of k=100 over 100k item vectors, HNSW beyond the exact limit), p50/p99 over many
calls, and the ANN's recall@100 against exact search. The towers are untrained (random weights):
latency does not depend on the weights, but the ANN recall of trained, clustered vectors is higher
than on these near-uniform ones.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ranking.ann import AnnConfig, ann_recall, build_index, index_kind
from ranking.retriever import Retriever, save_retriever
from ranking.retriever_inputs import ITEM_DENSE, MAX_RECENT_ITEMS, USER_DENSE, EncodedItems, EncodedUsers, InputSpec
from ranking.two_tower import TwoTowerConfig
from training.retriever_data import TrainingSet
from training.train_retriever import TrainConfig, build_model, fit

# Benchmark shop (vitrine.shop.generate.SCALE): users, items, events.
SCALE_USERS, SCALE_ITEMS, SCALE_EVENTS = 1_000_000, 100_000, 20_000_000
# Positive interactions (user, item, session) per event, measured on the demo shop (235,947 of 324,374 events).
POSITIVES_PER_EVENT = 0.73
# Width of the item vectors of the default encoder.
CONTENT_DIM = 256
CATEGORIES, BRANDS, BANDS = 40, 200, 5


def synthetic_spec(users: int, items: int) -> InputSpec:
    return InputSpec(
        users={f"U{i}": i + 1 for i in range(users)},
        items={f"I{i}": i + 1 for i in range(items)},
        categories={f"c{i}": i + 1 for i in range(CATEGORIES)},
        brands={f"b{i}": i + 1 for i in range(BRANDS)},
        price_bands={str(i): i + 1 for i in range(BANDS)},
        content_dim=CONTENT_DIM,
        dense_stats={},
    )


def synthetic_items(rng: np.random.Generator, rows: np.ndarray, items: int, content: np.ndarray) -> EncodedItems:
    return EncodedItems(
        item_idx=rows + 1,
        category=rng.integers(1, CATEGORIES + 1, len(rows)),
        brand=rng.integers(1, BRANDS + 1, len(rows)),
        price_band=rng.integers(1, BANDS + 1, len(rows)),
        dense=rng.standard_normal((len(rows), len(ITEM_DENSE))).astype(np.float32),
        content_row=rows,
        content=content,
    )


def synthetic_training_set(examples: int, users: int, items: int, seed: int = 0) -> TrainingSet:
    rng = np.random.default_rng(seed)
    content = rng.standard_normal((items, CONTENT_DIM)).astype(np.float32)
    item_rows = np.minimum(rng.zipf(1.3, examples) - 1, items - 1)  # popularity is heavy-tailed
    lengths = rng.integers(0, MAX_RECENT_ITEMS + 1, examples)
    recent = np.minimum(rng.zipf(1.3, int(lengths.sum())), items)
    encoded_users = EncodedUsers(
        user_idx=rng.integers(1, users + 1, examples),
        recent_values=recent.astype(np.int64),
        recent_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        top_category=rng.integers(0, CATEGORIES + 1, examples),
        dense=rng.standard_normal((examples, len(USER_DENSE))).astype(np.float32),
    )
    counts = np.bincount(item_rows, minlength=items).astype(np.float64)
    share = counts / counts.sum()
    return TrainingSet(
        users=encoded_users,
        items=synthetic_items(rng, item_rows, items, content),
        weights=rng.choice([1.0, 2.0, 3.0, 4.0], examples).astype(np.float32),
        item_key=item_rows.astype(np.int64),
        item_prob=share[item_rows],
        catalog=synthetic_items(rng, np.arange(items), items, content),
        catalog_prob=share,
        negative_pool=np.arange(items),
        shard=(0, 1),
        total=examples,
    )


def measure_training(examples: int, users: int, items: int, config: TrainConfig) -> dict[str, float]:
    train = synthetic_training_set(examples, users, items)
    spec = synthetic_spec(users, items)
    result = fit(train, spec, TwoTowerConfig(), replace(config, epochs=1, validation_days=0), show_progress=False)
    epoch = result.epochs[0]
    scale_examples = SCALE_EVENTS * POSITIVES_PER_EVENT
    return {
        "measured_examples": float(examples),
        "examples_per_s": epoch["examples_per_s"],
        "measured_seconds": epoch["epoch_s"],
        "benchmark_epoch_examples_estimate": scale_examples,
        "benchmark_epoch_minutes_extrapolated": scale_examples / epoch["examples_per_s"] / 60,
    }


def measure_serving(users: int, items: int, calls: int, k: int) -> dict[str, float | str]:
    rng = np.random.default_rng(1)
    spec = synthetic_spec(users, items)
    catalog = synthetic_items(rng, np.arange(items), items, rng.standard_normal((items, CONTENT_DIM)).astype(np.float32))
    torch.manual_seed(0)
    model = build_model(TwoTowerConfig(), spec, catalog).eval()
    with torch.inference_mode():
        vectors = np.concatenate(
            [model.item_vectors(catalog.batch(np.arange(s, min(s + 8192, items)))).numpy() for s in range(0, items, 8192)]
        )
    began = time.perf_counter()
    index = build_index(vectors, AnnConfig())
    build_s = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as tmp:
        save_retriever(Path(tmp) / "r", model, spec, [f"I{i}" for i in range(items)], vectors)
        retriever = Retriever.load(Path(tmp) / "r")
    features = pd.DataFrame(
        {
            "user_id": [f"U{u}" for u in rng.integers(0, users, calls)],
            "recent_item_ids": [[f"I{i}" for i in rng.integers(0, items, MAX_RECENT_ITEMS)] for _ in range(calls)],
            "top_category": "c1",
            **{name: rng.integers(0, 20, calls) for name in USER_DENSE},
        }
    )
    rows = features.to_dict("records")
    for row in rows[:20]:  # warm-up: first calls allocate
        retriever.retrieve(row["user_id"], k, user_features=row)
    tower_ms, total_ms = [], []
    for row in rows:
        began = time.perf_counter()
        vector = retriever.user_vectors([row])
        tower_ms.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        retriever.retrieve(row["user_id"], k, user_features=row)
        total_ms.append((time.perf_counter() - began) * 1000)
    queries = retriever.user_vectors(features.head(500))
    return {
        "items": float(items),
        "index": index_kind(index),
        "index_build_s": build_s,
        "user_tower_ms_p50": float(np.percentile(tower_ms, 50)),
        "user_tower_ms_p99": float(np.percentile(tower_ms, 99)),
        "retrieve_ms_p50": float(np.percentile(total_ms, 50)),
        "retrieve_ms_p99": float(np.percentile(total_ms, 99)),
        f"ann_recall_at_{k}": ann_recall(index, vectors, queries, k),
        "k": float(k),
        "dim": float(vector.shape[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=SCALE_USERS)
    parser.add_argument("--items", type=int, default=SCALE_ITEMS)
    parser.add_argument("--train-examples", type=int, default=100_000, help="Examples actually trained on (one epoch).")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # One intra-op thread, as training uses and as a serving worker should (see TrainConfig.cpu_threads).
    torch.set_num_threads(1)
    threads = torch.get_num_threads()
    report = {
        "cpu_threads": threads,
        "cpus_visible": os.cpu_count(),
        "training": measure_training(args.train_examples, args.users, args.items, TrainConfig()),
        "serving": measure_serving(args.users, args.items, args.calls, args.k),
    }
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
