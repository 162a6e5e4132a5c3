"""The sequence retriever learns what comes next, reads only the past, and refits for the chosen epochs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from feature_repo.sequences import Sequences
from ranking.sequence_tower import UNKNOWN_ROW, SequenceTower, SequenceTowerConfig, pad_histories
from training.leave_last_out import LeaveLastOut
from training.train_sequence import SequenceTrainConfig, _NegativeSampler, _step_loss, evaluate, fit

N_ITEMS = 40
SMALL = SequenceTowerConfig(embedding_dim=32, layers=1, heads=1, max_length=8, dropout=0.0, use_content=False)
FAST = SequenceTrainConfig(max_epochs=40, patience=3, batch_size=64, learning_rate=5e-3, threads=1)


def cyclic_shop(users: int = 300, seed: int = 0) -> Sequences:
    """Each user walks the catalog in a fixed cycle (i -> i + 1) from a random start: the next item is knowable."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        start, length = rng.integers(N_ITEMS), rng.integers(5, 10)
        for step in range(length):
            rows.append((f"U{u:04d}", f"I{(start + step) % N_ITEMS:03d}", pd.Timestamp("2026-01-01") + pd.Timedelta(days=step)))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return Sequences.of(frame, [f"I{i:03d}" for i in range(N_ITEMS)])


@pytest.fixture(scope="module")
def split() -> LeaveLastOut:
    return LeaveLastOut.of(cyclic_shop())


@pytest.fixture(scope="module")
def chosen(split: LeaveLastOut):
    return fit(split.validation.train, validation=split.validation, model_config=SMALL, train_config=FAST)


def test_the_tower_learns_the_next_item_far_above_chance(split: LeaveLastOut, chosen) -> None:
    figures = evaluate(chosen.model, split.test, split.test.train)
    # Chance for recall@5 over 40 items (history excluded) is about 5 / 33.
    assert figures["recall@5"] > 0.8


def test_early_stopping_keeps_the_best_epoch(split: LeaveLastOut, chosen) -> None:
    best = max(chosen.curve, key=lambda row: row["recall@10"])
    assert chosen.epochs == best["epoch"]
    assert evaluate(chosen.model, split.validation, split.validation.train)["recall@10"] == pytest.approx(best["recall@10"])


def test_refit_trains_exactly_the_chosen_epochs_on_every_held_in_item(split: LeaveLastOut, chosen) -> None:
    refit = fit(split.test.train, epochs=chosen.epochs, model_config=SMALL, train_config=FAST)
    assert refit.epochs == chosen.epochs and refit.curve == []
    assert evaluate(refit.model, split.test, split.test.train)["recall@5"] > 0.8


def test_a_state_reads_only_the_items_before_it() -> None:
    torch.manual_seed(0)
    model = SequenceTower(SMALL, N_ITEMS).eval()
    rows, lengths = pad_histories([np.array([3, 4, 5, 6, 7])], SMALL.max_length)
    changed = rows.clone()
    changed[0, 3:] = torch.tensor([20, 30])
    with torch.no_grad():
        before, after = model.hidden(rows, lengths), model.hidden(changed, lengths)
    # Positions 0..2 saw the same items; float noise only (the same kernels on the same shapes).
    torch.testing.assert_close(before[0, :3], after[0, :3], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(before[0, 3:], after[0, 3:])


def test_sampled_softmax_learns_the_same_pattern(split: LeaveLastOut) -> None:
    sampled = SequenceTrainConfig(max_epochs=40, patience=3, batch_size=64, learning_rate=5e-3, threads=1,
                                  full_softmax_max_items=10, sampled_negatives=16)
    result = fit(split.validation.train, validation=split.validation, model_config=SMALL, train_config=sampled)
    assert result.summary()["validation"]["recall@5"] > 0.6


def test_an_item_never_trained_on_is_reachable_through_its_content(split: LeaveLastOut) -> None:
    rng = np.random.default_rng(1)
    content = rng.normal(size=(N_ITEMS, 16)).astype(np.float32)
    config = SequenceTowerConfig(embedding_dim=32, layers=1, heads=1, max_length=8, dropout=0.0, use_content=True)
    model = SequenceTower(config, N_ITEMS, content).eval()
    known = torch.ones(N_ITEMS, dtype=torch.bool)
    known[7] = False
    with torch.no_grad():
        vectors = model.item_vectors(known=known)
        unknown_only = model.id_weight[1]
    # The cold item has the unknown row plus its own content projection, distinct from any other cold item.
    assert not torch.allclose(vectors[7], unknown_only)
    known[8] = False
    with torch.no_grad():
        assert not torch.allclose(model.item_vectors(known=known)[7], model.item_vectors(known=known)[8])


@pytest.mark.parametrize("full_softmax_max_items", [N_ITEMS, 10], ids=["full", "sampled"])
def test_target_id_dropout_trains_the_unknown_row_as_an_output(split: LeaveLastOut, full_softmax_max_items: int) -> None:
    # Inputs keep their ids (no input dropout): only a target scored as a cold item can reach the unknown row.
    content = np.random.default_rng(2).normal(size=(N_ITEMS, 16)).astype(np.float32)
    config = SequenceTowerConfig(embedding_dim=32, layers=1, heads=1, max_length=8, dropout=0.0, use_content=True)
    train = split.validation.train
    batch = [train.user(u) for u in range(64)]
    known = torch.ones(N_ITEMS, dtype=torch.bool)
    schedule = SequenceTrainConfig(full_softmax_max_items=full_softmax_max_items, sampled_negatives=16)
    sampler = _NegativeSampler(train, schedule) if N_ITEMS > full_softmax_max_items else None
    gradients = []
    for target_dropout in (0.0, 0.5):
        torch.manual_seed(0)
        model = SequenceTower(config, N_ITEMS, content)
        loss, _ = _step_loss(model, batch, known, (0.0, target_dropout), sampler, np.random.default_rng(0))
        loss.backward()
        gradients.append(model.id_weight.grad[UNKNOWN_ROW].abs().sum().item())
    assert gradients[0] == 0.0
    assert gradients[1] > 0.0
