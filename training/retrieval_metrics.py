"""Full-ranking retrieval metrics: top-K lists over the whole catalog, scored with `ranx`.

Every user's known history is removed from the ranking before the cut (the test items are new to
that user by construction), so the figures follow the full-ranking protocol of the
sequential-recommendation literature rather than sampled negatives. Recall and NDCG come from
ranx (binary relevance), not from code of ours; catalog coverage is the share of catalog items
that appear in at least one user's top-100.

Example:
    top = top_k(scores, exclude=history_rows, k=500)                  # [U, 500] catalog rows
    figures = ranking_metrics(top, targets, item_ids)                  # {"recall@20": ..., ...}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ranx import Qrels, Run, evaluate

# The cut-offs the issue asks for.
RECALL_CUTOFFS = (20, 100, 500)
NDCG_CUTOFF = 10
COVERAGE_CUTOFF = 100
METRICS = tuple(f"recall@{k}" for k in RECALL_CUTOFFS) + (f"ndcg@{NDCG_CUTOFF}",)
# Deepest list any metric reads.
MAX_K = max(RECALL_CUTOFFS)
# Users scored per matrix product, to bound memory at large catalogs (rows x items floats).
SCORE_CHUNK = 1024


def top_k(scores: np.ndarray, exclude: Sequence[np.ndarray], k: int = MAX_K) -> np.ndarray:
    """[U, min(k, items)] catalog rows of the best scores per user, best first, `exclude[u]` rows removed.

    Args:
        scores: [U, items] higher is better.
        exclude: per user, catalog rows never to rank (their history).
    """
    scores = np.array(scores, dtype=np.float32, copy=True)
    for user, rows in enumerate(exclude):
        if len(rows):
            scores[user, rows] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def top_k_by_vectors(
    user_vectors: np.ndarray, item_vectors: np.ndarray, exclude: Sequence[np.ndarray], k: int = MAX_K
) -> np.ndarray:
    """`top_k` of inner products, computed in chunks of users (exact search, the reference for ANN)."""
    parts = []
    for start in range(0, len(user_vectors), SCORE_CHUNK):
        chunk = user_vectors[start : start + SCORE_CHUNK] @ item_vectors.T
        parts.append(top_k(chunk, exclude[start : start + SCORE_CHUNK], k))
    return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)


def ranking_metrics(top: np.ndarray, targets: Sequence[np.ndarray], n_items: int) -> dict[str, float]:
    """Recall@20/100/500 and NDCG@10 (ranx) of the lists in `top`, plus top-100 catalog coverage.

    Users whose `targets` row is empty are left out of recall/NDCG (nothing to find) but counted in
    coverage. Returns zeros for every metric and `users: 0` when no user has a target.

    Args:
        top: [U, K] catalog rows per user, best first.
        targets: per user, the catalog rows of the held-out items.
        n_items: catalog size, for coverage.
    """
    coverage = len(np.unique(top[:, :COVERAGE_CUTOFF])) / max(n_items, 1) if len(top) else 0.0
    qrels = {str(u): {str(int(i)): 1 for i in rows} for u, rows in enumerate(targets) if len(rows)}
    figures = {name: 0.0 for name in METRICS}
    if qrels:
        depth = top.shape[1]
        run = {q: {str(int(r)): float(depth - n) for n, r in enumerate(top[int(q)])} for q in qrels}
        found = evaluate(Qrels(qrels), Run(run), list(METRICS), make_comparable=True)
        figures = {name: float(found[name]) for name in METRICS}
    return {**figures, f"coverage@{COVERAGE_CUTOFF}": float(coverage), "users": float(len(qrels))}
