"""The leave-last-out split: the last item tests, the one before validates, and nothing leaks between them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from feature_repo.sequences import Sequences
from training.leave_last_out import LeaveLastOut, evaluate_lists

CATALOG = ["a", "b", "c", "d", "e", "f"]


def shop() -> Sequences:
    day = pd.Timestamp("2026-01-01")
    rows = [
        ("u1", "a", day), ("u1", "b", day + pd.Timedelta(days=1)), ("u1", "c", day + pd.Timedelta(days=2)),
        ("u1", "d", day + pd.Timedelta(days=3)),
        # Same timestamp: the log's order decides; a repeat keeps its first position.
        ("u2", "f", day), ("u2", "e", day), ("u2", "e", day + pd.Timedelta(days=1)), ("u2", "a", day + pd.Timedelta(days=2)),
        ("u3", "c", day), ("u3", "d", day + pd.Timedelta(days=1)),
    ]
    # Users interleaved and out of time order, as a log may be; within a tie the log order decides.
    frame = pd.DataFrame(rows[::-1], columns=["user_id", "item_id", "timestamp"])
    return Sequences.of(frame, CATALOG)


def test_sequences_follow_time_and_keep_each_item_once() -> None:
    seqs = shop()
    by_user = {u: [CATALOG[i] for i in seqs.user(n)] for n, u in enumerate(seqs.user_ids)}
    assert by_user["u1"] == ["a", "b", "c", "d"]
    assert by_user["u2"] == ["e", "f", "a"]
    assert by_user["u3"] == ["c", "d"]


def test_test_and_validation_targets_are_the_last_two_items_and_never_in_training() -> None:
    seqs = shop()
    split = LeaveLastOut.of(seqs)
    names = list(seqs.user_ids)
    scored = [names[u] for u in split.test.users]
    assert scored == ["u1", "u2"]  # u3 has two items: too few for both targets
    assert [CATALOG[t] for t in split.test.targets] == ["d", "a"]
    assert CATALOG[split.validation.targets[0]] == "c"
    for task in (split.validation, split.test):
        for target, history in zip(task.targets, task.history()):
            assert target not in history
    # The test's training keeps the validation item: the refit sees every held-in interaction.
    assert split.validation.targets[0] in split.test.history()[0]
    # u3's two items still train every model.
    assert len(split.test.train.user(names.index("u3"))) == 2
    assert len(split.validation.train.user(names.index("u3"))) == 2


def test_metrics_count_a_hit_by_its_rank() -> None:
    top = np.array([[3, 1, -1] + [-1] * 17, [5, 4, 0] + [-1] * 17])
    figures = evaluate_lists(top, np.array([3, 0]), n_items=6)
    assert figures["recall@5"] == 1.0
    assert figures["ndcg@5"] == round((1.0 + 1 / np.log2(4)) / 2, 5)
    assert figures["coverage@10"] == round(5 / 6, 5)
