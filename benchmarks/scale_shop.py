"""Prepare the benchmark-scale shop (1M users, 100k items) through the real CLI, timing every stage. Prints JSON.

    python benchmarks/scale_shop.py --data-dir /work/scale/data --json
    python benchmarks/scale_shop.py --data-dir /work/scale/data --from retriever --json   # resume

Stages, each a `vitrine` command (or torchrun) run as a subprocess, in order:

    generate     vitrine generate --scale --start <today - 60 days>   (events end yesterday, so online
                 features are fresh with respect to the views' 30-day ttl at serving time)
    encoder      vitrine train encoder --max-items 5000 --epochs 10   (a fixed sample; see below)
    embed        vitrine embed                                        (every one of the 100k items)
    features     vitrine features build
    feast        vitrine features apply + materialize --online redis
    next-item    vitrine train next-item --max-epochs N --max-users M  (the served recommender: sequence
                 tower, co-visitation, content and popular sources, reranker; the tower on a user sample)
    promote      @champion on the newest retriever and ranker: what the pipeline's promote step does
                 when there is no champion yet

`--recommender two-tower` replaces `next-item` with the two-tower pair's stages:

    retriever    python -m training.train_retriever --epochs 1 --validation-days 0 (torchrun with --processes N)
    ranker       vitrine train ranker --max-requests N   (on the candidates of the retriever @champion)

The retriever learns from all 60 days (`--history-days N` narrows the window). The encoder trains on a 5,000-item sample because its cost grows with the catalog while the
contrastive objective needs only enough pairs (on the demo shop 2,000 items suffice); `vitrine embed`
still encodes every item. Each stage's `--json` answer is kept in `<data-dir>/../scale-run/`. The
serving benchmarks then run on the prepared dir, reading the same Redis db (without it every request
reads an empty db 0 and is served as cold start: check `cold_start_share`):

    VITRINE_REDIS=127.0.0.1:6379,db=3 python benchmarks/recommend_latency.py --data-dir DIR --online redis --json
    VITRINE_REDIS=127.0.0.1:6379,db=3 python benchmarks/http_load.py --data-dir DIR --online redis --rate 200 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from vitrine.tracking import CHAMPION_ALIAS, RANKER_MODEL, RETRIEVER_MODEL

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("generate", "encoder", "embed", "features", "feast", "next-item", "retriever", "ranker", "promote")
# Stages each recommender skips.
SKIPPED = {"next-item": ("retriever", "ranker"), "two-tower": ("next-item",)}
# Redis db of the benchmark shop: apart from db 0 and from the tests' private db.
DEFAULT_REDIS = "127.0.0.1:6379,db=3"
HISTORY_DAYS = 60


def vitrine(*args: str) -> list[str]:
    return [sys.executable, "-m", "vitrine.cli", *args]


def commands(args: argparse.Namespace) -> dict[str, list[list[str]]]:
    start = (datetime.now(timezone.utc).date() - timedelta(days=HISTORY_DAYS)).isoformat()
    train = ["-m", "training.train_retriever", "--epochs", str(args.epochs), "--validation-days", str(args.validation_days)]
    if args.history_days is not None:
        train += ["--history-days", str(args.history_days)]
    if args.processes > 1:
        retriever = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.processes), *train]
    else:
        retriever = [sys.executable, *train]
    return {
        "generate": [vitrine("generate", "--scale", "--start", start, "--json")],
        "encoder": [vitrine("train", "encoder", "--max-items", str(args.encoder_items), "--epochs", "10", "--json")],
        "embed": [vitrine("embed", "--json")],
        "features": [vitrine("features", "build", "--json")],
        "feast": [vitrine("features", "apply", "--online", "redis"), vitrine("features", "materialize", "--online", "redis", "--json")],
        "next-item": [vitrine("train", "next-item", "--max-epochs", str(args.epochs), "--max-users", str(args.tower_users), "--json")],
        "retriever": [retriever],
        "ranker": [vitrine("train", "ranker", "--max-requests", str(args.ranker_requests), "--json")],
    }


def promote(data_dir: Path, names: tuple[str, ...] = (RETRIEVER_MODEL, RANKER_MODEL)) -> dict[str, Any]:
    """@champion on the newest version of each model (the first promotion of a new shop)."""
    import mlflow

    from vitrine.paths import DataDir
    from vitrine.tracking import configure

    configure(DataDir.resolve(data_dir))
    client = mlflow.MlflowClient()
    out = {}
    for name in names:
        newest = max(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
        client.set_registered_model_alias(name, CHAMPION_ALIAS, newest.version)
        out[name] = newest.version
    return out


def last_json(text: str) -> Any:
    """The JSON document a `--json` command printed (torchrun prints it as the last line)."""
    try:
        return json.loads(text)
    except ValueError:
        for line in reversed(text.strip().splitlines()):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--from", dest="first", choices=STAGES, default=STAGES[0], help="resume from this stage")
    parser.add_argument("--to", dest="last", choices=STAGES, default=STAGES[-1], help="stop after this stage")
    parser.add_argument("--processes", type=int, default=1, help="retriever training processes (>1: torchrun)")
    parser.add_argument("--history-days", type=int, default=None, help="retriever training window in days (default: the whole log)")
    parser.add_argument("--validation-days", type=int, default=0, help="retriever per-epoch validation days (0: none)")
    parser.add_argument("--recommender", choices=tuple(SKIPPED), default="next-item")
    parser.add_argument("--epochs", type=int, default=1, help="retriever epochs (next-item: most epochs while choosing)")
    parser.add_argument("--tower-users", type=int, default=100_000, help="users the next-item tower trains on (a sample)")
    parser.add_argument("--encoder-items", type=int, default=5000)
    parser.add_argument("--ranker-requests", type=int, default=20000)
    parser.add_argument("--redis", default=os.environ.get("VITRINE_REDIS", DEFAULT_REDIS))
    parser.add_argument("--json", action="store_true", help="print JSON only (the default output is JSON too)")
    args = parser.parse_args()

    data_dir = args.data_dir.resolve()
    reports = data_dir.parent / "scale-run"
    reports.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VITRINE_DATA_DIR": str(data_dir), "VITRINE_REDIS": args.redis, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    plan = commands(args)
    chosen = [s for s in STAGES[STAGES.index(args.first) : STAGES.index(args.last) + 1] if s not in SKIPPED[args.recommender]]
    summary: dict[str, Any] = {"data_dir": str(data_dir), "redis": args.redis, "stages": {}}
    for stage in chosen:
        started = time.perf_counter()
        print(f"[scale_shop] {stage} ...", file=sys.stderr, flush=True)
        if stage == "promote":
            answer: Any = promote(data_dir)
        else:
            answer = None
            for command in plan[stage]:
                done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"[scale_shop] {stage}: {' '.join(command)} exited {done.returncode}")
                answer = last_json(done.stdout) if done.stdout.strip() else answer
            if stage == "retriever":  # the ranker trains on the candidates of vitrine-retriever@champion
                promote(data_dir, (RETRIEVER_MODEL,))
        seconds = round(time.perf_counter() - started, 1)
        (reports / f"{stage}.json").write_text(json.dumps(answer, indent=2, default=str))
        summary["stages"][stage] = {"seconds": seconds, "report": str(reports / f"{stage}.json")}
        print(f"[scale_shop] {stage} done in {seconds} s", file=sys.stderr, flush=True)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
