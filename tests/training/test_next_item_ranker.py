"""The next-item ranker's boosting: within the tree budget, a larger learning rate only where the budget stopped it still gaining."""

from __future__ import annotations

import numpy as np
import pytest

import training.train_next_item as train_next_item
from ranking.next_item import FEATURE_NAMES, Candidates
from training.train_next_item import RANKER_RATES, fit_ranker


def requests(users: int, signal: float, seed: int = 0, per_user: int = 20) -> tuple[Candidates, np.ndarray]:
    """`per_user` candidates a user, the target the one with the largest sum of the first 5 features when `signal` is large."""
    rng = np.random.default_rng(seed)
    rows = np.arange(users * per_user).reshape(users, per_user) % 500
    matrix = rng.normal(size=(users * per_user, len(FEATURE_NAMES))).astype(np.float32)
    noisy = matrix[:, :5].sum(axis=1).reshape(users, per_user) * signal + rng.normal(size=(users, per_user))
    targets = rows[np.arange(users), noisy.argmax(axis=1)]
    found = Candidates(rows, matrix, np.zeros(len(matrix), np.float32), np.repeat(np.arange(users), per_user), rows.ravel())
    return found, targets


@pytest.mark.parametrize("budget, signal, tried", [(1, 2.0, len(RANKER_RATES)), (300, 0.0, 1)], ids=["gaining-at-the-budget", "stopped-inside"])
def test_a_larger_rate_is_tried_only_where_the_budget_stopped_the_ranker_still_gaining(
    monkeypatch: pytest.MonkeyPatch, budget: int, signal: float, tried: int
) -> None:
    # A budget of one tree: every rate is best at its last tree, so each is tried in turn. Labels
    # without a signal: the held-out NDCG stops improving long before 300 trees at the first rate.
    monkeypatch.setattr(train_next_item, "RANKER_ROUNDS", budget)
    monkeypatch.setattr(train_next_item, "RANKER_PATIENCE", 20)
    booster, rate, rates = fit_ranker([requests(2000, signal)], threads=1)
    assert rates is not None and list(rates) == list(RANKER_RATES[:tried])
    assert [r["trees"] == budget for r in rates.values()] == [True] * (tried - 1) + [tried == len(RANKER_RATES)]
    best = max(r["ndcg@10"] for r in rates.values())
    assert rates[rate]["ndcg@10"] == best and rate == min(r for r, v in rates.items() if v["ndcg@10"] == best)  # ties: the first
    assert booster.best_iteration == rates[rate]["trees"] <= budget
    # The refit trains exactly the rounds at the rate it is given.
    again, again_rate, none = fit_ranker([requests(200, signal, seed=1)], rounds=2, learning_rate=0.1, threads=1)
    assert (again.num_trees(), again_rate, none) == (2, 0.1, None)
