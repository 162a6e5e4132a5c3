"""Co-visitation candidates and features: planted patterns come out, history never does, serving = batch."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import feature_repo.covisitation as covisitation
from feature_repo.covisitation import FEATURE_NAMES, CoVisitation, CoVisitConfig
from feature_repo.sequences import Sequences
from vitrine.errors import InvalidInput, ModelUnavailable

# Float32 sums may be accumulated in a different order by a future optimisation of one path:
# a relative 1e-6 is a few float32 ulps, far below any difference a ranker could act on.
SKEW_RTOL = 1e-6


def sequences_of(users: list[list[int]], n_items: int) -> Sequences:
    """Sequences from each user's catalog rows, oldest first (distinct per user, as `Sequences.of` makes them)."""
    lengths = [len(u) for u in users]
    return Sequences(
        item_ids=np.array([f"item{i}" for i in range(n_items)], dtype=object),
        user_ids=np.array([f"user{u}" for u in range(len(users))], dtype=object),
        offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        items=np.array([i for u in users for i in u], dtype=np.int64),
    )


def random_users(rng: np.random.Generator, n_users: int, n_items: int, low: int = 2, high: int = 15) -> list[list[int]]:
    """Users with distinct random items, popularity skewed like a shop's (a few items in many baskets)."""
    weights = 1.0 / np.arange(1, n_items + 1)
    weights /= weights.sum()
    return [list(rng.choice(n_items, size=rng.integers(low, high), replace=False, p=weights)) for _ in range(n_users)]


@pytest.fixture(scope="module")
def shop() -> tuple[CoVisitation, list[np.ndarray]]:
    """A model on 400 random users over 80 items, and 60 histories to score (empty, short, longer than `recent`)."""
    rng = np.random.default_rng(7)
    n_items = 80
    users = random_users(rng, 400, n_items)
    model = CoVisitation.fit(sequences_of(users, n_items), CoVisitConfig(neighbours=15, recent=8))
    histories = [np.array(u, dtype=np.int64) for u in random_users(rng, 58, n_items, low=1, high=30)]
    return model, [np.zeros(0, dtype=np.int64), np.array([3])] + histories


def test_planted_follower_is_the_top_candidate_after_its_item_and_only_forwards() -> None:
    rng = np.random.default_rng(0)
    n_items, a, b = 60, 58, 59
    users = random_users(rng, 300, n_items - 2)
    # In 40 users, b comes right after a somewhere in the sequence; a never comes after b.
    for user in users[:40]:
        at = int(rng.integers(0, len(user) + 1))
        user[at:at] = [a, b]
    model = CoVisitation.fit(sequences_of(users, n_items))

    for before in (7, 21, 40):
        rows, scores = model.candidates(np.array([before, a]), n=10)
        assert rows[0] == b, f"after {before}, {a} the top candidate is {rows[0]}, not the planted {b}"
        assert np.all(np.diff(scores) <= 0)

    after_a = model.features(np.array([a]), np.array([b, 5]))
    after_b = model.features(np.array([b]), np.array([a]))
    assert after_a["covisit_next_last1"][0] > 0
    # Transition is directed: a never follows b, while co-occurrence sees them together both ways.
    assert after_b["covisit_next_last1"][0] == 0
    assert after_b["covisit_cooc_last1"][0] == pytest.approx(after_a["covisit_cooc_last1"][0])


def test_nearest_position_counts_from_the_last_item_and_is_nan_when_unrelated() -> None:
    # Item 0 is always bought with 1; items 2..5 are bought together; 9 is never bought with 0..5.
    users = [[0, 1]] * 5 + [[2, 3, 4, 5]] * 5 + [[9, 8]] * 5
    model = CoVisitation.fit(sequences_of(users, 10))
    found = model.features(np.array([0, 2, 3]), np.array([1, 4, 9]))
    np.testing.assert_array_equal(found["covisit_nearest_position"][:2], [2.0, 0.0])
    assert np.isnan(found["covisit_nearest_position"][2])
    assert found["covisit_cooc_last1"][0] == 0 and found["covisit_cooc_last3"][0] > 0
    assert found["covisit_cooc_last3"][2] == 0 and found["covisit_next_last10"][2] == 0


def test_last_k_features_read_exactly_the_last_k_items(shop: tuple[CoVisitation, list[np.ndarray]]) -> None:
    model, histories = shop
    candidates = np.arange(model.n_items)
    for history in histories[2:12]:
        full = model.features(history, candidates)
        for k in covisitation.FEATURE_DEPTHS:
            tail = model.features(history[-k:], candidates)
            for name in ("cooc", "next"):
                np.testing.assert_allclose(full[f"covisit_{name}_last{k}"], tail[f"covisit_{name}_last10"], rtol=SKEW_RTOL)


def test_decay_weighs_a_pair_by_its_distance() -> None:
    users = [[0, 1, 2]] * 5 + [[3, 4]] * 5
    for decay in (0.0, 1.0, 2.0):
        model = CoVisitation.fit(sequences_of(users, 5), CoVisitConfig(decay=decay))
        near, far = model.features(np.array([0]), np.array([1, 2]))["covisit_cooc_last1"]
        assert near / far == pytest.approx(2.0**decay)


def test_the_last_item_weighs_most() -> None:
    # 0-1 and 2-3 are equally strong pairs; after [0, 2] the neighbour of the last item (2) comes first.
    users = [[0, 1]] * 5 + [[2, 3]] * 5
    model = CoVisitation.fit(sequences_of(users, 4))
    rows, scores = model.candidates(np.array([0, 2]), n=2)
    np.testing.assert_array_equal(rows, [3, 1])
    assert scores[1] == pytest.approx(model.config.recency * scores[0])


def test_candidate_score_is_the_recency_weighted_sum_of_neighbour_scores(
        shop: tuple[CoVisitation, list[np.ndarray]]) -> None:
    model, histories = shop
    config = model.config
    for history in histories[2:12]:
        rows, scores = model.candidates(history, n=20)
        expected = np.zeros(len(rows))
        for position, item in enumerate(history[::-1][: config.recent]):
            alone = model.features(np.array([item]), rows)
            related = alone["covisit_cooc_last1"] + config.transition_weight * alone["covisit_next_last1"]
            expected += config.recency**position * related
        np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_history_is_never_a_candidate(shop: tuple[CoVisitation, list[np.ndarray]]) -> None:
    model, histories = shop
    top, scores = model.candidates_batch(histories, n=40)
    assert top.shape == scores.shape == (len(histories), 40) and top.dtype == np.int64 and scores.dtype == np.float32
    for history, row, score in zip(histories, top, scores):
        found = row[row >= 0]
        assert not set(found) & set(history.tolist())
        assert len(np.unique(found)) == len(found)
        # Padding only at the end, and only there the score is missing.
        assert np.all(row[len(found):] == -1) and np.all(np.isnan(score[len(found):]))
        assert np.all(score[: len(found)] > 0) and np.all(np.diff(score[: len(found)]) <= 0)
    assert np.all(top[0] == -1), "an empty history has no co-visited items"


def test_single_user_calls_give_the_batch_numbers(shop: tuple[CoVisitation, list[np.ndarray]],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The skew test: the server scores one user at a time, training scores batches (here in small chunks)."""
    model, histories = shop
    monkeypatch.setattr(covisitation, "ENTRIES_PER_CHUNK", 2_000)  # several users per chunk, many chunks
    n = 30
    top, top_scores = model.candidates_batch(histories, n)
    features = model.features_batch(histories, top)
    assert set(features) == set(FEATURE_NAMES)
    for u, history in enumerate(histories):
        rows, scores = model.candidates(history, n)
        np.testing.assert_array_equal(rows, top[u][top[u] >= 0])
        np.testing.assert_allclose(scores, top_scores[u][: len(rows)], rtol=SKEW_RTOL)
        one = model.features(history, top[u])
        for name in FEATURE_NAMES:
            assert one[name].dtype == np.float32 and one[name].shape == (n,)
            np.testing.assert_allclose(one[name], features[name][u], rtol=SKEW_RTOL, err_msg=f"{name}, user {u}")


def test_a_rare_but_consistent_neighbour_beats_a_merely_popular_one() -> None:
    rng = np.random.default_rng(3)
    n_items, a, rare, popular = 50, 47, 48, 49
    users = random_users(rng, 300, n_items - 3)
    # a's 10 buyers all bought the popular item, 8 of them the rare one; everyone else buys the popular one too.
    for k, user in enumerate(users):
        user.insert(0, popular)
        if k < 10:
            user[1:1] = [a, rare] if k < 8 else [a]
    raw_together = {item: sum(a in u and item in u for u in users) for item in (rare, popular)}
    assert raw_together[popular] > raw_together[rare], "the popular item must win on raw counts for this test"

    model = CoVisitation.fit(sequences_of(users, n_items), CoVisitConfig(transition_weight=0.0))
    found = model.features(np.array([a]), np.array([rare, popular]))
    assert found["covisit_cooc_last1"][0] > found["covisit_cooc_last1"][1]
    assert model.candidates(np.array([a]), n=5)[0][0] == rare


def test_whole_history_without_decay_is_item_knn_cosine() -> None:
    rng = np.random.default_rng(11)
    n_items = 30
    users = random_users(rng, 120, n_items)
    model = CoVisitation.fit(sequences_of(users, n_items), CoVisitConfig(window=None, decay=0.0, neighbours=n_items))
    owned = np.zeros((len(users), n_items))
    for u, items in enumerate(users):
        owned[u, items] = 1
    together = owned.T @ owned
    counts = np.diag(together).copy()
    np.fill_diagonal(together, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.nan_to_num(together / np.sqrt(np.outer(counts, counts)))
    np.testing.assert_allclose(model.cooc.toarray(), cosine, rtol=1e-6, atol=1e-7)


def test_window_and_neighbours_bound_the_matrices() -> None:
    # 0 and 3 are always 3 positions apart: inside window 3, outside window 2.
    users = [[0, 1, 2, 3]] * 4 + [[4, 5, 6, 7, 8, 9]] * 4
    wide = CoVisitation.fit(sequences_of(users, 10), CoVisitConfig(window=3, neighbours=2))
    narrow = CoVisitation.fit(sequences_of(users, 10), CoVisitConfig(window=2))
    assert narrow.cooc[0, 3] == 0 and narrow.cooc[0, 2] > 0
    assert wide.features(np.array([0]), np.array([1, 2]))["covisit_cooc_last1"].min() > 0
    assert np.diff(wide.cooc.indptr).max() <= 2 and np.diff(wide.transition.indptr).max() <= 2


def test_save_and_load_give_the_same_model(shop: tuple[CoVisitation, list[np.ndarray]], tmp_path: Path) -> None:
    model, histories = shop
    model.save(tmp_path / "covisit")
    loaded = CoVisitation.load(tmp_path / "covisit")
    assert loaded.config == model.config
    np.testing.assert_array_equal(loaded.item_ids, model.item_ids)
    top, scores = model.candidates_batch(histories, 25)
    again, again_scores = loaded.candidates_batch(histories, 25)
    np.testing.assert_array_equal(again, top)
    np.testing.assert_array_equal(again_scores, scores)
    for name, values in model.features_batch(histories, top).items():
        np.testing.assert_array_equal(loaded.features_batch(histories, top)[name], values)


def test_missing_model_and_bad_input_fail_loudly(shop: tuple[CoVisitation, list[np.ndarray]], tmp_path: Path) -> None:
    model, _ = shop
    with pytest.raises(ModelUnavailable):
        CoVisitation.load(tmp_path / "nothing")
    model.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / covisitation.ARTIFACT_META).read_text())
    (tmp_path / "old" / covisitation.ARTIFACT_META).write_text(json.dumps({**meta, "format_version": 0}))
    with pytest.raises(ModelUnavailable, match="format"):
        CoVisitation.load(tmp_path / "old")
    with pytest.raises(InvalidInput):
        model.candidates(np.array([model.n_items]), n=5)
    with pytest.raises(InvalidInput):
        CoVisitConfig(window=0)


def test_a_served_model_reads_the_view_with_its_own_settings_or_is_refused() -> None:
    """Serving scores co-visitation with the trained settings; matrices fitted otherwise than the view's cannot be served."""
    assert covisitation.served_config(None) == CoVisitConfig()
    trained = CoVisitConfig(recency=0.5, recent=3, transition_weight=2.0)
    assert covisitation.served_config(asdict(trained)) == trained
    with pytest.raises(ModelUnavailable, match="window"):
        covisitation.served_config(asdict(CoVisitConfig(window=5)))
    with pytest.raises(ModelUnavailable, match="unknown"):
        covisitation.served_config({**asdict(trained), "halflife": 3})
