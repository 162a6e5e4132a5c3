"""The leave-last-out baselines on small synthetic sequences with a planted pattern.

Items 0 and 1 are a pair: a third of the users meet both (in either order), every seventh user
only one of them. Item 2 is only ever someone's last item, so only a model that peeks at the test
targets could score it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from feature_repo.sequences import Sequences
from training.leave_last_out import LeaveLastOut, Task, evaluate_lists
from training.next_item_baselines import (
    LIST_DEPTH,
    KnnConfig,
    als_top,
    choose,
    item_knn_top,
    popularity_top,
    tune,
)

ITEMS = 60
PAIR = (0, 1)
LAST_ONLY = 2
NOISE = np.arange(3, ITEMS)


def _sequences(users: int = 150, seed: int = 0) -> Sequences:
    """`users` sequences of 4-9 distinct noise items plus the planted ones, oldest first."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        items = list(rng.choice(NOISE, rng.integers(3, 7), replace=False))
        if user % 3 == 0:
            at = int(rng.integers(0, len(items)))
            items[at:at] = list(PAIR if user % 2 else PAIR[::-1])
        elif user % 7 == 0:
            items.insert(int(rng.integers(0, len(items))), PAIR[user % 2])
        if user % 5 == 0:
            items.append(LAST_ONLY)
        rows += [(f"U{user:03d}", f"I{item:02d}", pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=n))
                 for n, item in enumerate(items)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return Sequences.of(frame, [f"I{i:02d}" for i in range(ITEMS)])


@pytest.fixture(scope="module")
def split() -> LeaveLastOut:
    return LeaveLastOut.of(_sequences())


BASELINES: dict[str, Callable[[Task], np.ndarray]] = {"popularity": popularity_top, "item_knn": item_knn_top, "als": als_top}


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("task_name", ["validation", "test"])
def test_lists_have_twenty_distinct_items_none_from_the_users_history(split: LeaveLastOut, name: str, task_name: str) -> None:
    task: Task = getattr(split, task_name)
    top = BASELINES[name](task)
    assert top.shape == (len(task.users), LIST_DEPTH)
    assert (top >= 0).all() and (top < ITEMS).all()
    for row, history in zip(top, task.history()):
        assert len(set(row.tolist())) == LIST_DEPTH
        assert not set(row.tolist()) & set(history.tolist())


def test_item_knn_ranks_the_planted_companion_first(split: LeaveLastOut) -> None:
    top = item_knn_top(split.test)
    checked = 0
    for row, history in zip(top, split.test.history()):
        held = set(history.tolist()) & set(PAIR)
        if len(held) == 1:
            (other,) = set(PAIR) - held
            assert row[0] == other
            checked += 1
    assert checked >= 5  # the fixture really has users holding half of the pair


@pytest.mark.parametrize("name", ["popularity", "als"])
def test_an_item_met_only_as_a_last_item_is_never_recommended_on_test(split: LeaveLastOut, name: str) -> None:
    # LAST_ONLY is the test target of a fifth of the users: a model learning from anything but
    # test.train would see it as a popular item.
    assert (split.test.targets == LAST_ONLY).sum() >= 20
    assert not (BASELINES[name](split.test) == LAST_ONLY).any()


def test_a_catalog_shorter_than_the_list_pads_with_minus_one_instead_of_history() -> None:
    rows = [(f"U{u}", f"I{i}", pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=i))
            for u in range(6) for i in range(u % 3, u % 3 + 8)]
    seqs = Sequences.of(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]), [f"I{i}" for i in range(24)])
    task = LeaveLastOut.of(seqs).test
    for top_of in BASELINES.values():
        top = top_of(task)
        for row, history in zip(top, task.history()):
            kept = row[row >= 0]
            assert len(kept) == 24 - len(history) and (row[len(kept):] == -1).all()
            assert not set(kept.tolist()) & set(history.tolist())


def _oracle_lists(task: Task, first: np.ndarray) -> np.ndarray:
    """Popularity lists with `first[u]` moved to the front of user u's list (unless it is history)."""
    top = popularity_top(task)
    for row, item, history in zip(top, first, task.history()):
        if item not in history:
            rest = [r for r in row if r != item][: LIST_DEPTH - 1]
            row[:] = [item, *rest]
    return top


def test_the_setting_is_chosen_on_validation_and_refit_on_test_train(split: LeaveLastOut) -> None:
    # "val" knows the validation targets, "test" the test targets: a choice made on the wrong task
    # would pick "test"; a refit that reused the validation lists would not be called on split.test.
    known = {"val": split.validation.targets, "test": split.test.targets}
    calls: list[tuple[str, Task]] = []

    def top_of(task: Task, config: str) -> np.ndarray:
        calls.append((config, task))
        return popularity_top(task) if config == "pop" else _oracle_lists(task, known[config])

    tuned = tune(split, ("pop", "test", "val"), top_of)
    assert tuned.config == "val"
    assert tuned.validation["recall@10"] == 1.0
    assert [config for config, _ in tuned.grid] == ["pop", "test", "val"]
    assert tuned.grid[1][1]["recall@10"] < 1.0
    assert [task for _, task in calls[:3]] == [split.validation] * 3
    assert calls[3][0] == "val" and calls[3][1] is split.test
    assert tuned.test_top.shape == (len(split.test.users), LIST_DEPTH)


def test_choose_takes_the_shrinkage_with_the_best_validation_recall(split: LeaveLastOut) -> None:
    grid = (KnnConfig(0.0), KnnConfig(2.0), KnnConfig(50.0))
    task = split.validation
    figures = {c: evaluate_lists(item_knn_top(task, c), task.targets, ITEMS) for c in grid}
    assert len({f["recall@10"] for f in figures.values()}) > 1  # the grid really matters here
    expected = max(grid, key=lambda c: (figures[c]["recall@10"], figures[c]["ndcg@10"]))
    config, chosen, table = choose(task, grid, item_knn_top)
    assert config == expected
    assert chosen == figures[expected]
    assert dict(table) == figures
