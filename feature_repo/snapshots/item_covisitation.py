"""The `item_covisitation` snapshot: each item's co-visitation neighbours, for the candidates served online.

`feature_repo.covisitation.CoVisitation.fit` over every user's sequence up to the snapshot day
(events before it), stored as Feast rows: the item's co-occurrence and transition neighbours (ids
and scores, best first), how many users' sequences hold it (the popular source ranks by it) and
the share of them who came back to it in another session (a ranker feature).
Serving loads the whole table once per materialization and rebuilds the same matrices from it
(`CoVisitation.from_neighbours`), so online candidates and features are the offline ones.

One snapshot per build, at its last day: the matrices are refitted on the whole history each day
(seconds for a shop of a few hundred thousand interactions), and training fits them from the
events directly, so no point-in-time join ever needs yesterday's table.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from feature_repo.columns import arrow_schema
from feature_repo.covisitation import CoVisitation, CoVisitConfig
from feature_repo.sequences import Sequences
from feature_repo.snapshots.daily_windows import day_start
from feature_repo.snapshots.event_log import names_of

SCHEMA = arrow_schema("item_covisitation")


def item_covisitation(sequences: Sequences, day: int, config: CoVisitConfig = CoVisitConfig()) -> pa.Table:
    """One row per item some sequence holds, stamped `day` (the sequences hold events before it).

    Returns:
        A table with `SCHEMA`, rows in catalog order.
    """
    model = CoVisitation.fit(sequences, config)
    users = np.bincount(sequences.items, minlength=sequences.n_items)
    rows = np.flatnonzero(users > 0)
    cooc_ids, cooc_scores = _lists(model.cooc, rows, sequences.item_ids)
    next_ids, next_scores = _lists(model.transition, rows, sequences.item_ids)
    return pa.table(
        {
            "item_id": pa.array(sequences.item_ids[rows].astype(str), type=pa.string()),
            "event_timestamp": pa.array(day_start(np.full(len(rows), day)), type=pa.timestamp("ns", tz="UTC")),
            "cooc_item_ids": cooc_ids,
            "cooc_scores": cooc_scores,
            "next_item_ids": next_ids,
            "next_scores": next_scores,
            "sequence_users": pa.array(users[rows].astype(np.int64)),
            "repeat_share": pa.array(sequences.repeat_share()[rows].astype(np.float32)),
        },
        schema=SCHEMA,
    )


def _lists(matrix: sp.csr_matrix, rows: np.ndarray, item_ids: np.ndarray) -> tuple[pa.ListArray, pa.ListArray]:
    """The neighbours of `rows`, best first: ids and scores as Arrow list columns (CSR rows, zero-copy offsets)."""
    part = matrix[rows]
    order = np.lexsort((part.indices, -part.data, np.repeat(np.arange(part.shape[0]), np.diff(part.indptr))))
    offsets = pa.array(part.indptr.astype(np.int32))
    ids = pa.ListArray.from_arrays(offsets, names_of(part.indices[order].astype(np.int64), item_ids))
    scores = pa.ListArray.from_arrays(offsets, pa.array(part.data[order].astype(np.float32)))
    return ids, scores
