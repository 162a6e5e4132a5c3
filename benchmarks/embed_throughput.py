"""Embedding throughput: items per second through `vitrine embed`'s path (images + text + fusion) on CPU.

Uses the data dir's trained encoder (`data/models/encoder`, or `--model`) and its catalog; repeats
the pass `--repeats` times and reports the best (least disturbed by other processes) and the median.
Also times the two towers alone and a text-search query, the latency `vitrine search` adds.

    .venv/bin/python benchmarks/embed_throughput.py --data-dir /tmp/emb-demo --threads 2 --json

The cores may be shared: the load average before the run is printed with the figures.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embeddings.catalog import ImageReport, open_image  # noqa: E402
from embeddings.encode import encode_items, image_weight_of, load_encoder, load_view  # noqa: E402
from embeddings.search import ProductSearch  # noqa: E402
from vitrine.paths import DataDir  # noqa: E402

# Search queries timed for latency (a mix of short and descriptive queries).
QUERIES = ("red leather handbag", "striped cotton t-shirt", "black ceramic mug", "lamp", "blue running shoes with dots")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default=None, help="Encoder (default: the data dir's trained one).")
    parser.add_argument("--items", type=int, default=None, help="Embed only the first N catalog items.")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the 2-core target).")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="Accepted for symmetry; output is always JSON.")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = DataDir.resolve(args.data_dir)
    load_before = os.getloadavg()
    encoder = load_encoder(data, args.model)
    view = load_view(data)
    indices = list(range(len(view.item_ids)))[: args.items]

    passes = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        vectors, report = encode_items(encoder, view, indices)
        vectors.fused(image_weight_of(encoder))
        passes.append(time.perf_counter() - started)

    texts = [view.texts[i] for i in indices]
    started = time.perf_counter()
    encoder.encode_texts(texts)
    text_seconds = time.perf_counter() - started
    pictures = [p for p in (open_image(view.image_paths[i], ImageReport()) for i in indices) if p is not None]
    started = time.perf_counter()
    if pictures:
        encoder.encode_images(pictures)
    image_seconds = time.perf_counter() - started

    latency = {}
    if data.item_embeddings.exists():
        search = ProductSearch.load(data, args.model)
        timings = []
        for query in QUERIES:
            started = time.perf_counter()
            search.search(query, k=10)
            timings.append(time.perf_counter() - started)
        cached = []
        for query in QUERIES:
            started = time.perf_counter()
            search.search(query, k=10)
            cached.append(time.perf_counter() - started)
        started = time.perf_counter()
        for item_id in search.item_ids[:100]:
            search.similar(item_id, k=10)
        similar_ms = (time.perf_counter() - started) * 1000 / min(100, len(search))
        latency = {
            "search_ms_median": round(float(np.median(timings)) * 1000, 2),
            "search_cached_query_ms_median": round(float(np.median(cached)) * 1000, 3),
            "similar_ms_mean": round(similar_ms, 3),
            "indexed_items": len(search),
        }

    n = len(indices)
    print(json.dumps({
        "items": n,
        "with_image": int(vectors.has_image.sum()),
        "model_version": encoder.model_version,
        "dim": encoder.dim,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "note": "cores shared with other processes; best pass is the least disturbed",
        "items_per_second_best": round(n / min(passes), 1),
        "items_per_second_median": round(n / float(np.median(passes)), 1),
        "text_tower_items_per_second": round(n / text_seconds, 1),
        "image_tower_items_per_second": round(len(pictures) / image_seconds, 1) if pictures else None,
        "images": report.as_dict(),
        **latency,
    }, indent=2))


if __name__ == "__main__":
    main()
