"""The sequence views: what serving reads equals what training computes from the events.

`user_sequence` at day D is the user's `Sequences` order of the events before D (its last SEQUENCE_LENGTH items);
`item_covisitation` rebuilds, through Feast's online store, the very matrices `CoVisitation.fit`
gives, so candidates and ranker features are the same online and offline (no train/serve skew).
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from feature_repo import store as fs
from feature_repo.covisitation import CoVisitation
from feature_repo.sequences import Sequences, positive_interactions
from feature_repo.snapshots.build import build, read_sequences
from feature_repo.snapshots.user_sequence import SEQUENCE_LENGTH, user_sequence
from tests.shops import HAND_MADE_DAYS, HAND_MADE_START, hand_made
from vitrine.paths import DataDir
from vitrine.shop.store import read_events, read_items


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> DataDir:
    data = hand_made(DataDir.resolve(tmp_path_factory.mktemp("sequences") / "data"))
    build(data)
    return data


def test_a_row_at_day_d_is_the_sequence_of_the_events_before_d(built: DataDir) -> None:
    rows = pd.read_parquet(built.features / "user_sequence")
    events, catalog = read_events(built), read_items(built)["item_id"]
    checked = 0
    for row in rows.sample(40, random_state=0).itertuples():
        before = events[events["timestamp"] < row.event_timestamp]
        expected = Sequences.of(positive_interactions(before), catalog)
        u = int(np.searchsorted(expected.user_ids, row.user_id))
        assert expected.user_ids[u] == row.user_id
        want = [expected.item_ids[r] for r in expected.user(u)][-SEQUENCE_LENGTH:]
        assert list(row.sequence_item_ids) == want
        checked += 1
    assert checked == 40


def test_rows_come_only_the_day_after_a_new_item(built: DataDir) -> None:
    rows = pd.read_parquet(built.features / "user_sequence")
    sequences = read_sequences(built)
    days = sequences.moments // 86_400_000_000_000
    users = np.repeat(sequences.user_ids, sequences.lengths)
    new_item_days = {(u, int(d) + 1) for u, d in zip(users, days)}
    stamped = {(r.user_id, int(r.event_timestamp.value // 86_400_000_000_000)) for r in rows.itertuples()}
    assert stamped == new_item_days
    # Each consecutive row of a user only adds items at its end (an item keeps its first position).
    for _, group in rows.sort_values("event_timestamp").groupby("user_id"):
        lists = [list(x) for x in group["sequence_item_ids"]]
        for older, newer in zip(lists, lists[1:]):
            assert newer[: len(older)] == older or len(newer) == SEQUENCE_LENGTH


def test_a_long_sequence_keeps_its_newest_items(built: DataDir) -> None:
    sequences = read_sequences(built)
    longest = int(np.argmax(sequences.lengths))
    length = int(sequences.lengths[longest]) - 2  # shorter than the longest user's history
    days = sequences.moments // 86_400_000_000_000
    table = user_sequence(sequences, int(days.min()), int(days.max()) + 1, length=length).to_pandas()
    last = table[table["user_id"] == sequences.user_ids[longest]].iloc[-1]
    assert list(last["sequence_item_ids"]) == [sequences.item_ids[r] for r in sequences.user(longest)][-length:]
    assert table["sequence_item_ids"].map(len).max() == length


@pytest.mark.parametrize("online", ["sqlite", "redis"])
def test_served_covisitation_equals_the_fitted_one(built: DataDir, online: str, redis_db) -> None:
    from ranking.online_features import open_reader

    fs.apply(built, online)  # type: ignore[arg-type]
    end = (HAND_MADE_START + pd.Timedelta(days=HAND_MADE_DAYS + 1)).to_pydatetime()
    fs.materialize(built, datetime(1970, 1, 1, tzinfo=timezone.utc), end, online, views=["item_covisitation", "user_sequence"])  # type: ignore[arg-type]
    store = fs.open_store(built, online)  # type: ignore[arg-type]
    items = read_items(built)["item_id"].astype(str).tolist()
    reader = open_reader(store, "item_id", ("item_covisitation",), online=online, bulk=True)  # type: ignore[arg-type]
    read = [row or {} for row in reader.read(items, now=end)]
    served = CoVisitation.from_neighbours(
        items,
        ([r.get("cooc_item_ids") for r in read], [r.get("cooc_scores") for r in read]),
        ([r.get("next_item_ids") for r in read], [r.get("next_scores") for r in read]),
    )
    fitted = CoVisitation.fit(read_sequences(built))
    for name in ("cooc", "transition"):
        a, b = getattr(served, name), getattr(fitted, name)
        assert (a != b).nnz == 0 and np.array_equal(a.indices, b.indices) and np.array_equal(a.indptr, b.indptr)
    # Same candidates and features for every user's served sequence.
    users = open_reader(store, "user_id", ("user_sequence",), online=online)  # type: ignore[arg-type]
    user_ids = sorted(set(pd.read_parquet(built.features / "user_sequence")["user_id"]))[:10]
    index = pd.Index(items)
    histories = [index.get_indexer(row["sequence_item_ids"]) for row in users.read(user_ids, now=end) if row]
    assert len(histories) == len(user_ids)
    top_served, scores_served = served.candidates_batch(histories, 20)
    top_fitted, scores_fitted = fitted.candidates_batch(histories, 20)
    np.testing.assert_array_equal(top_served, top_fitted)
    np.testing.assert_array_equal(scores_served, scores_fitted)
    assert read[0]["sequence_users"] == int(np.bincount(read_sequences(built).items, minlength=len(items))[0])
