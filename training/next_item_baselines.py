"""Baselines of the public leave-last-out protocol: popularity, item-kNN and `implicit` ALS.

Each one scores a `training.leave_last_out.Task` from that task's own `train` sequences and
returns `top` [scored users, LIST_DEPTH]: catalog rows, best first, the user's history excluded
(a list the remaining catalog cannot fill is padded with -1, which `evaluate_lists` counts as a
miss). Scores are dense only for SCORE_CHUNK users at a time: the whole Toys matrix (19k x 12k
float32) would be 0.9 GB.

- popularity: how many train sequences hold the item; the same list for everyone.
- item-kNN: cosine similarity of the item columns of the binary user x item matrix X,
  sim = X^T X / (sqrt(deg_i deg_j) + shrinkage), diagonal zeroed; a user's score is the sum of
  their history items' rows.
- ALS (Hu, Koren & Volinsky 2008, `implicit.cpu.als`) on the binary X, items no train sequence
  holds ranked last (they have no factors worth the name).

Settings are chosen on `split.validation` only (`tune`: fit on validation.train, Recall@10 of the
validation targets, NDCG@10 breaking ties, first grid point on a full tie), then the chosen
setting is refit on `split.test.train` and scores `split.test`: how Vitrine itself is tuned.

Example:
    split = LeaveLastOut.of(sequences)
    knn = tune(split, KNN_GRID, item_knn_top)
    knn.config, knn.validation["recall@10"]                # chosen on validation
    figures = evaluate_lists(knn.test_top, split.test.targets, sequences.n_items)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any, Generic, TypeVar

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from feature_repo.sequences import Sequences
from training.baselines import AlsConfig
from training.leave_last_out import CUTOFFS, LeaveLastOut, Task, evaluate_lists
from training.retrieval_metrics import SCORE_CHUNK, top_k
from vitrine.options import bar_shown

# Deepest cut-off of the protocol: every list has this many entries.
LIST_DEPTH = max(CUTOFFS)
# What `tune` maximises on validation, and what breaks its ties.
SELECTION_METRIC, TIE_BREAK_METRIC = "recall@10", "ndcg@10"
# Below every real score and above the history's -inf: an item without train interactions
# ranks after every item with some, yet before the user's own history.
UNSEEN_SCORE = float(-np.finfo(np.float32).max)


@dataclass(frozen=True)
class KnnConfig:
    """One item-kNN setting."""

    # Added to the cosine's denominator: damps similarities that rest on few co-occurrences (0 = plain cosine).
    shrinkage: float = 0.0


# Plain cosine (the published baseline) and three shrinkages. On Toys validation Recall@10 went
# 0.076 / 0.088 / 0.091 / 0.090 for 0 / 10 / 30 / 100; keeping only each item's 50 or 200 nearest
# neighbours moved it by under 0.002 either way, so the neighbourhood size is not searched.
KNN_GRID = tuple(KnnConfig(shrinkage=s) for s in (0.0, 10.0, 30.0, 100.0))
# Factors x L2 regularisation x confidence scale. `training.baselines`' grid (32-128 factors,
# alpha 1 or 10) had its best Toys point on its edge (128, alpha 10: validation Recall@10 0.076);
# 256 factors with alpha 40 reached 0.091 and 512 factors fell back to 0.088. Regularisation
# moved it by under 0.001 between 0.01 and 1, hence two values two decades apart.
ALS_FACTORS = (64, 128, 256)
ALS_REGULARIZATION = (0.1, 10.0)
ALS_ALPHA = (10.0, 40.0)
ALS_GRID = tuple(AlsConfig(factors=f, regularization=r, alpha=a) for f, r, a in product(ALS_FACTORS, ALS_REGULARIZATION, ALS_ALPHA))

C = TypeVar("C")


@dataclass(frozen=True)
class Tuned(Generic[C]):
    """A baseline's setting chosen on validation and its lists after the refit on test.train."""

    # The grid point with the best validation Recall@10.
    config: C
    # `evaluate_lists` of `config` on split.validation.
    validation: dict[str, float]
    # Every grid point with its validation figures, in grid order.
    grid: list[tuple[C, dict[str, float]]]
    # [test users, LIST_DEPTH] lists of `config` refit on split.test.train, for split.test.users.
    test_top: np.ndarray
    # Wall seconds of the grid search and the refit together.
    seconds: float


def user_items(train: Sequences) -> sp.csr_matrix:
    """[users, items] binary CSR of the train sequences (a user's items are distinct)."""
    matrix = sp.csr_matrix(
        (np.ones(len(train.items), dtype=np.float32), train.items, train.offsets),
        shape=(len(train.user_ids), train.n_items),
    )
    matrix.sort_indices()
    return matrix


def chunked_top(task: Task, scores_of: Callable[[np.ndarray], np.ndarray], k: int = LIST_DEPTH) -> np.ndarray:
    """[task users, k] top rows of `scores_of(users)` ([chunk, items]), SCORE_CHUNK users at a time.

    History items are never returned: where the rest of the catalog is shorter than k the row
    is padded with -1.
    """
    history = task.history()
    parts = []
    for start in range(0, len(task.users), SCORE_CHUNK):
        users = task.users[start : start + SCORE_CHUNK]
        scores = np.array(scores_of(users), dtype=np.float32)
        seen = history[start : start + SCORE_CHUNK]
        for row, items in enumerate(seen):
            scores[row, items] = -np.inf
        top = top_k(scores, seen, k)
        top[np.isneginf(np.take_along_axis(scores, top, axis=1))] = -1
        parts.append(top)
    return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)


def popularity_top(task: Task, config: None = None) -> np.ndarray:
    """[task users, LIST_DEPTH]: the items held by the most train sequences, history removed."""
    counts = np.bincount(task.train.items, minlength=task.train.n_items).astype(np.float32)
    return chunked_top(task, lambda users: np.broadcast_to(counts, (len(users), len(counts))))


def item_similarity(matrix: sp.csr_matrix, config: KnnConfig = KnnConfig()) -> sp.csr_matrix:
    """[items, items] cosine of the columns of the binary `matrix`, diagonal zeroed; row i = item i's neighbours."""
    cooccur = (matrix.T @ matrix).tocsr()
    cooccur.setdiag(0)
    cooccur.eliminate_zeros()
    degree = np.asarray(matrix.sum(axis=0), dtype=np.float64).ravel()
    rows = np.repeat(np.arange(cooccur.shape[0]), np.diff(cooccur.indptr))
    denominator = np.sqrt(degree[rows] * degree[cooccur.indices]) + config.shrinkage
    return sp.csr_matrix((cooccur.data / denominator, cooccur.indices, cooccur.indptr), shape=cooccur.shape, dtype=np.float32)


def item_knn_top(task: Task, config: KnnConfig = KnnConfig()) -> np.ndarray:
    """[task users, LIST_DEPTH]: the sum of the history items' similarity rows, history removed."""
    matrix = user_items(task.train)
    similarity = item_similarity(matrix, config)
    return chunked_top(task, lambda users: (matrix[users] @ similarity).toarray())


def als_top(task: Task, config: AlsConfig = AlsConfig()) -> np.ndarray:
    """[task users, LIST_DEPTH]: `implicit` ALS fitted on task.train, user x item factor products."""
    from implicit.cpu.als import AlternatingLeastSquares

    matrix = user_items(task.train)
    # implicit solves users in its own threads; a threaded BLAS under it is what its warning is about.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=config.factors, regularization=config.regularization, alpha=config.alpha,
            iterations=config.iterations, random_state=config.seed,
        )  # fmt: skip
        model.fit(matrix, show_progress=False)
    users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)
    unseen = np.asarray(matrix.sum(axis=0)).ravel() == 0

    def scores_of(rows: np.ndarray) -> np.ndarray:
        scores = users[rows] @ items.T
        scores[:, unseen] = UNSEEN_SCORE
        return scores

    return chunked_top(task, scores_of)


def choose(
    validation: Task, grid: Sequence[C], top_of: Callable[[Task, C], np.ndarray], *, show_progress: bool = False, name: str = ""
) -> tuple[C, dict[str, float], list[tuple[C, dict[str, float]]]]:
    """The grid point with the best validation Recall@10 (NDCG@10, then grid order, break ties).

    Returns:
        The chosen setting, its validation figures, and every point's figures in grid order.
    """
    if not grid:
        raise ValueError("choose: empty grid")
    table = []
    for config in tqdm(grid, desc=name or "grid", disable=not bar_shown(show_progress), leave=False):
        table.append((config, evaluate_lists(top_of(validation, config), validation.targets, validation.train.n_items)))
    best = max(range(len(table)), key=lambda n: (table[n][1][SELECTION_METRIC], table[n][1][TIE_BREAK_METRIC], -n))
    return table[best][0], table[best][1], table


def tune(
    split: LeaveLastOut, grid: Sequence[C], top_of: Callable[[Task, C], np.ndarray], *, show_progress: bool = False, name: str = ""
) -> Tuned[C]:
    """`choose` on split.validation, then `top_of(split.test, chosen)`: the refit on test.train."""
    began = time.perf_counter()
    config, figures, table = choose(split.validation, grid, top_of, show_progress=show_progress, name=name)
    test_top = top_of(split.test, config)
    return Tuned(config, figures, table, test_top, time.perf_counter() - began)


# Name -> (grid, lists of a task under one setting). No name may contain "vitrine".
BASELINES: dict[str, tuple[Sequence[Any], Callable[[Task, Any], np.ndarray]]] = {
    "popularity": ((None,), popularity_top),
    "item_knn": (KNN_GRID, item_knn_top),
    "als_implicit": (ALS_GRID, als_top),
}
assert not any("vitrine" in name for name in BASELINES), "a baseline's name must not contain 'vitrine'"


def run_baselines(split: LeaveLastOut, *, show_progress: bool = False) -> dict[str, Tuned[Any]]:
    """Every baseline of `BASELINES`, tuned on validation and refit on test, in that order."""
    return {name: tune(split, grid, top_of, show_progress=show_progress, name=name) for name, (grid, top_of) in BASELINES.items()}


__all__ = [
    "ALS_GRID",
    "BASELINES",
    "KNN_GRID",
    "LIST_DEPTH",
    "KnnConfig",
    "Tuned",
    "als_top",
    "choose",
    "chunked_top",
    "item_knn_top",
    "item_similarity",
    "popularity_top",
    "run_baselines",
    "tune",
    "user_items",
]
