"""A small served shop for the serving tests: shop, features in Feast, retriever and ranker @champion.

Built once per test session (`served_shop()` caches it) through the stages' public functions:
`generate_shop` + `ingest`, `feature_repo.snapshots.build.build`, `feature_repo.store.apply/materialize`,
`training.train_retriever.train_retriever`, `training.train_ranker.train_ranker`. The item vectors
are written directly (category direction + noise) instead of running an image encoder: serving only
reads them from the feature store, and a real encoder would cost the test session a minute.

Events end today, so the features are fresh with respect to the views' ttl. `replayed_shop()` is the
same shop and models with the events `REPLAY_SHIFT_DAYS` earlier, materialized to its last day as the
pipeline does: a shop whose data ended longer ago than the views' ttl (replayed, or late).
"""

from __future__ import annotations

import functools
import time
import shutil
import socket
import subprocess
import tempfile
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from vitrine.paths import DataDir

USERS, ITEMS, DAYS = 300, 120, 20
EMBEDDING_DIM = 32
# Set to a folder to keep the built shop between local test sessions.
REUSE_ENV = "VITRINE_TEST_SERVING_SHOP"
# How much earlier the replayed shop's events are: past the stats views' 30-day ttl, and whole weeks,
# so that the generator's weekday seasonality, and with it every event, is the served shop's.
REPLAY_SHIFT_DAYS = 63


def build_shop(root: Path) -> DataDir:
    """Shop + item vectors + features, applied and materialized into the embedded SQLite store."""
    from feature_repo import store as feature_store
    from feature_repo.snapshots.build import build
    from vitrine.shop.generate import generate_shop
    from vitrine.shop.spec import DEMO
    from vitrine.shop.ingest import ingest
    from vitrine.shop.store import read_items

    data = DataDir.resolve(root)
    today = datetime.now(timezone.utc).date()
    generate_shop(data, replace(DEMO, users=USERS, items=ITEMS, days=DAYS, start=today - timedelta(days=DAYS)), progress=False)
    ingest(data)
    write_item_vectors(data, read_items(data))
    build(data)
    feature_store.apply(data)
    now = datetime.now(timezone.utc)
    feature_store.materialize(data, now - timedelta(days=90), now)
    return data


def write_item_vectors(
    data: DataDir, items: pd.DataFrame, dim: int = EMBEDDING_DIM, version: str = "test-vectors-1", at: datetime | None = None
) -> None:
    """Unit vectors near a per-category direction, in the `item_embeddings.parquet` format, stamped `at` (default: a day ago)."""
    rng = np.random.default_rng(0)
    directions = {c: rng.normal(size=dim) for c in items["category"].fillna("none").unique()}
    vectors = np.stack([directions[c] + 0.5 * rng.normal(size=dim) for c in items["category"].fillna("none")]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    data.embeddings.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "item_id": items["item_id"].astype(str),
            "embedding": [v.tolist() for v in vectors],
            "has_image": True,
            "model_version": version,
            "event_timestamp": pd.Timestamp(at or datetime.now(timezone.utc) - timedelta(days=1)),
        }
    ).to_parquet(data.item_embeddings)


def train_models(data: DataDir) -> None:
    """Train a tiny retriever and ranker with the training stages and point `@champion` at them."""
    import mlflow

    from ranking.retriever import Retriever
    from training.train_ranker import RankerTrainConfig, RetrieverCandidates, train_ranker
    from training.train_retriever import TrainConfig, train_retriever
    from ranking.two_tower import TwoTowerConfig
    from vitrine.tracking import configure

    run = train_retriever(
        data,
        TrainConfig(epochs=1, batch_size=256, random_negatives=32, validation_days=0),
        TwoTowerConfig(embedding_dim=16, hidden_dim=32, output_dim=16),
        show_progress=False,
    )
    configure(data)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("vitrine-retriever", "champion", str(run.version))
    assert run.model_dir is not None
    ranker = train_ranker(
        data,
        RankerTrainConfig(train_days=14, valid_days=3, max_rounds=20, min_data_in_leaf=5, num_leaves=7),
        retriever=RetrieverCandidates(Retriever.load(run.model_dir, version=str(run.version))),
        progress=False,
    )
    client.set_registered_model_alias("vitrine-ranker", "champion", str(ranker.version))


def register_dir(data: DataDir, name: str, directory: Path, alias: str | None = "champion") -> str:
    """Log `directory` as a run's artifacts, register it as a new version of `name`, move `alias` to it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from vitrine.tracking import configure

    configure(data)
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_name=f"test-{name}") as run:
        mlflow.log_artifacts(str(directory), artifact_path="model")
        source = f"{mlflow.get_artifact_uri()}/model"
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    version = str(client.create_model_version(name, source=source, run_id=run.info.run_id).version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


@functools.lru_cache(maxsize=1)
def served_shop() -> DataDir:
    """The session's served shop (built on first call, removed at interpreter exit)."""
    import atexit
    import os

    # Local iteration only: reuse a shop built by an earlier session (CI never sets this).
    reuse = os.environ.get(REUSE_ENV)
    if reuse and (Path(reuse) / "data" / "mlflow").exists():
        return DataDir.resolve(Path(reuse) / "data")
    root = Path(reuse) if reuse else Path(tempfile.mkdtemp(prefix="vitrine-serving-"))
    if not reuse:
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    data = build_shop(root / "data")
    train_models(data)
    return data


@functools.lru_cache(maxsize=1)
def replayed_shop() -> tuple[DataDir, datetime]:
    """The served shop's users, items and models with its events REPLAY_SHIFT_DAYS days earlier.

    Features are built and materialized up to the day after the last snapshot, as the pipeline's
    feast step does, so the watermark is the data's end, which is older than the stats views' ttl.
    Returns the data dir and that watermark: the moment to replay.
    """
    import atexit

    from feature_repo import store as feature_store
    from feature_repo.snapshots.build import build
    from vitrine.shop.generate import generate_shop
    from vitrine.shop.spec import DEMO
    from vitrine.shop.ingest import ingest
    from vitrine.shop.store import read_items

    served = served_shop()
    root = Path(tempfile.mkdtemp(prefix="vitrine-replayed-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    data = DataDir.resolve(root / "data")
    # The models (MLflow registry and artifacts) come along; the shop and its features are rebuilt.
    shutil.copytree(served.root, data.root, ignore=shutil.ignore_patterns("shop", "incoming", "truth", "rejects", "features", "feast", "embeddings"))
    start = datetime.now(timezone.utc).date() - timedelta(days=DAYS + REPLAY_SHIFT_DAYS)
    generate_shop(data, replace(DEMO, users=USERS, items=ITEMS, days=DAYS, start=start), progress=False)
    ingest(data)
    write_item_vectors(data, read_items(data), at=datetime.combine(start, datetime.min.time(), timezone.utc))
    report = build(data)
    feature_store.apply(data)
    end = datetime.fromisoformat(report.last_day).replace(tzinfo=timezone.utc) + timedelta(days=1)
    feature_store.materialize(data, datetime(1970, 1, 1, tzinfo=timezone.utc), end)
    return data, end


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(port: int, workdir: Path) -> None:
    subprocess.run(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "yes", "--enable-debug-command", "local", "--dir", str(workdir)],
        check=True,
        timeout=10,
    )
    for _ in range(100):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() == "PONG":
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not start on {port}")
