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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from ranx import Qrels, Run, evaluate

# Cut-offs of the published tables.
CUTOFFS = (5, 10, 20)
METRICS = tuple(f"{name}@{k}" for k in CUTOFFS for name in ("recall", "ndcg"))
# Coverage reads the top-10 lists: the list a shopper sees.
COVERAGE_CUTOFF = 10
# Fewest items a user needs to give a validation item, a test item and some history.
MIN_ITEMS = 3


@dataclass(frozen=True)
class Sequences:
    """Every user's distinct items in order, as catalog rows in one flat array (CSR layout).

    Attributes:
        item_ids: [items] catalog ids; an item's row is its code everywhere.
        user_ids: [users] ids, in the order of `offsets`.
        offsets: [users + 1] user u's items are items[offsets[u]:offsets[u + 1]], oldest first.
        items: [interactions] catalog rows.
    """

    item_ids: np.ndarray
    user_ids: np.ndarray
    offsets: np.ndarray
    items: np.ndarray

    @classmethod
    def of(cls, interactions: pd.DataFrame, catalog_ids: Sequence[str] | pd.Series) -> "Sequences":
        """From rows of user_id, item_id, timestamp (any order of users; ties keep the row order).

        Items outside `catalog_ids` are an error: the contract's ingest already rejects them.
        """
        item_ids = np.asarray([str(i) for i in catalog_ids], dtype=object)
        rows = pd.Index(item_ids)
        frame = interactions[["user_id", "item_id", "timestamp"]].copy()
        # Sorted and split as strings, so the order and the offsets agree whatever the ids' type.
        frame["user_id"] = frame["user_id"].astype(str)
        frame["row"] = rows.get_indexer(frame["item_id"].astype(str))
        if (frame["row"] < 0).any():
            missing = frame.loc[frame["row"] < 0, "item_id"].iloc[0]
            raise ValueError(f"interactions: item_id {missing!r} is not in the catalog")
        frame["order"] = np.arange(len(frame))
        frame = frame.sort_values(["user_id", "timestamp", "order"], kind="stable")
        frame = frame.drop_duplicates(["user_id", "row"], keep="first")
        users, starts = np.unique(frame["user_id"].to_numpy(), return_index=True)
        offsets = np.r_[starts, len(frame)].astype(np.int64)
        return cls(item_ids, users.astype(object), offsets, frame["row"].to_numpy(np.int64))

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def user(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    def truncated(self, drop_last: int, users: np.ndarray | None = None) -> "Sequences":
        """The same users with the last `drop_last` items of `users` (default: all) removed."""
        cut = np.zeros(len(self.user_ids), dtype=np.int64)
        cut[slice(None) if users is None else users] = drop_last
        lengths = np.maximum(self.lengths - cut, 0)
        starts = self.offsets[:-1]
        # Position of every kept item: its user's start plus its index among that user's kept items.
        keep = np.repeat(starts, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        return Sequences(self.item_ids, self.user_ids, offsets, self.items[keep.astype(np.int64)])

    def interactions(self) -> pd.DataFrame:
        """user (row), item (row), position: the long form, for count-based models."""
        users = np.repeat(np.arange(len(self.user_ids)), self.lengths)
        positions = np.arange(len(self.items)) - np.repeat(self.offsets[:-1], self.lengths)
        return pd.DataFrame({"user": users, "item": self.items, "position": positions})


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
