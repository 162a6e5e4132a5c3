"""The next-item recommender scored on held-out next items: the served system, its tower and each source alone.

`fit_next_item` (`training.train_next_item`) learns from what a protocol holds in, exactly as the
pipeline does: it chooses the tower's epochs and trains the reranker on each user's last held-in
item, then refits the sources on every held-in item. Each scored user's held-out item is then
ranked by what would be served. Two protocols:

- `leave-last-out` (the public benchmark's, `training.leave_last_out`): each user's last item is
  the test, the one before it the held-in last item the settings are chosen on;
- `time`: each user's next new item after the pipeline's latest split T, from the events before T
  (`training.split_evaluation.NextItemSplit`).

Rows (every name contains "vitrine"): `vitrine_sequence` (the tower's list alone),
`vitrine_covisitation`, `vitrine_popularity`, `vitrine_content` (each source alone), `vitrine_sources_merged` (their
union ordered by summed reciprocal ranks, no reranker) and `vitrine` (in full: the union reranked).

Example:
    rows = vitrine_rows(split, show_progress=True)        # fit and score offline, no pipeline
    rows["vitrine"]["test"]["recall@10"]
    report = evaluate_next_item(DataDir.resolve(), "time")
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from feature_repo.sequences import Sequences
from ranking.next_item import FEATURE_NAMES, CandidateSources, candidates, merged_order, order_by
from training.leave_last_out import LeaveLastOut, evaluate_lists
from training.train_next_item import NextItemConfig, NextItemFit, candidate_recall, fit_next_item, request_elapsed
from training.train_sequence import LIST_DEPTH
from vitrine.paths import DataDir


def system_rows(sources: CandidateSources, ranker: Any, histories: Sequence[np.ndarray], targets: np.ndarray, n_items: int,
                elapsed: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Every row's figures on `targets` ([users] rows of the sources' catalog) given each user's history.

    Args:
        sources: the served (or refit) sources; `ranker`: their LightGBM booster.
        elapsed: [users] days from each user's newest item to the request (None: unknown).
    """
    found = candidates(sources, histories, elapsed)
    lists = found.lists
    reranked = order_by(found, -ranker.predict(found.frame(), num_threads=1), LIST_DEPTH)
    ceiling = candidate_recall(found, targets)
    return {
        "vitrine_sequence": {"test": evaluate_lists(lists["tower"][:, :LIST_DEPTH], targets, n_items)},
        "vitrine_covisitation": {"test": evaluate_lists(lists["covisitation"][:, :LIST_DEPTH], targets, n_items)},
        "vitrine_popularity": {"test": evaluate_lists(lists["popular"][:, :LIST_DEPTH], targets, n_items)},
        "vitrine_content": {"test": evaluate_lists(lists["content"][:, :LIST_DEPTH], targets, n_items)},
        "vitrine_sources_merged": {"test": evaluate_lists(merged_order(found, LIST_DEPTH), targets, n_items), "candidate_recall": ceiling},
        "vitrine": {"test": evaluate_lists(reranked, targets, n_items), "candidate_recall": ceiling,
                    "ranker": {"trees": int(ranker.num_trees()), "features": list(FEATURE_NAMES)}},
    }


def fit_rows(fitted: NextItemFit, histories: Sequence[np.ndarray], targets: np.ndarray, n_items: int,
             elapsed: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """`system_rows` of a fit, with what it chose on the held-in last items."""
    rows = system_rows(fitted.sources, fitted.ranker, histories, targets, n_items, elapsed)
    rows["vitrine_sequence"].update(validation=fitted.holdout["tower"], settings=fitted.tower_config.to_json(), epochs=fitted.epochs)
    rows["vitrine"]["ranker"].update(valid_ndcg_at_10=fitted.holdout["ranker_valid_ndcg@10"], holdout_candidate_recall=fitted.holdout["candidate_recall"])
    rows["vitrine"]["seconds_by_part"] = fitted.seconds
    return rows


def vitrine_rows(
    split: LeaveLastOut, content: np.ndarray | None = None, *, config: NextItemConfig = NextItemConfig(), show_progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Fit on the held-in items (`split.test.train`), then score every row on the test items.

    Args:
        split: the benchmark's split; nothing here reads its test targets before scoring.
        content: [items, C] item content vectors (CLIP), or None (ids only).
    """
    began = time.perf_counter()
    fitted = fit_next_item(split.test.train, content, config, show_progress=show_progress)
    rows = fit_rows(fitted, split.test.history(), split.test.targets, split.sequences.n_items, request_elapsed(split.sequences, split.test))
    rows["vitrine"]["seconds"] = round(time.perf_counter() - began, 1)
    return rows


def evaluate_next_item(
    data: DataDir, protocol: str = "leave-last-out", config: NextItemConfig = NextItemConfig(), *, show_progress: bool = False
) -> dict[str, Any]:
    """`vitrine evaluate next-item`: fit on what `protocol` holds in, score every row on what it holds out."""
    from feature_repo.snapshots.build import read_sequences
    from training.train_next_item import content_vectors

    began = time.perf_counter()
    if protocol == "leave-last-out":
        sequences = read_sequences(data)
        split = LeaveLastOut.of(sequences)
        content = content_vectors(data, sequences.item_ids)
        fitted = fit_next_item(split.test.train, content, config, show_progress=show_progress)
        histories, targets, users = split.test.history(), split.test.targets, len(split.test.users)
        elapsed = request_elapsed(sequences, split.test)
        before: Sequences = split.test.train
        cutoff = None
    else:
        from training.split_evaluation import DEFAULT_EVAL_DAYS, NextItemSplit, latest_split_time

        cut = latest_split_time(data, DEFAULT_EVAL_DAYS)
        later = NextItemSplit.of(data, cut)
        before = later.before
        fitted = fit_next_item(before, content_vectors(data, before.item_ids), config, show_progress=show_progress)
        histories, targets, users = later.histories(), later.targets, len(later.users)
        elapsed = later.elapsed()
        cutoff = cut.isoformat()
    return {"protocol": protocol, "split_start": cutoff, "users": users, "items": before.n_items,
            "models": fit_rows(fitted, histories, targets, before.n_items, elapsed), "seconds": round(time.perf_counter() - began, 1)}

