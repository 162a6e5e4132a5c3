"""The `user_sequence` snapshots: the user's last SEQUENCE_LENGTH distinct items, in the order first met.

The input of the sequence tower and of co-visitation at serving time, built from the same
`feature_repo.sequences.Sequences` that training reads, so a user's served history is exactly the
one the models learned from (offline: `Sequences.user(u)`; online: this list, up to its length).

A row stamped day D holds the items first met before D. Nothing ages out of a sequence (the last
purchase of a shopper who comes back after two months is still the best evidence of the next), so
rows come only the day after a user met a new item, and the view has no ttl: a row is served until a newer one.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from feature_repo.columns import arrow_schema
from feature_repo.sequences import Sequences
from feature_repo.snapshots.daily_windows import NS_PER_DAY, day_start, pack
from feature_repo.snapshots.event_log import names_of

# Items kept per row. The tower reads at most its window (50), but the ranker's history length and the
# already-met items it never recommends again come from the whole sequence offline: at 50, the 30% of the
# synthetic shop's users past 50 items were served shorter histories than the ranker learned from (served
# Recall@10 .157 against .165 offline). 1.1% of those users have more than 200; Toys' users 8.6 on average.
SEQUENCE_LENGTH = 200

SCHEMA = arrow_schema("user_sequence")


def user_sequence(sequences: Sequences, first_day: int, last_day: int, length: int = SEQUENCE_LENGTH) -> pa.Table:
    """Rows for the snapshot days in first_day..last_day on which a user's sequence gains an item.

    Args:
        sequences: every user's items with the moment each was first met (`Sequences.moments`).
        first_day, last_day: snapshot day numbers, inclusive.
        length: items kept per row (the newest).

    Returns:
        A table with `SCHEMA`, sorted by event_timestamp then user_id.
    """
    if sequences.moments is None:
        raise ValueError("user_sequence: the sequences carry no moments (build them with Sequences.of)")
    user = np.repeat(np.arange(len(sequences.user_ids), dtype=np.int64), sequences.lengths)
    day = sequences.moments // NS_PER_DAY
    keys = pack(user, day)  # sorted: users in order, each user's items in time order
    changed = np.flatnonzero(np.r_[keys[1:] != keys[:-1], True])  # the last item of each (user, day)
    snapshot = day[changed] + 1
    wanted = (snapshot >= first_day) & (snapshot <= last_day)
    changed, snapshot, owner = changed[wanted], snapshot[wanted], user[changed[wanted]]
    end = changed + 1
    start = np.maximum(sequences.offsets[owner], end - length)
    lengths = end - start
    rows = np.repeat(start - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum())
    lists = pa.ListArray.from_arrays(pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int32)),
                                     names_of(sequences.items[rows], sequences.item_ids))
    out = np.lexsort((owner, snapshot))
    return pa.table(
        {
            "user_id": names_of(owner[out], sequences.user_ids),
            "event_timestamp": pa.array(day_start(snapshot[out]), type=pa.timestamp("ns", tz="UTC")),
            "sequence_item_ids": lists.take(pa.array(out)),
            "last_item_at_s": pa.array(sequences.moments[changed[out]] // 1_000_000_000),
        },
        schema=SCHEMA,
    )
