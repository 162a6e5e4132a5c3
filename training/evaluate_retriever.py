"""`vitrine evaluate retriever`: popularity, ALS, the two-tower variants and the next-item recommender on the same splits.

Two protocols, each with full ranking over the whole catalog and the user's training history
excluded:

- `time`: train on days < T (T = start of the last `test_days` days), test on the items each user
  met after T that they had not met before.
- `leave-last-out`: each user's last new item is the test item, everything else trains (the
  protocol of SASRec/BERT4Rec tables; users with one item are skipped).

Per model: Recall@20/100/500 and NDCG@10 (ranx), the same restricted to cold-start items (no
training interaction: first seen after T, resp. only ever met as someone's test item), and the
catalog coverage of the top-100 lists. Every model of a protocol sees the same split, features
and catalog. The next-item recommender (`split_lists` below) gives two rows:
`sequence_tower` (its tower's list alone) and `next_item` (the reranked union of its sources, as
served; a list as long as its candidates, so its Recall@500 is that of ~270 items).

Example:
    report = evaluate_retriever(DataDir.resolve(), EvaluationConfig(protocols=("time",)))
    report["protocols"]["time"]["models"]["two_tower_multimodal"]["overall"]["recall@100"]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.sequences import Sequences, positive_interactions
from ranking.next_item import tower_top
from ranking.retriever_inputs import InputSpec, encode_users
from ranking.two_tower import TwoTowerConfig
from training.baselines import AlsBaseline, popularity_scores
from training.retrieval_metrics import MAX_K, ranking_metrics, top_k, top_k_by_vectors
from training.retriever_data import (
    PointInTime,
    Split,
    TrainingSet,
    content_dim,
    end_of_log,
    leave_last_out_split,
    time_cutoff,
    time_split,
)
from training.train_next_item import NextItemConfig, elapsed_days, fit_next_item, ranked
from training.train_retriever import TrainConfig, fit, item_vectors, user_vectors
from training.two_tower import LossConfig
from vitrine.errors import InvalidInput
from vitrine.paths import DataDir

PROTOCOLS = ("time", "leave-last-out")
# Last days held out by the time protocol: a week, the horizon a retriever is retrained on.
TEST_DAYS = 7

# The two towers compared: the same training, with and without content and features. The ID-only
# tower trains without item-id dropout: it has nothing else to describe an item with, so (like any
# pure ID model) an unseen item gets an untrained vector.
MODELS: dict[str, tuple[TwoTowerConfig, float | None]] = {
    "two_tower_id_only": (TwoTowerConfig(use_content=False, use_features=False), 0.0),
    "two_tower_multimodal": (TwoTowerConfig(), None),
}


@dataclass(frozen=True)
class EvaluationConfig:
    """What `evaluate_retriever` runs."""

    # Protocols to run, from PROTOCOLS.
    protocols: tuple[str, ...] = PROTOCOLS
    # Days the time protocol tests on.
    test_days: int = TEST_DAYS
    # Training of both towers (no inner validation: the split's test is the evaluation).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(validation_days=0))
    # The loss of both towers.
    loss: LossConfig = LossConfig()
    # Tune ALS on an inner split (False: the AlsConfig defaults, faster).
    tune_als: bool = True
    # The next-item recommender's fit (its own epochs are chosen on each user's last training item).
    next_item: NextItemConfig = field(default_factory=NextItemConfig)


def evaluate_retriever(data: DataDir, config: EvaluationConfig = EvaluationConfig(), *, show_progress: bool = True) -> dict[str, Any]:
    """Run every model on every protocol of `config` and return the figures (JSON-ready).

    Returns:
        {"protocols": {name: {"split": {...}, "models": {model: {"overall": m, "cold_start": m, ...}}}}, "seconds": s}
    """
    from vitrine.shop.store import read_events, read_items

    unknown = set(config.protocols) - set(PROTOCOLS)
    if unknown:
        raise InvalidInput(f"protocol: unknown {sorted(unknown)}; choose from {PROTOCOLS}")
    began = time.perf_counter()
    items = read_items(data)
    positives = positive_interactions(read_events(data))
    cutoff, end = time_cutoff(positives, config.test_days), end_of_log(positives)
    # One Feast read per entity for every protocol: each interaction's day, plus T and the end for the catalog.
    features = PointInTime.for_interactions(data, positives, items, extra_days=(cutoff, end))
    examples = features.join(positives)
    report: dict[str, Any] = {"protocols": {}, "train_config": asdict(config.train), "loss_config": asdict(config.loss)}
    for protocol in config.protocols:
        split = (
            time_split(features, examples, items, config.test_days)
            if protocol == "time"
            else leave_last_out_split(features, examples, items)
        )
        report["protocols"][protocol] = evaluate_split(split, config, show_progress=show_progress)
    report["seconds"] = round(time.perf_counter() - began, 1)
    return report


def evaluate_split(split: Split, config: EvaluationConfig, *, show_progress: bool = False) -> dict[str, Any]:
    """All four models on one split."""
    n_items = len(split.catalog)
    cold_targets = split.cold_targets()
    models: dict[str, Any] = {}

    def score(name: str, top: np.ndarray, extra: dict[str, Any] | None = None) -> None:
        models[name] = {
            "overall": ranking_metrics(top, split.targets, n_items),
            "cold_start": ranking_metrics(top, cold_targets, n_items),
            **(extra or {}),
        }

    score("popularity", top_k(popularity_scores(split), split.history, MAX_K))
    began = time.perf_counter()
    als = AlsBaseline.tuned(split.train, split.catalog) if config.tune_als else AlsBaseline(split.train, split.catalog)
    score(
        "als",
        top_k(als.scores(split.test_users["user_id"].tolist()), split.history, MAX_K),
        {"config": asdict(als.config), "seconds": round(time.perf_counter() - began, 1)},
    )
    spec = InputSpec.fit(split.train, content_dim(split.catalog))
    train = TrainingSet.of(split.train, split.catalog, spec)
    users = encode_users(split.test_users, spec)
    for name, (model_config, item_id_dropout) in MODELS.items():
        began = time.perf_counter()
        schedule = config.train if item_id_dropout is None else replace(config.train, item_id_dropout=item_id_dropout)
        result = fit(train, spec, model_config, schedule, config.loss, show_progress=show_progress)
        assert result.model is not None  # one process: rank 0
        top = top_k_by_vectors(user_vectors(result.model, users), item_vectors(result.model, train.catalog), split.history)
        score(name, top, {"epochs": result.epochs, "seconds": round(time.perf_counter() - began, 1)})
    # The served recommender: its sequence tower's list alone, and the reranked union of its sources.
    began = time.perf_counter()
    lists = split_lists(split.train, split.catalog, split.test_users["user_id"].astype(str).tolist(), MAX_K, config.next_item,
                        request_at=split.cutoff if split.name == "time" else None, show_progress=show_progress)
    seconds = round(time.perf_counter() - began, 1)
    for name, top in lists.items():
        score(name, top, {"seconds": seconds})
    return {
        "split": {
            "cutoff": str(split.cutoff),
            "train_examples": len(split.train),
            "test_users": len(split.targets),
            "test_items": int(sum(len(t) for t in split.targets)),
            "catalog_items": n_items,
            "cold_items": len(split.cold_items),
            "cold_test_users": int(sum(1 for t in cold_targets if len(t))),
        },
        "models": models,
    }


def with_epochs(config: EvaluationConfig, epochs: int | None) -> EvaluationConfig:
    """`config` with another number of tower epochs (None keeps it)."""
    return config if epochs is None else replace(config, train=replace(config.train, epochs=epochs))


def split_lists(train: pd.DataFrame, catalog: pd.DataFrame, test_users: Sequence[str], depth: int,
                config: NextItemConfig = NextItemConfig(), *, request_at: pd.Timestamp | None = None,
                show_progress: bool = False) -> dict[str, np.ndarray]:
    """The next-item tower's and the whole system's lists on another protocol's split (`vitrine evaluate retriever`).

    Args:
        train: the split's training interactions (user_id, item_id, timestamp); `catalog`: its catalog
            (item_id, and embedding when the shop has item vectors), whose rows the lists hold.
        test_users: whom to rank for (their training items are their histories, left out).
        depth: list length of the tower's list (the system's holds its candidates, -1 padded).
        request_at: when every test user asks (the time split's T), for the ranker's days since the
            newest item; None: unknown (leave-last-out users ask at their own moments).

    Returns:
        {"sequence_tower": [users, depth], "next_item": [users, depth]} catalog rows.
    """
    sequences = Sequences.of(train, catalog["item_id"].astype(str))
    content = np.stack(catalog["embedding"].to_numpy()).astype(np.float32) if "embedding" in catalog and catalog["embedding"].notna().all() else None
    fitted = fit_next_item(sequences, content, config, show_progress=show_progress)
    index = {str(u): n for n, u in enumerate(sequences.user_ids)}
    empty = np.zeros(0, dtype=np.int64)
    histories = [sequences.user(index[str(u)]) if str(u) in index else empty for u in test_users]
    elapsed = None
    if request_at is not None:
        rows = np.array([index.get(str(u), -1) for u in test_users], dtype=np.int64)
        days = elapsed_days(sequences, np.maximum(rows, 0), np.full(len(rows), pd.Timestamp(request_at).value))
        elapsed = None if days is None else np.where(rows >= 0, days, np.nan).astype(np.float32)
    vectors = fitted.sources.retriever.vectors_of(histories)
    return {"sequence_tower": tower_top(fitted.sources.retriever, histories, vectors, depth),
            "next_item": ranked(fitted.sources, fitted.ranker, histories, depth, elapsed, vectors)}
