"""Baselines the two-tower retriever must beat: popularity and `implicit`'s ALS.

Both score the whole catalog for each test user from the training interactions of a `Split`
(catalog rows as columns), so they go through the same full-ranking evaluation as the towers.

- Popularity: weighted interaction count of each item in training; the same list for everyone.
- ALS (Hu, Koren & Volinsky 2008, `implicit.cpu.als`): confidence 1 + alpha * weight on the user x
  item matrix. Its hyper-parameters are picked on a leave-last-out split *of the training data*
  (never the test), over a small grid. Users ALS never saw get the popularity scores, as a
  production ALS would serve them; items it never saw have no factors and rank last.

Example:
    scores = popularity_scores(split)                    # [users, items]
    als = AlsBaseline.tuned(split.train, split.catalog)
    scores = als.scores(split.test_users["user_id"])
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from training.retrieval_metrics import top_k
from training.retriever_data import Split

# ALS grid: latent factors x L2 regularisation x confidence scale. Small, because the catalogs are.
ALS_FACTORS = (32, 64, 128)
ALS_REGULARIZATION = (0.01, 0.1, 1.0)
ALS_ALPHA = (1.0, 10.0)
# Sweeps over the users and items; ALS converges in ~15 on implicit data.
ALS_ITERATIONS = 15
# Depth of the lists tuning compares (Recall@100 is the headline metric).
TUNING_K = 100


@dataclass(frozen=True)
class AlsConfig:
    """One ALS setting."""

    # Latent dimension.
    factors: int = 64
    # L2 weight on the factors.
    regularization: float = 0.1
    # Confidence per unit of interaction weight.
    alpha: float = 10.0
    # ALS sweeps.
    iterations: int = ALS_ITERATIONS
    # Random seed of the initial factors.
    seed: int = 0


def popularity(train: pd.DataFrame, catalog: pd.DataFrame) -> np.ndarray:
    """[items] weighted interaction count of each catalog row in `train`."""
    rows = {item: row for row, item in enumerate(catalog["item_id"].astype(str))}
    counts = train.groupby("item_id")["weight"].sum()
    scores = np.zeros(len(catalog), dtype=np.float32)
    for item, count in counts.items():
        if item in rows:
            scores[rows[item]] = count
    return scores


def popularity_scores(split: Split) -> np.ndarray:
    """[test users, items]: the same popularity list for every test user."""
    return np.tile(popularity(split.train, split.catalog), (len(split.test_users), 1))


class AlsBaseline:
    """`implicit` ALS on the training interactions of a split."""

    def __init__(self, train: pd.DataFrame, catalog: pd.DataFrame, config: AlsConfig = AlsConfig()) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        self.config = config
        self.item_rows = {item: row for row, item in enumerate(catalog["item_id"].astype(str))}
        users = sorted(train["user_id"].unique())
        self.user_rows = {user: row for row, user in enumerate(users)}
        matrix = _matrix(train, self.user_rows, self.item_rows)
        # implicit runs its own threads; BLAS's pool under it only oversubscribes the cores (and it warns so).
        with threadpool_limits(1, "blas"):
            self.model = AlternatingLeastSquares(
                factors=config.factors,
                regularization=config.regularization,
                alpha=config.alpha,
                iterations=config.iterations,
                random_state=config.seed,
            )
            self.model.fit(matrix, show_progress=False)
        self.fallback = popularity(train, catalog)
        # An item without interactions has an all-zero column: its 0 score would sit mid-list by accident.
        self.unseen = np.asarray(matrix.sum(axis=0)).ravel() == 0

    @classmethod
    def tuned(cls, train: pd.DataFrame, catalog: pd.DataFrame) -> "AlsBaseline":
        """Pick the grid point with the best Recall@100 on a leave-last-out split of `train`, refit on all of `train`."""
        first = train.drop_duplicates(["user_id", "item_id"], keep="first")
        many = first.groupby("user_id")["item_id"].transform("size") >= 2
        held = first[many].groupby("user_id").tail(1)
        pairs = pd.MultiIndex.from_frame(train[["user_id", "item_id"]])
        inner = train[~pairs.isin(pd.MultiIndex.from_frame(held[["user_id", "item_id"]]))]
        rows = {item: row for row, item in enumerate(catalog["item_id"].astype(str))}
        seen = inner.groupby("user_id")["item_id"].agg(set)
        history = [np.array([rows[i] for i in seen.get(u, set())], dtype=np.int64) for u in held["user_id"]]
        targets = np.array([rows[i] for i in held["item_id"]])
        best, best_recall = AlsConfig(), -1.0
        for factors, reg, alpha in product(ALS_FACTORS, ALS_REGULARIZATION, ALS_ALPHA):
            config = AlsConfig(factors=factors, regularization=reg, alpha=alpha)
            top = top_k(cls(inner, catalog, config).scores(held["user_id"]), history, TUNING_K)
            recall = float(np.mean([t in row for t, row in zip(targets, top)]))
            if recall > best_recall:
                best, best_recall = config, recall
        return cls(train, catalog, best)

    def scores(self, users: pd.Series | list[str]) -> np.ndarray:
        """[users, items] ALS scores; popularity for users absent from training."""
        items = np.asarray(self.model.item_factors)
        factors = np.asarray(self.model.user_factors)
        out = np.empty((len(users), len(self.item_rows)), dtype=np.float32)
        for n, user in enumerate(users):
            row = self.user_rows.get(user)
            out[n] = self.fallback if row is None else factors[row] @ items.T
        out[:, self.unseen] = -np.inf
        return out


def _matrix(train: pd.DataFrame, user_rows: dict[str, int], item_rows: dict[str, int]) -> sp.csr_matrix:
    """User x item CSR of summed weights (implicit >= 0.5 takes users as rows)."""
    summed = train.groupby(["user_id", "item_id"])["weight"].sum().reset_index()
    rows = summed["user_id"].map(user_rows).to_numpy()
    cols = summed["item_id"].map(item_rows).to_numpy()
    return sp.csr_matrix(
        (summed["weight"].to_numpy(np.float32), (rows, cols)), shape=(len(user_rows), len(item_rows))
    )
