"""Vitrine's rows of the public leave-last-out benchmark: the sequence tower, each candidate source, and in full.

The full system is what the served recommender does, on the benchmark's split:

1. candidate sources, each fitted on what the models may learn from: the sequence tower's
   nearest items (ANN over the tied item vectors), co-visitation and transition neighbours of the
   user's last items (`feature_repo.covisitation`), and the popular items;
2. one LightGBM LambdaRank reranker over their union, whose features make the sources comparable
   (`candidate_features`);
3. the top 20 after the rerank.

Settings are chosen on the validation task only. The reranker learns from the validation task
(requests = each user's second-to-last item, candidates from sources fitted without it), then the
sources are refit on every held-in interaction and the same reranker orders their candidates for
the test item: training requests and served requests are built by the same code.

Rows (every name contains "vitrine"): `vitrine_sequence` (the tower alone, full ranking),
`vitrine_covisitation`, `vitrine_popularity`, `vitrine_sources_merged` (the union ordered by summed
reciprocal ranks, no reranker) and `vitrine` (in full).

Example:
    rows = vitrine_rows(split, catalog, show_progress=True)
    rows["vitrine"]["test"]["recall@10"]
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.covisitation import CoVisitation
from feature_repo.sequences import Sequences
from ranking.sequence_tower import SequenceTowerConfig
from training.leave_last_out import LeaveLastOut, evaluate_lists
from training.train_sequence import LIST_DEPTH, FitResult, SequenceTrainConfig, default_max_length, fit, scores_top

# Candidates each source hands the reranker: deep enough to hold most next items (the union's
# recall at this depth is the ceiling of the rerank), shallow enough to rank in a millisecond.
TOWER_CANDIDATES = 100
COVISIT_CANDIDATES = 100
POPULAR_CANDIDATES = 20
# Reciprocal-rank constant of the merged order (the usual RRF value).
RRF_K = 60
# Share of the reranker's training users held out for its early stopping.
RANKER_HOLDOUT = 0.1
SOURCES = ("tower", "covisitation", "popular")


@dataclass
class Sources:
    """The candidate sources fitted on one task's training sequences."""

    train: Sequences
    tower: FitResult
    covisitation: CoVisitation
    popularity: np.ndarray  # [items] interaction counts in train

    @property
    def known(self) -> np.ndarray:
        return self.popularity > 0


@dataclass
class Candidates:
    """Per scored user, the union of the sources' candidates, padded with -1, and their features."""

    rows: np.ndarray  # [U, C] catalog rows
    features: pd.DataFrame  # one row per valid (user, candidate), in row-major order
    users: np.ndarray  # [rows of features] position of the user in the task
    items: np.ndarray  # [rows of features] catalog row


def vitrine_rows(
    split: LeaveLastOut,
    catalog: pd.DataFrame,
    show_progress: bool = True,
    content: np.ndarray | None = None,
    *,
    model_config: SequenceTowerConfig | None = None,
    train_config: SequenceTrainConfig = SequenceTrainConfig(),
) -> dict[str, dict[str, Any]]:
    """Fit, tune on validation, refit, and score every Vitrine row on the test task.

    Args:
        split: the benchmark's split; nothing here reads its test targets before scoring.
        catalog: the items (row r of the sequences is catalog row r).
        content: [items, C] content vectors, or None (ids only).
        model_config: the tower's shape (default: SequenceTowerConfig with the window from the data).
    """
    log = _logger(show_progress)
    model_config = model_config or SequenceTowerConfig(
        max_length=default_max_length(split.validation.train), use_content=content is not None
    )
    log("sequence tower: choosing epochs on the validation items")
    chosen = fit(split.validation.train, content, validation=split.validation, model_config=model_config,
                 train_config=train_config, show_progress=show_progress)
    log(f"sequence tower: {chosen.epochs} epochs; refit on all held-in interactions")
    refit = fit(split.test.train, content, epochs=chosen.epochs, model_config=model_config, train_config=train_config)
    validation_sources = _sources(split.validation.train, chosen)
    test_sources = _sources(split.test.train, refit)

    log("candidates and features for the reranker's requests (validation items)")
    began = time.perf_counter()
    train_candidates = candidates(validation_sources, split.validation.history())
    log("reranker: LightGBM LambdaRank")
    ranker = _fit_ranker(train_candidates, split.validation.targets)
    test_candidates = candidates(test_sources, split.test.history())
    ranker_seconds = time.perf_counter() - began

    n_items = split.sequences.n_items
    rows: dict[str, dict[str, Any]] = {}
    tower_top, _ = scores_top(refit.model, split.test.history(), test_sources.known, LIST_DEPTH)
    rows["vitrine_sequence"] = {"test": evaluate_lists(tower_top, split.test.targets, n_items),
                                "validation": chosen.summary()["validation"], "settings": model_config.to_json(),
                                "epochs": chosen.epochs, "seconds": round(chosen.seconds + refit.seconds, 1)}
    covis_top, _ = test_sources.covisitation.candidates_batch(split.test.history(), LIST_DEPTH)
    rows["vitrine_covisitation"] = {"test": evaluate_lists(covis_top, split.test.targets, n_items)}
    rows["vitrine_popularity"] = {"test": evaluate_lists(_popular_top(test_sources, split.test.history(), LIST_DEPTH),
                                                         split.test.targets, n_items)}
    merged = _order(test_candidates, -test_candidates.features["rrf"].to_numpy())
    rows["vitrine_sources_merged"] = {"test": evaluate_lists(merged, split.test.targets, n_items),
                                      "candidate_recall": _candidate_recall(test_candidates, split.test.targets)}
    reranked = _order(test_candidates, -ranker.predict(test_candidates.features[ranker.feature_name()]))
    rows["vitrine"] = {"test": evaluate_lists(reranked, split.test.targets, n_items),
                       "ranker": {"trees": ranker.num_trees(), "features": ranker.feature_name(),
                                  "seconds": round(ranker_seconds, 1)},
                       "candidate_recall": _candidate_recall(test_candidates, split.test.targets)}
    return rows


def _sources(train: Sequences, tower: FitResult) -> Sources:
    return Sources(train, tower, CoVisitation.fit(train), np.bincount(train.items, minlength=train.n_items).astype(np.float32))


def source_lists(sources: Sources, histories: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Each source's ranked candidates [U, n] (-1 padded) for each history."""
    tower_rows, _ = scores_top(sources.tower.model, histories, sources.known, TOWER_CANDIDATES)
    covis_rows, _ = sources.covisitation.candidates_batch(histories, COVISIT_CANDIDATES)
    return {"tower": tower_rows, "covisitation": covis_rows, "popular": _popular_top(sources, histories, POPULAR_CANDIDATES)}


def candidates(sources: Sources, histories: list[np.ndarray]) -> Candidates:
    """The union of every source's candidates per history, with the reranker's features."""
    lists = source_lists(sources, histories)
    union = [_union(*(lists[s][u] for s in SOURCES)) for u in range(len(histories))]
    width = max(len(u) for u in union)
    rows = np.full((len(union), width), -1, dtype=np.int64)
    for n, items in enumerate(union):
        rows[n, : len(items)] = items
    return Candidates(rows, *candidate_features(sources, histories, rows, lists))


def candidate_features(
    sources: Sources, histories: list[np.ndarray], rows: np.ndarray, lists: dict[str, np.ndarray]
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Features of every valid candidate in `rows` [U, C], comparable across sources.

    Returns the feature frame (row-major over valid cells), each row's user index and catalog row.
    """
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    columns: dict[str, np.ndarray] = {}
    rrf = np.zeros(rows.shape, dtype=np.float32)
    for source in SOURCES:
        rank = _rank_in(lists[source], safe)  # [U, C], NaN where the source did not propose it
        columns[f"{source}_rank"] = rank
        rrf += np.where(np.isnan(rank), 0.0, 1.0 / (RRF_K + np.nan_to_num(rank)))
    columns["rrf"] = rrf
    columns["sources"] = sum((~np.isnan(columns[f"{s}_rank"])).astype(np.float32) for s in SOURCES)
    columns["tower_score"] = _tower_scores(sources, histories, safe)
    columns.update(sources.covisitation.features_batch(histories, rows))
    columns["popularity"] = np.log1p(sources.popularity[safe])
    columns["history_length"] = np.repeat(np.array([len(h) for h in histories], np.float32)[:, None], rows.shape[1], 1)
    frame = pd.DataFrame({name: np.asarray(values, dtype=np.float32)[valid] for name, values in columns.items()})
    users = np.repeat(np.arange(len(rows)), valid.sum(axis=1))
    return frame, users, rows[valid]


def _tower_scores(sources: Sources, histories: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """[U, C] the tower's inner product of each user with each candidate."""
    import torch

    from ranking.sequence_tower import pad_histories

    model = sources.tower.model
    known = torch.from_numpy(sources.known)
    out = np.zeros(rows.shape, dtype=np.float32)
    with torch.no_grad():
        items = model.item_vectors(known=known).numpy()
        for start in range(0, len(histories), 1024):
            padded, lengths = pad_histories(histories[start : start + 1024], model.config.max_length)
            users = model.user_vectors(padded, lengths, known[padded]).numpy()
            out[start : start + len(users)] = np.einsum("ud,ucd->uc", users, items[rows[start : start + len(users)]])
    return out


def _rank_in(lists: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[U, C] 0-based position of each rows[u, c] in lists[u] (NaN when absent)."""
    out = np.full(rows.shape, np.nan, dtype=np.float32)
    for u in range(len(rows)):
        where = {int(item): n for n, item in enumerate(lists[u]) if item >= 0}
        out[u] = [where.get(int(r), np.nan) for r in rows[u]]
    return out


def _union(*lists: np.ndarray) -> np.ndarray:
    """Distinct valid rows of the lists, first occurrence first."""
    joined = np.concatenate([lst[lst >= 0] for lst in lists])
    _, first = np.unique(joined, return_index=True)
    return joined[np.sort(first)]


def _popular_top(sources: Sources, histories: list[np.ndarray], k: int) -> np.ndarray:
    """[U, k] the most interacted-with items each user has not met yet."""
    order = np.argsort(-sources.popularity, kind="stable")
    head = order[: k + max((len(h) for h in histories), default=0)]
    out = np.full((len(histories), k), -1, dtype=np.int64)
    for n, history in enumerate(histories):
        picked = head[~np.isin(head, history)][:k]
        out[n, : len(picked)] = picked
    return out


def _fit_ranker(found: Candidates, targets: np.ndarray) -> Any:
    """LightGBM LambdaRank on the candidates of the validation requests (label: the next item)."""
    import lightgbm as lgb

    labels = (found.items == targets[found.users]).astype(np.int32)
    has_positive = np.bincount(found.users, weights=labels, minlength=len(found.rows)) > 0
    rng = np.random.default_rng(0)
    holdout = rng.random(len(found.rows)) < RANKER_HOLDOUT
    features = found.features.drop(columns=["rrf"])

    def dataset(users_mask: np.ndarray) -> Any:
        keep = users_mask[found.users]
        groups = np.bincount(found.users[keep], minlength=len(found.rows))[users_mask]
        return lgb.Dataset(features[keep], labels[keep], group=groups, free_raw_data=False)

    train = dataset(has_positive & ~holdout)
    valid = dataset(has_positive & holdout)
    params = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "learning_rate": 0.05,
              "num_leaves": 63, "min_data_in_leaf": 50, "feature_fraction": 0.9, "bagging_fraction": 0.8,
              "bagging_freq": 1, "lambdarank_truncation_level": 20, "verbose": -1, "num_threads": 2, "seed": 0}
    return lgb.train(params, train, num_boost_round=1000, valid_sets=[valid],
                     callbacks=[lgb.early_stopping(30, verbose=False)])


def _order(found: Candidates, keys: np.ndarray) -> np.ndarray:
    """[U, LIST_DEPTH] candidates of each user sorted by `keys` (ascending), -1 padded."""
    frame = pd.DataFrame({"user": found.users, "item": found.items, "key": keys}).sort_values(["user", "key"], kind="stable")
    frame["n"] = frame.groupby("user").cumcount()
    frame = frame[frame["n"] < LIST_DEPTH]
    out = np.full((len(found.rows), LIST_DEPTH), -1, dtype=np.int64)
    out[frame["user"].to_numpy(), frame["n"].to_numpy()] = frame["item"].to_numpy()
    return out


def _candidate_recall(found: Candidates, targets: np.ndarray) -> float:
    """Share of users whose target is among their candidates: the ceiling of any rerank."""
    return round(float(np.mean([(row == t).any() for row, t in zip(found.rows, targets)])), 5)


def _logger(show: bool) -> Any:
    def log(message: str) -> None:
        if show:
            print(message, file=sys.stderr, flush=True)

    return log

