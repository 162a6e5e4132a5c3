"""Every shop the tests build, from one place: a shop, then the stages a test needs on top of it.

Shops (each writes the canonical shop of a data dir):
- `generated`: the synthetic generator (`vitrine.shop.generate`) at a test's size, ingested.
- `hand_made`: 30 items with gaps (no price, category or date), 40 users, 1,500 events over 40 days,
  for the feature computations whose every value a test can reason about.
- `pictured`: items drawn as coloured shapes with captions that name them, for the encoders.

Stages on top (each takes and returns the data dir):
- `with_item_vectors`: stand-in item vectors in the `item_embeddings.parquet` format: a fixed random
  direction per category, colour and brand plus noise, unit length, so content carries the taste
  signal a CLIP vector does while no encoder runs (the embeddings stage has its own tests);
- `with_features`: `vitrine features build`;  `materialized`: feast apply + materialize (SQLite);
- `with_models`: a tiny two-tower retriever and session ranker trained by the training stage, `@champion`;
- `with_next_item_models`: a tiny next-item recommender (sequence tower + ranker), `@champion`.

`served_shop()` composes them all once per test session (two-tower models); `served_next_item_shop()`
is a copy of it serving next-item models; `replayed_shop()` is the same shop and two-tower models
with every event REPLAY_SHIFT_DAYS earlier (a shop older than the views' ttl).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import random
import shutil
import tempfile
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from vitrine.paths import DataDir
from vitrine.shop.store import read_items, write_events, write_items

if TYPE_CHECKING:
    from training.train_next_item import NextItemConfig

# --- Sizes -----------------------------------------------------------------------------------------
# The served shop: small enough to train both models in seconds, big enough for every stage's rules.
SERVED = {"users": 300, "items": 120, "days": 20}
# The retriever's shop: more items than users' lists reach, three weeks for its time split.
RETRIEVER = {"users": 300, "items": 160, "days": 21, "seed": 5}
# Width of the stand-in item vectors.
VECTOR_DIM = 32
# How much earlier the replayed shop's events are: past the stats views' 30-day ttl, and whole weeks,
# so that the generator's weekday seasonality, and with it every event, is the served shop's.
REPLAY_SHIFT_DAYS = 63
# Set to a folder to keep the served shop between local test sessions (CI never sets it).
REUSE_ENV = "VITRINE_TEST_SERVING_SHOP"

# The hand-made shop's events start here and last HAND_MADE_DAYS.
HAND_MADE_START = pd.Timestamp("2026-01-01", tz="UTC")
HAND_MADE_DAYS = 40

# The pictured shop's vocabulary: each shape is a category, each colour drawn and named.
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (235, 200, 20),
           "purple": (130, 40, 160), "black": (20, 20, 20)}  # fmt: skip
CATEGORIES = ("ball", "box", "tent", "scarf")
MATERIALS = ("cotton", "leather", "plastic", "wool")


# --- Shops -----------------------------------------------------------------------------------------


def generated(
    data: DataDir, *, users: int, items: int, days: int, start: date | None = None, seed: int = 0, ingest: bool = True
) -> DataDir:
    """The synthetic shop at this size (events start `start`, default: ending yesterday), ingested unless told."""
    from vitrine.shop.generate import generate_shop
    from vitrine.shop.ingest import ingest as ingest_shop
    from vitrine.shop.spec import DEMO, ending_yesterday

    spec = replace(DEMO, users=users, items=items, days=days, seed=seed, start=start or ending_yesterday(days))
    generate_shop(data, spec, progress=False)
    if ingest:
        ingest_shop(data)
    return data


def hand_made(data: DataDir, extra_events: pd.DataFrame | None = None, seed: int = 0) -> DataDir:
    """30 items (some without price, category or creation date) and ~1,500 events over HAND_MADE_DAYS days."""
    rng = np.random.default_rng(seed)
    n_items, n_users, n_events = 30, 40, 1_500
    items = pd.DataFrame(
        {
            "item_id": [f"I{i:03d}" for i in range(n_items)],
            "title": [f"item {i}" for i in range(n_items)],
            "category": [None if i % 7 == 0 else f"cat{i % 4}" for i in range(n_items)],
            "brand": [None if i % 5 == 1 else f"brand{i % 3}" for i in range(n_items)],
            "price": [np.nan if i % 5 == 0 else 5.0 + i for i in range(n_items)],
            "created_at": [pd.NaT if i % 6 == 0 else HAND_MADE_START - pd.Timedelta(days=i) for i in range(n_items)],
        }
    )
    items["created_at"] = pd.to_datetime(items["created_at"], utc=True)
    write_items(data, items)
    stamps = HAND_MADE_START + pd.to_timedelta(rng.uniform(0, HAND_MADE_DAYS * 86_400, n_events), unit="s")
    events = pd.DataFrame(
        {
            "user_id": [f"U{u:03d}" for u in rng.integers(0, n_users, n_events)],
            "item_id": [f"I{i:03d}" for i in rng.integers(0, n_items, n_events)],
            "event_type": rng.choice(["view", "click", "add_to_cart", "purchase"], n_events, p=[0.6, 0.25, 0.1, 0.05]),
            "timestamp": stamps,
            "price": np.where(rng.random(n_events) < 0.5, np.nan, 9.99),
        }
    )
    if extra_events is not None:
        events = pd.concat([events, extra_events], ignore_index=True)
    write_events(data, events)
    return data


def draw(category: str, rgb: tuple[int, int, int], rng: random.Random, size: int = 64) -> Image.Image:
    """One product picture: the category's shape in `rgb` on a light background, placed with a little jitter."""
    image = Image.new("RGB", (size, size), (235 + rng.randint(-15, 15),) * 3)
    pen = ImageDraw.Draw(image)
    margin = rng.randint(4, 14)
    box = (margin + rng.randint(-3, 3), margin + rng.randint(-3, 3), size - margin, size - margin)
    if category == "ball":
        pen.ellipse(box, fill=rgb)
    elif category == "box":
        pen.rectangle(box, fill=rgb)
    elif category == "tent":
        pen.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=rgb)
    else:
        for y in range(box[1], box[3], 8):
            pen.rectangle((box[0], y, box[2], y + 4), fill=rgb)
    return image


def pictured(root: Path, n_items: int = 120, seed: int = 0, image_share: float = 1.0) -> DataDir:
    """`n_items` items (a picture for about `image_share` of them) whose captions name shape, colour and material."""
    rng = random.Random(seed)
    data = DataDir.resolve(root)
    data.images.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(n_items):
        item_id = f"I{n:05d}"
        colour = rng.choice(list(COLOURS))
        category = rng.choice(CATEGORIES)
        material = rng.choice(MATERIALS)
        image_path = None
        if rng.random() < image_share:
            image_path = f"images/{item_id}.png"
            draw(category, COLOURS[colour], rng).save(data.shop / image_path)
        rows.append({
            "item_id": item_id,
            "title": f"{colour.title()} {material} {category}",
            "description": f"A {material} {category} in {colour}, model {n % 17}.",
            "category": category,
            "brand": rng.choice(["Acme", "Globex", None]),
            "price": float(rng.randint(5, 200)),
            "image_path": image_path,
            "created_at": pd.Timestamp("2025-01-01", tz="UTC"),
            "colour": colour,
            "material": material,
        })  # fmt: skip
    write_items(data, pd.DataFrame(rows))
    return data


# --- Stages on top ---------------------------------------------------------------------------------


def _direction(value: object, dim: int) -> np.ndarray:
    seed = int(hashlib.sha256(str(value).encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal(dim)


def with_item_vectors(data: DataDir, *, dim: int = VECTOR_DIM, version: str = "stand-in", at: datetime | None = None) -> DataDir:
    """Stand-in item vectors (see the module docstring), stamped `at` (default: as `vitrine embed` stamps them)."""
    from embeddings.encode import EMBEDDING_VALID_FROM

    items = read_items(data)
    rng = np.random.default_rng(0)
    vectors = []
    for item in items.itertuples():
        vector = sum(_direction((column, getattr(item, column, None)), dim) for column in ("category", "colour", "brand"))
        vector = vector + 0.3 * rng.standard_normal(dim)
        vectors.append((vector / np.linalg.norm(vector)).astype(np.float32).tolist())
    frame = pd.DataFrame({"item_id": items["item_id"].astype(str), "embedding": vectors, "has_image": True, "model_version": version,
                          "event_timestamp": pd.Timestamp(at or EMBEDDING_VALID_FROM)})  # fmt: skip
    data.embeddings.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(data.item_embeddings, index=False)
    return data


def with_features(data: DataDir) -> DataDir:
    from feature_repo.snapshots.build import build

    build(data)
    return data


def materialized(data: DataDir, end: datetime | None = None) -> DataDir:
    """`feast apply` and `feast materialize` of every row up to `end` (default: now) into the SQLite store."""
    from feature_repo import store

    store.apply(data)
    store.materialize(data, datetime(1970, 1, 1, tzinfo=timezone.utc), end or datetime.now(timezone.utc))
    return data


def with_models(data: DataDir) -> DataDir:
    """A tiny retriever and ranker from the training stages, both `@champion`."""
    import mlflow

    from ranking.retriever import Retriever
    from ranking.two_tower import TwoTowerConfig
    from training.train_ranker import RankerTrainConfig, RetrieverCandidates, train_ranker
    from training.train_retriever import TrainConfig, train_retriever
    from vitrine.tracking import CHAMPION_ALIAS, RANKER_MODEL, RETRIEVER_MODEL, configure

    run = train_retriever(data, TrainConfig(epochs=1, batch_size=256, random_negatives=32, validation_days=0),
                          TwoTowerConfig(embedding_dim=16, hidden_dim=32, output_dim=16), show_progress=False)  # fmt: skip
    configure(data)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(RETRIEVER_MODEL, CHAMPION_ALIAS, str(run.version))
    assert run.model_dir is not None
    ranker = train_ranker(
        data,
        RankerTrainConfig(train_days=14, valid_days=3, max_rounds=20, min_data_in_leaf=5, num_leaves=7),
        retriever=RetrieverCandidates(Retriever.load(run.model_dir, version=str(run.version))),
        progress=False,
    )
    client.set_registered_model_alias(RANKER_MODEL, CHAMPION_ALIAS, str(ranker.version))
    return data


# A next-item recommender small enough to fit in seconds (the shop has 120 items).
def tiny_next_item_config() -> "NextItemConfig":
    from ranking.sequence_tower import SequenceTowerConfig
    from training.train_next_item import NextItemConfig
    from training.train_sequence import SequenceTrainConfig

    return NextItemConfig(tower=SequenceTowerConfig(embedding_dim=16, layers=1, heads=1, max_length=10, dropout=0.1),
                          train=SequenceTrainConfig(max_epochs=4, patience=2, batch_size=128, learning_rate=3e-3), threads=1)


def with_next_item_models(data: DataDir) -> DataDir:
    """The next-item recommender fitted on every event (`training.train_next_item`), both models `@champion`."""
    import mlflow

    from training.train_next_item import train_next_item
    from vitrine.tracking import CHAMPION_ALIAS

    run = train_next_item(data, tiny_next_item_config(), show_progress=False)
    client = mlflow.MlflowClient()
    for model, version in run.versions.items():
        client.set_registered_model_alias(model, CHAMPION_ALIAS, version)
    return data


def register_dir(data: DataDir, name: str, directory: Path, alias: str | None = "champion") -> str:
    """Log `directory` as a run's artifacts, register it as a new version of `name`, move `alias` to it."""
    import mlflow

    from vitrine.tracking import configure, register_model

    configure(data)
    with mlflow.start_run(run_name=f"test-{name}") as run:
        mlflow.log_artifacts(str(directory), artifact_path="model")
        source = f"{mlflow.get_artifact_uri()}/model"
    version = register_model(name, source, run.info.run_id, {})
    if alias:
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return version


# --- Composed shops, built once per session --------------------------------------------------------


def retriever_shop(root: Path) -> DataDir:
    """The retriever tests' shop: generated at RETRIEVER's size (fixed dates), vectors, features."""
    data = generated(DataDir.resolve(root), start=date(2026, 1, 1), **RETRIEVER)
    return with_features(with_item_vectors(data))


@functools.lru_cache(maxsize=1)
def served_shop() -> DataDir:
    """Shop, vectors, features materialized to now, retriever and ranker `@champion` (built on first call)."""
    reuse = os.environ.get(REUSE_ENV)
    if reuse and (Path(reuse) / "data" / "mlflow").exists():
        return DataDir.resolve(Path(reuse) / "data")
    root = Path(reuse) if reuse else Path(tempfile.mkdtemp(prefix="vitrine-serving-"))
    if not reuse:
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    today = datetime.now(timezone.utc).date()
    data = generated(DataDir.resolve(root / "data"), start=today - timedelta(days=SERVED["days"]), **SERVED)
    return with_models(materialized(with_features(with_item_vectors(data))))


@functools.lru_cache(maxsize=1)
def served_next_item_shop() -> DataDir:
    """The served shop's data (shop, vectors, features in Feast) serving a next-item recommender instead."""
    served = served_shop()
    root = Path(tempfile.mkdtemp(prefix="vitrine-next-item-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    data = DataDir.resolve(root / "data")
    shutil.copytree(served.root, data.root, ignore=shutil.ignore_patterns("mlflow", "models"))
    return with_next_item_models(data)


@functools.lru_cache(maxsize=1)
def replayed_shop() -> tuple[DataDir, datetime]:
    """The served shop's users, items and models with its events REPLAY_SHIFT_DAYS days earlier.

    Features are built and materialized up to the day after the last snapshot, as the pipeline's
    feast step does, so the watermark is the data's end, which is older than the stats views' ttl.
    Returns the data dir and that watermark: the moment to replay.
    """
    from feature_repo.snapshots.build import build

    served = served_shop()
    root = Path(tempfile.mkdtemp(prefix="vitrine-replayed-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    data = DataDir.resolve(root / "data")
    # The models (MLflow registry and artifacts) come along; the shop and its features are rebuilt.
    shutil.copytree(served.root, data.root, ignore=shutil.ignore_patterns("shop", "incoming", "truth", "rejects", "features", "feast", "embeddings"))
    start = datetime.now(timezone.utc).date() - timedelta(days=SERVED["days"] + REPLAY_SHIFT_DAYS)
    generated(data, start=start, **SERVED)
    with_item_vectors(data)
    report = build(data)
    end = datetime.fromisoformat(report.last_day).replace(tzinfo=timezone.utc) + timedelta(days=1)
    return materialized(data, end), end
