"""Vitrine's rows of the public leave-last-out benchmark: the served system, its tower and each source alone.

`fit_next_item` (`training.train_next_item`) learns from the held-in events exactly as the pipeline
does: it chooses the tower's epochs and trains the reranker on each user's last held-in item (the
benchmark's validation item), then refits the sources on every held-in item. The test item of
every user is then ranked by what would be served.

Rows (every name contains "vitrine"): `vitrine_sequence` (the tower's list alone),
`vitrine_covisitation`, `vitrine_popularity` (each source alone), `vitrine_sources_merged` (their
union ordered by summed reciprocal ranks, no reranker) and `vitrine` (in full: the union reranked).

Example:
    rows = vitrine_rows(split, show_progress=True)
    rows["vitrine"]["test"]["recall@10"]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ranking.next_item import FEATURE_NAMES, candidates, merged_order, order_by, source_lists
from training.leave_last_out import LeaveLastOut, evaluate_lists
from training.train_next_item import NextItemConfig, candidate_recall, fit_next_item
from training.train_sequence import LIST_DEPTH


def vitrine_rows(
    split: LeaveLastOut, content: np.ndarray | None = None, *, config: NextItemConfig = NextItemConfig(), show_progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Fit on the held-in items (`split.test.train`), then score every Vitrine row on the test items.

    Args:
        split: the benchmark's split; nothing here reads its test targets before scoring.
        content: [items, C] item content vectors (CLIP), or None (ids only).
    """
    began = time.perf_counter()
    fitted = fit_next_item(split.test.train, content, config, show_progress=show_progress)
    fit_seconds = time.perf_counter() - began
    histories, targets, n_items = split.test.history(), split.test.targets, split.sequences.n_items

    found = candidates(fitted.sources, histories)
    lists = source_lists(fitted.sources, histories, fitted.sources.retriever.vectors_of(histories))
    reranked = order_by(found, -fitted.ranker.predict(found.features[list(FEATURE_NAMES)], num_threads=1), LIST_DEPTH)
    ceiling = candidate_recall(found, targets)
    rows: dict[str, dict[str, Any]] = {
        "vitrine_sequence": {"test": evaluate_lists(lists["tower"][:, :LIST_DEPTH], targets, n_items),
                             "validation": fitted.holdout["tower"], "settings": fitted.tower_config.to_json(),
                             "epochs": fitted.epochs},
        "vitrine_covisitation": {"test": evaluate_lists(lists["covisitation"][:, :LIST_DEPTH], targets, n_items)},
        "vitrine_popularity": {"test": evaluate_lists(lists["popular"][:, :LIST_DEPTH], targets, n_items)},
        "vitrine_sources_merged": {"test": evaluate_lists(merged_order(found, LIST_DEPTH), targets, n_items), "candidate_recall": ceiling},
        "vitrine": {"test": evaluate_lists(reranked, targets, n_items), "candidate_recall": ceiling,
                    "ranker": {"trees": fitted.rounds, "features": list(FEATURE_NAMES), "valid_ndcg@10": fitted.holdout["ranker_valid_ndcg@10"],
                               "holdout_candidate_recall": fitted.holdout["candidate_recall"]},
                    "seconds": round(fit_seconds, 1), "seconds_by_part": fitted.seconds},
    }
    return rows
