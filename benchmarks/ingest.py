"""Benchmark: `ingest` on a large events table; prints JSON.

Writes a source in the contract (ITEMS items, EVENTS events as Parquet parts of PART_ROWS rows,
one bad row in BAD_EVERY), runs `ingest` on it and reports seconds, rows per second and peak memory.
Images are left out: they are a per-item cost measured by the generator's benchmark.

    .venv/bin/python benchmarks/ingest.py --events 2000000 [--csv] [--dir /tmp/vitrine-ingest-bench]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from vitrine.paths import DataDir
from vitrine.shop.contract import EVENT_TYPES
from vitrine.shop.ingest import ingest

ITEMS = 100_000  # the --scale shop's catalogue
USERS = 1_000_000
PART_ROWS = 1_000_000  # events per source file, as an exporter would split them
BAD_EVERY = 1_000  # one row in this many has an unknown event type or item


def write_source(source: Path, events: int, csv: bool, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (source / "events").mkdir(parents=True)
    item_ids = np.char.add("I", np.arange(ITEMS).astype(str))
    pd.DataFrame({"item_id": item_ids, "title": np.char.add("Item ", item_ids), "price": rng.uniform(5, 200, ITEMS)}).to_parquet(
        source / "items.parquet", index=False
    )
    start = pd.Timestamp("2026-01-01", tz="UTC")
    types = np.array(EVENT_TYPES + ("bogus",))
    for part, first in enumerate(range(0, events, PART_ROWS)):
        n = min(PART_ROWS, events - first)
        kind = rng.choice(4, n, p=[0.7, 0.2, 0.07, 0.03])
        kind[rng.random(n) < 1 / (2 * BAD_EVERY)] = 4
        item = rng.integers(0, ITEMS + ITEMS // 500, n)  # a few ids beyond the catalogue: unknown items
        frame = pd.DataFrame(
            {
                "user_id": np.char.add("U", rng.integers(0, USERS, n).astype(str)),
                "item_id": np.char.add("I", item.astype(str)),
                "event_type": types[kind],
                "timestamp": start + pd.to_timedelta(np.sort(rng.integers(0, 90 * 86_400, n)), unit="s"),
                "session_id": np.char.add("S", rng.integers(0, events // 5 + 1, n).astype(str)),
                "quantity": np.ones(n),
                "price": rng.uniform(5, 200, n),
            }
        )
        if csv:
            frame.to_csv(source / "events" / f"part-{part:05d}.csv", index=False)
        else:
            frame.to_parquet(source / "events" / f"part-{part:05d}.parquet", index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--csv", action="store_true", help="write the events parts as CSV instead of Parquet")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vitrine-ingest-bench"))
    args = parser.parse_args()
    if args.dir.exists():
        shutil.rmtree(args.dir)
    source, data = args.dir / "source", DataDir.resolve(args.dir / "data")
    began = time.perf_counter()
    write_source(source, args.events, args.csv)
    written = time.perf_counter() - began

    began = time.perf_counter()
    report = ingest(data, source)
    seconds = time.perf_counter() - began
    events = report.tables["events"]
    print(json.dumps({
        "events": args.events, "format": "csv" if args.csv else "parquet",
        "ingest_s": round(seconds, 1), "events_per_s": round(events.read / seconds),
        "accepted": events.accepted, "rejected": events.rejected, "reasons": dict(events.reasons),
        "event_days": len(report.event_days), "source_write_s": round(written, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }, indent=2))
    shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
