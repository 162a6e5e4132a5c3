"""Vitrine's benchmark rows: the reranked union beats its sources, and one user's features equal the batch's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_repo.sequences import Sequences
from ranking.next_item import candidates
from ranking.sequence_tower import SequenceTowerConfig
from training.leave_last_out import LeaveLastOut
from training.next_item_evaluation import vitrine_rows
from training.train_next_item import NextItemConfig, fit_sources, retriever_of
from training.train_sequence import SequenceTrainConfig, fit

N_ITEMS = 60
SMALL = SequenceTowerConfig(embedding_dim=32, layers=1, heads=1, max_length=8, dropout=0.0, use_content=False)
FAST = SequenceTrainConfig(max_epochs=30, patience=3, batch_size=64, learning_rate=5e-3)
CONFIG = NextItemConfig(tower=SMALL, train=FAST, threads=1)


def noisy_cycle_shop(users: int = 500, seed: int = 0) -> Sequences:
    """Walks of i -> i + 1 (or i + 2 one time in four), so no single source is perfect."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        item, length = int(rng.integers(N_ITEMS)), int(rng.integers(5, 10))
        for step in range(length):
            rows.append((f"U{u:04d}", f"I{item:03d}", pd.Timestamp("2026-01-01") + pd.Timedelta(days=step)))
            item = (item + (2 if rng.random() < 0.25 else 1)) % N_ITEMS
    return Sequences.of(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]), [f"I{i:03d}" for i in range(N_ITEMS)])


@pytest.fixture(scope="module")
def split() -> LeaveLastOut:
    return LeaveLastOut.of(noisy_cycle_shop())


def test_every_row_is_named_vitrine_and_the_rerank_is_no_worse_than_its_best_source(split: LeaveLastOut) -> None:
    rows = vitrine_rows(split, config=CONFIG, show_progress=False)
    assert all("vitrine" in name for name in rows)
    assert set(rows) >= {"vitrine", "vitrine_sequence", "vitrine_covisitation", "vitrine_popularity", "vitrine_sources_merged"}
    full = rows["vitrine"]["test"]["recall@5"]
    # The rerank may trail its best source by a request or two on 500 users, no more.
    assert full >= max(rows[name]["test"]["recall@5"] for name in rows if name != "vitrine") - 0.02
    assert full > rows["vitrine_popularity"]["test"]["recall@5"] + 0.3
    assert rows["vitrine"]["candidate_recall"] >= full


def test_one_users_candidates_and_features_equal_the_batch_row(split: LeaveLastOut) -> None:
    """Serving computes one user at a time, training a whole task at once: the same numbers (skew test)."""
    task = split.test
    tower = fit(task.train, epochs=2, model_config=SMALL, train_config=FAST)
    sources = fit_sources(task.train, retriever_of(tower.model, task.train))
    histories = task.history()
    batch = candidates(sources, histories)
    for user in (0, 7, 42):
        alone = candidates(sources, [histories[user]])
        np.testing.assert_array_equal(alone.items, batch.items[batch.users == user])
        # Float sums chunked differently: equal to float32 rounding.
        pd.testing.assert_frame_equal(alone.frame(), batch.frame()[batch.users == user].reset_index(drop=True),
                                      rtol=1e-5, atol=1e-6)
