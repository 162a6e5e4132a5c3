"""Fit the sequence retriever (`ranking.sequence_tower.SequenceTower`) with the next-item objective.

Every position of a sequence is trained in one pass under the causal mask (not one sample per
prefix): each user's last `max_length + 1` items give `max_length` (input, next item) pairs at
once. The loss is the softmax cross-entropy of the next item against every item of the catalog
(full softmax); past `FULL_SOFTMAX_MAX_ITEMS` items, against a shared sample of negatives drawn by
popularity, with log Q subtracted from their logits so that the estimate stays unbiased.

Epochs are chosen on a validation task (early stopping on its Recall@10), then `refit` trains a
fresh model on every held-in interaction for exactly that many epochs: the served model has seen
each user's newest items, which are the best evidence of what comes next.

Example:
    result = fit(split.validation.train, content, validation=split.validation)
    model = fit(split.test.train, content, epochs=result.epochs).model
    top = recommend_top(model, split.test.history(), k=20)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from feature_repo.sequences import Sequences
from ranking.sequence_tower import (
    FULL_SOFTMAX_MAX_ITEMS,
    SequenceTower,
    SequenceTowerConfig,
    pad_histories,
)
from training.leave_last_out import Task, evaluate_lists
from training.retrieval_metrics import top_k
from vitrine.errors import InvalidInput

# Users scored per matrix product at evaluation ([users, items] floats).
SCORE_CHUNK = 1024
# Metric that early stopping and every comparison on validation read.
SELECTION_METRIC = "recall@10"
# Depth of the lists evaluated.
LIST_DEPTH = 20


@dataclass(frozen=True)
class SequenceTrainConfig:
    """How the tower is fitted."""

    # Most epochs; early stopping usually ends sooner.
    max_epochs: int = 200
    # Validation checks without a gain before stopping. 10 (RecBole's default), not 5: on a small
    # shop's validation (458 Gift Cards users, Recall@10 moving by ~.02 an epoch) 5 stopped fits at
    # 3-8 epochs whose peers went on to 29-52; Toys' chosen epochs (18) are the same with either.
    patience: int = 10
    # Sequences per step.
    batch_size: int = 128
    # Adam's step size (SASRec's).
    learning_rate: float = 1e-3
    # Share of input ids replaced by the unknown row (content must stand in for them): only with content.
    item_id_dropout: float = 0.1
    # Share of target positions whose item is scored through the unknown row (its content alone)
    # instead of its id: the unknown row is otherwise never an output, so an item first seen after
    # training (a cold catalog row) never reached a list. Only with content.
    target_id_dropout: float = 0.1
    # Catalogs larger than this train with sampled negatives instead of the full softmax.
    full_softmax_max_items: int = FULL_SOFTMAX_MAX_ITEMS
    # Negatives per step in the sampled case.
    sampled_negatives: int = 8192
    # Train on every transition of a long user (windows of max_length + 1 items back to the first
    # item), as RecBole's SASRec does with its prefixes, instead of only the last max_length + 1
    # items: the 5% of Toys' users longer than the window held 12% of its transitions (30% on the
    # synthetic shop). See `SequenceTowerConfig.feedforward_dim` for the figures.
    all_transitions: bool = True
    # Decoupled weight decay (AdamW); 0 = plain Adam.
    weight_decay: float = 0.0
    # Label smoothing of the next-item cross-entropy.
    label_smoothing: float = 0.0
    # Seed of the initial weights, the order of sequences and the dropouts.
    seed: int = 0
    # Intra-op threads. One: on 2 cores shared with anything else, OpenMP's spinning threads made a
    # step 10x slower (a 2,304-row embedding lookup took 23 ms instead of 0.05 ms).
    threads: int = 1


@dataclass
class FitResult:
    """A fitted tower and how it got there."""

    model: SequenceTower
    # Epochs trained (the best epoch when validation chose it).
    epochs: int
    # Validation figures per epoch, when a validation task was given.
    curve: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    examples_per_second: float = 0.0

    def summary(self) -> dict[str, Any]:
        best = max(self.curve, key=lambda row: row[SELECTION_METRIC]) if self.curve else {}
        return {"epochs": self.epochs, "validation": best, "seconds": round(self.seconds, 1),
                "examples_per_second": round(self.examples_per_second)}


def fit(
    train: Sequences,
    content: np.ndarray | None = None,
    *,
    validation: Task | None = None,
    epochs: int | None = None,
    model_config: SequenceTowerConfig = SequenceTowerConfig(),
    train_config: SequenceTrainConfig = SequenceTrainConfig(),
    show_progress: bool = False,
) -> FitResult:
    """Train a tower on `train`; with `validation`, stop early and keep the best epoch's weights.

    Args:
        train: the sequences to learn from.
        content: [items, C] item content vectors, or None.
        validation: scored after every epoch; needs `epochs` to be None.
        epochs: train exactly this many epochs (the refit); None: up to `max_epochs` with early stopping.

    Raises:
        InvalidInput: no sequence has two items (nothing to predict).
    """
    if (validation is None) == (epochs is None):
        raise ValueError("fit: give either a validation task (early stopping) or a number of epochs (refit)")
    torch.manual_seed(train_config.seed)
    torch.set_num_threads(train_config.threads)
    rng = np.random.default_rng(train_config.seed)
    windows = _training_windows(train, model_config.max_length, train_config.all_transitions)
    if not windows:
        raise InvalidInput("sequence retriever: no user has two items in order; nothing to learn the next item from")
    model = SequenceTower(model_config, train.n_items, content)
    known = torch.from_numpy(np.bincount(train.items, minlength=train.n_items) > 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.learning_rate, weight_decay=train_config.weight_decay)
    sampler = _NegativeSampler(train, train_config) if train.n_items > train_config.full_softmax_max_items else None
    with_content = model.content_projection is not None
    dropouts = (train_config.item_id_dropout, train_config.target_id_dropout) if with_content else (0.0, 0.0)

    curve: list[dict[str, float]] = []
    best_state, best_score, best_epoch, stale = None, -1.0, 0, 0
    began, positions = time.perf_counter(), 0
    total = epochs if epochs is not None else train_config.max_epochs
    for epoch in range(1, total + 1):
        model.train()
        order = rng.permutation(len(windows))
        losses = []
        for start in range(0, len(order), train_config.batch_size):
            batch = [windows[i] for i in order[start : start + train_config.batch_size]]
            loss, count = _step_loss(model, batch, known, dropouts, sampler, rng, train_config.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            positions += count
        if validation is None:
            _progress(show_progress, epoch, float(np.mean(losses)), None)
            continue
        figures = evaluate(model, validation, train)
        curve.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4), **figures})
        _progress(show_progress, epoch, float(np.mean(losses)), figures[SELECTION_METRIC])
        if figures[SELECTION_METRIC] > best_score:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_score, best_epoch, stale = figures[SELECTION_METRIC], epoch, 0
        else:
            stale += 1
            if stale >= train_config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    seconds = time.perf_counter() - began
    model.eval()
    return FitResult(model, best_epoch if validation is not None else total, curve, seconds, positions / max(seconds, 1e-9))


def _training_windows(train: Sequences, max_length: int, all_transitions: bool = False) -> list[np.ndarray]:
    """Windows of at most max_length + 1 items (inputs are all but the last, targets all but the first).

    Each user's last max_length + 1 items; with `all_transitions`, also the windows before it, each
    ending on the first item of the next, so that every transition of a long user trains once.
    """
    windows = []
    for u in range(len(train.user_ids)):
        items = train.user(u)
        end = len(items)
        while end >= 2:
            start = max(0, end - (max_length + 1))
            windows.append(items[start:end])
            if not all_transitions or start == 0:
                break
            end = start + 1
    return windows


def _step_loss(
    model: SequenceTower,
    batch: list[np.ndarray],
    known: torch.Tensor,
    dropouts: tuple[float, float],
    sampler: "_NegativeSampler | None",
    rng: np.random.Generator,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, int]:
    """Mean next-item cross-entropy over every valid position of the batch, and the position count.

    `dropouts` are the input and target id dropout rates (`SequenceTrainConfig`).
    """
    input_dropout, target_dropout = dropouts
    inputs, lengths = pad_histories([w[:-1] for w in batch], model.config.max_length)
    targets, _ = pad_histories([w[1:] for w in batch], model.config.max_length)
    steps = inputs.shape[1]
    valid = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)
    keep = known[inputs]
    if input_dropout > 0:
        keep = keep & torch.from_numpy(rng.random(inputs.shape) >= input_dropout)
    states = model.hidden(inputs, lengths, keep)[valid]  # [P, D]: only real positions pay for the softmax
    wanted = targets[valid]  # [P]
    # Positions whose target competes as a cold item: its own column holds its content-only score.
    draws = rng.random(len(wanted)) if target_dropout > 0 else np.ones(len(wanted))  # no draw: the stream stays as without
    cold = torch.from_numpy(draws < target_dropout).nonzero().squeeze(1)
    cold_scores = (states[cold] * model.item_vectors(wanted[cold], torch.zeros(len(cold), dtype=torch.bool))).sum(-1) if len(cold) else None
    if sampler is None:
        logits = states @ model.item_vectors(known=known).T  # [P, items]
        if cold_scores is not None:
            logits = logits.index_put((cold, wanted[cold]), cold_scores)
        return F.cross_entropy(logits, wanted, label_smoothing=label_smoothing), len(wanted)
    negatives, log_q = sampler.draw(rng)
    candidates = torch.cat([wanted, negatives])
    logits = states @ model.item_vectors(candidates, known[candidates]).T  # [P, P + negatives]
    if cold_scores is not None:
        logits = logits.index_put((cold, cold), cold_scores)
    # Column j < P is position j's own target; log Q on the sampled columns keeps the estimate unbiased.
    correction = torch.cat([torch.zeros(len(wanted)), log_q])
    logits = logits - correction
    # A sampled column that is another position's target (or this one's) is not a negative for it.
    same = wanted.unsqueeze(1) == candidates.unsqueeze(0)
    same[torch.arange(len(wanted)), torch.arange(len(wanted))] = False
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(wanted))), len(wanted)


class _NegativeSampler:
    """Negatives shared by a step, drawn with probability proportional to count^0.75 (word2vec's smoothing)."""

    def __init__(self, train: Sequences, config: SequenceTrainConfig) -> None:
        counts = np.bincount(train.items, minlength=train.n_items).astype(np.float64)
        weights = counts**0.75
        self.p = weights / weights.sum()
        self.n = min(config.sampled_negatives, int((counts > 0).sum()))

    def draw(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = rng.choice(len(self.p), size=self.n, p=self.p)
        # Expected count of the item in this sample: the log-Q term of the sampled softmax.
        log_q = np.log(self.n * self.p[rows])
        return torch.from_numpy(rows), torch.from_numpy(log_q.astype(np.float32))


def _progress(show: bool, epoch: int, loss: float, score: float | None) -> None:
    if show:
        import sys

        tail = "" if score is None else f" validation {SELECTION_METRIC} {score:.4f}"
        print(f"sequence retriever epoch {epoch}: loss {loss:.4f}{tail} ({time.perf_counter():.0f} s)", file=sys.stderr, flush=True)


@torch.no_grad()
def scores_top(model: SequenceTower, histories: list[np.ndarray], known_items: np.ndarray, k: int = LIST_DEPTH) -> tuple[np.ndarray, np.ndarray]:
    """[U, k] catalog rows and their scores of the tower's best items per history (history excluded).

    Args:
        known_items: [items] bool, items the ids trained on (others score through the unknown row).
    """
    model.eval()
    items = model.item_vectors(known=torch.from_numpy(known_items)).numpy()
    rows, values = [], []
    for start in range(0, len(histories), SCORE_CHUNK):
        chunk = histories[start : start + SCORE_CHUNK]
        padded, lengths = pad_histories(chunk, model.config.max_length)
        users = model.user_vectors(padded, lengths, torch.from_numpy(known_items)[padded]).numpy()
        scores = users @ items.T
        top = top_k(scores, chunk, k)
        rows.append(top)
        values.append(np.take_along_axis(scores, top, axis=1))
    return np.concatenate(rows), np.concatenate(values)


def evaluate(model: SequenceTower, task: Task, train: Sequences) -> dict[str, float]:
    """Leave-last-out figures of the tower on `task` (inputs are the task's histories)."""
    known = np.bincount(train.items, minlength=train.n_items) > 0
    top, _ = scores_top(model, task.history(), known)
    return evaluate_lists(top, task.targets, train.n_items)


def default_max_length(train: Sequences) -> int:
    """Window the tower reads: the 95th percentile of sequence lengths, between 10 and 50.

    Longer windows than the users have only add padding; SASRec's 50 suits long-sequence data.
    Chosen from the data, never per data set by hand.
    """
    return int(min(50, max(10, math.ceil(np.percentile(train.lengths[train.lengths > 0], 95)))))
