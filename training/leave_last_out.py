"""The public leave-last-out protocol: each user's last item is the test, the one before it validation.

This is the protocol of the sequential-recommendation tables (SASRec, BERT4Rec, TIGER, eSASRec):
full ranking over the whole catalog, the user's history excluded, Recall and NDCG at 5/10/20 and
catalog coverage, all from `ranx`.

A user's sequence is their distinct items in the order first met (timestamp, then the order of
the stored log, so a shop whose dates are synthetic keeps its real order). Two splits come from it:

- `validation`: history = all but the last two items, target = the second to last; settings are
  chosen here and nowhere else.
- `test`: history = all but the last item, target = the last. What the served models learn from
  (the "held-in" events) is exactly these histories: the refit after validation sees them all.

Users with fewer than 3 items are in neither split's targets but their items stay in training.

Example:
    seqs = Sequences.of(positive_interactions(read_events(data)), read_items(data)["item_id"])
    split = LeaveLastOut.of(seqs)
    figures = evaluate_lists(top, split.test.targets, seqs.n_items)   # {"recall@10": ..., ...}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ranx import Qrels, Run, evaluate

from feature_repo.sequences import Sequences

# Cut-offs of the published tables.
CUTOFFS = (5, 10, 20)
METRICS = tuple(f"{name}@{k}" for k in CUTOFFS for name in ("recall", "ndcg"))
# Coverage reads the top-10 lists: the list a shopper sees.
COVERAGE_CUTOFF = 10
# Fewest items a user needs to give a validation item, a test item and some history.
MIN_ITEMS = 3


@dataclass(frozen=True)
class Task:
    """One evaluation: who is scored, what they have done, what they should find next."""

    # Rows of the sequences' users that have a target here.
    users: np.ndarray
    # What every model may learn from (all users, targets removed).
    train: Sequences
    # [len(users)] the held-out item (catalog row) of each scored user.
    targets: np.ndarray

    def history(self) -> list[np.ndarray]:
        """Per scored user, the catalog rows to exclude from the ranking (their training items)."""
        return [self.train.user(int(u)) for u in self.users]


@dataclass(frozen=True)
class LeaveLastOut:
    """The validation and test tasks of one set of sequences."""

    sequences: Sequences
    validation: Task
    test: Task

    @classmethod
    def of(cls, sequences: Sequences) -> "LeaveLastOut":
        scored = np.flatnonzero(sequences.lengths >= MIN_ITEMS)
        last = sequences.offsets[1:] - 1
        # Only scored users lose their targets: a shorter user's items all train.
        test = Task(scored, sequences.truncated(1, scored), sequences.items[last[scored]])
        validation = Task(scored, sequences.truncated(2, scored), sequences.items[last[scored] - 1])
        return cls(sequences, validation, test)


def evaluate_lists(top: np.ndarray, targets: np.ndarray, n_items: int) -> dict[str, float]:
    """Recall and NDCG at 5/10/20 (ranx) of `top` [users, >= 20] against one target each, and coverage@10.

    A list shorter than 20 or padded with -1 simply misses; it is never an error.
    """
    qrels = Qrels({str(u): {str(int(t)): 1} for u, t in enumerate(targets)})
    depth = top.shape[1]
    run = Run({str(u): {str(int(r)): float(depth - n) for n, r in enumerate(row) if r >= 0} or {"-1": 0.0}
               for u, row in enumerate(top)})
    found = evaluate(qrels, run, list(METRICS), make_comparable=True)
    head = top[:, :COVERAGE_CUTOFF]
    coverage = len(np.unique(head[head >= 0])) / max(n_items, 1)
    return {**{name: round(float(found[name]), 5) for name in METRICS},
            f"coverage@{COVERAGE_CUTOFF}": round(float(coverage), 5), "users": len(targets)}
