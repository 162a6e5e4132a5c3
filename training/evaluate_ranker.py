"""Offline evaluation of the reranker: the same candidate lists in three orders.

For every test request (a session after the split time T), the retriever's top-N candidates as of
the session start are ordered three ways and scored against what the user did in the session:

- `retriever`: the retriever's own order;
- `reranked`: `Reranker.score` (the engagement objective: the LambdaRank score), plus
  `reranked_revenue` (the revenue blend, P(relevant) x CVR x price^alpha);
- `popularity`: the item's popularity rank as of the request day (the feature store's
  `popularity_rank`), ties broken by the retriever.

Metrics at k (default 10), averaged over requests (a request whose positives are all outside the
candidate list scores 0 for every order, so the orders stay comparable and the figure stays honest):

- `ndcg_at_10`: NDCG with the training gains (`LABEL_GAIN`: click 1, cart 3, purchase 10); the
  ideal is the best order of the candidate list itself;
- `recall_at_10`: share of the session's positive items (click, cart or purchase) in the top k;
- `purchases_at_10`: purchased items in the top k;
- `revenue_at_10`: value of the purchased items in the top k (price paid x quantity).

Example:
    >>> figures = evaluate_orders(test_set, {"retriever": -ranks, "reranked": ranker_scores})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ranking.ranker_features import FEATURE_NAMES
from training.ranker_dataset import LABEL_GAIN, PURCHASE, RankerDataset

# The cut-off the issue asks for: the first screen of recommendations.
DEFAULT_K = 10


@dataclass(frozen=True)
class OrderMetrics:
    """One order's figures over the test requests."""

    ndcg_at_k: float
    recall_at_k: float
    purchases_at_k: float
    revenue_at_k: float

    def as_dict(self, k: int) -> dict[str, float]:
        return {
            f"ndcg_at_{k}": self.ndcg_at_k,
            f"recall_at_{k}": self.recall_at_k,
            f"purchases_at_{k}": self.purchases_at_k,
            f"revenue_at_{k}": self.revenue_at_k,
        }


def order_metrics(dataset: RankerDataset, scores: np.ndarray, k: int = DEFAULT_K) -> OrderMetrics:
    """Metrics of ordering each request's rows by `scores` (higher first; ties keep row order).

    Args:
        dataset: test rows (labels, revenue, group sizes, session positives).
        scores: (rows,) one score per row.
        k: cut-off.
    """
    if len(scores) != len(dataset):
        raise ValueError(f"{len(scores)} scores for {len(dataset)} rows")
    gains = np.asarray(LABEL_GAIN, dtype=np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    offsets = dataset.offsets
    n = len(dataset.group_sizes)
    ndcg = np.zeros(n)
    recall = np.zeros(n)
    purchases = np.zeros(n)
    revenue = np.zeros(n)
    for index in range(n):
        lo, hi = offsets[index], offsets[index + 1]
        if hi == lo:
            continue
        labels = dataset.labels[lo:hi]
        order = np.argsort(-scores[lo:hi], kind="stable")[:k]
        top = labels[order]
        ideal = np.sort(gains[labels])[::-1][:k]
        ideal_dcg = float((ideal * discounts[: len(ideal)]).sum())
        if ideal_dcg > 0:
            ndcg[index] = float((gains[top] * discounts[: len(top)]).sum()) / ideal_dcg
        if dataset.positives[index] > 0:
            recall[index] = float((top > 0).sum()) / float(dataset.positives[index])
        purchases[index] = float((top == PURCHASE).sum())
        revenue[index] = float(dataset.revenue[lo:hi][order].sum())
    return OrderMetrics(float(ndcg.mean()) if n else 0.0, float(recall.mean()) if n else 0.0,
                        float(purchases.mean()) if n else 0.0, float(revenue.mean()) if n else 0.0)  # fmt: skip


def retriever_order(dataset: RankerDataset) -> np.ndarray:
    """Scores that reproduce the retriever's order (its rank, best first)."""
    return -dataset.features[:, FEATURE_NAMES.index("retriever_rank")].astype(np.float64)


def popularity_order(dataset: RankerDataset) -> np.ndarray:
    """Scores for the popularity order: most popular first (rank 1), unknown last, ties by the retriever."""
    popularity = dataset.features[:, FEATURE_NAMES.index("item_popularity_rank")].astype(np.float64)
    rank = dataset.features[:, FEATURE_NAMES.index("retriever_rank")].astype(np.float64)
    worst = np.nanmax(popularity) + 1 if np.isfinite(popularity).any() else 1.0
    popularity = np.where(np.isfinite(popularity), popularity, worst)
    # Lexicographic: popularity first, the retriever's rank (< 1e6) breaks ties.
    return -(popularity * 1e6 + rank)


def evaluate_orders(dataset: RankerDataset, orders: Mapping[str, np.ndarray], k: int = DEFAULT_K) -> dict[str, dict[str, float]]:
    """`{order name: {metric: value}}` for each named order over the same rows."""
    return {name: order_metrics(dataset, scores, k).as_dict(k) for name, scores in orders.items()}
