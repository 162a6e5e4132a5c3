"""Serving the next-item recommender: the online path computes what training computes, and answers well-formed lists.

The served shop's data with a next-item recommender `@champion` (`tests.shops.served_next_item_shop`):
the user's sequence comes from the `user_sequence` view and the co-visitation tables from the
`item_covisitation` view of the online store; training reads both from the events.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from feature_repo import covisitation
from feature_repo.snapshots.build import read_sequences
from ranking.next_item import SOURCES, candidates
from ranking.recommender import ModelBundle, Recommender, _Timer, check_bundle, next_item_candidates
from ranking.reranker import Reranker
from ranking.sequence_retriever import SequenceRetriever
from tests.shops import served_next_item_shop
from training.train_next_item import elapsed_days, fit_sources
from vitrine.errors import ModelUnavailable
from vitrine.paths import DataDir


@pytest.fixture(scope="module")
def data() -> DataDir:
    return served_next_item_shop()


@pytest.fixture(scope="module")
def recommender(data: DataDir) -> Recommender:
    return Recommender.from_data(data)


@pytest.fixture(scope="module")
def active_users(data: DataDir) -> list[str]:
    sequences = read_sequences(data)
    order = np.argsort(-sequences.lengths, kind="stable")
    # Users whose whole sequence fits the served window, so online and offline histories are the same.
    return [str(sequences.user_ids[u]) for u in order if 2 <= sequences.lengths[u] <= 10][:8]


def test_the_online_path_computes_the_offline_candidates_and_features(recommender: Recommender, data: DataDir, active_users: list[str]) -> None:
    """No train/serve skew: user_sequence and item_covisitation read online give the features training computes from events."""
    bundle = recommender.bundle
    assert bundle.sources is not None and isinstance(bundle.retriever, SequenceRetriever)
    # The co-visitation source is read with the settings the model recorded when it was trained.
    assert bundle.retriever.config["covisitation"] == asdict(bundle.sources.covisitation.config)
    now = recommender.moment()
    rows = recommender.users.read(active_users)  # type: ignore[union-attr]
    online, matrices = next_item_candidates(bundle.sources, bundle, rows, _Timer(), now)
    sequences = read_sequences(data).remapped(bundle.retriever.item_ids)
    offline_sources = fit_sources(sequences, bundle.retriever)
    index = {str(u): n for n, u in enumerate(sequences.user_ids)}
    for n, user in enumerate(active_users):
        history = sequences.user(index[user])
        # The request comes now: the days since the user's newest item are the online reader's too.
        elapsed = elapsed_days(sequences, np.array([index[user]]), np.array([pd.Timestamp(now).value]))
        found = candidates(offline_sources, [history], elapsed)
        ids, _, _, proposed = online[n]
        assert list(ids) == [bundle.retriever.item_ids[r] for r in found.items]
        # Same code, same inputs: features equal up to float32 rounding of the tower's matmul.
        np.testing.assert_allclose(matrices[n], found.matrix, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(proposed, found.proposed_by())
        assert proposed.any(axis=1).all()  # every candidate came from some source


def test_a_users_candidates_do_not_depend_on_the_block_they_go_in(
    recommender: Recommender, data: DataDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`candidates` goes a co-visitation block of users at a time: small blocks, one batch and one user alone agree."""
    sequences = read_sequences(data).remapped(recommender.bundle.retriever.item_ids)
    sources = fit_sources(sequences, recommender.bundle.retriever)  # type: ignore[arg-type]
    histories = [sequences.user(u) for u in range(min(len(sequences.user_ids), 40))]
    whole = candidates(sources, histories)
    config = sources.covisitation.config
    read = max(config.recent, covisitation.FEATURE_DEPTHS[-1])  # history items a user's block entries come from
    monkeypatch.setattr(covisitation, "ENTRIES_PER_CHUNK", 3 * 2 * read * config.neighbours)  # blocks of 3 users
    assert len(sources.covisitation.blocks(len(histories))) > 10
    blocked = candidates(sources, histories)
    # Content cosines are matrix products whose rounding depends on the padded width: float32 tolerance.
    np.testing.assert_allclose(blocked.matrix, whole.matrix, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(blocked.items, whole.items)
    np.testing.assert_array_equal(blocked.users, whole.users)
    for source in SOURCES:
        np.testing.assert_array_equal(blocked.lists[source], whole.lists[source])
    for u in (0, len(histories) - 1):
        alone = candidates(sources, [histories[u]])
        np.testing.assert_allclose(alone.matrix, whole.matrix[whole.users == u], rtol=1e-5, atol=1e-6)


def test_known_users_get_reranked_lists_from_their_sources(recommender: Recommender, data: DataDir, active_users: list[str]) -> None:
    sequences = read_sequences(data)
    index = {str(u): n for n, u in enumerate(sequences.user_ids)}
    for user in active_users:
        result = recommender.recommend(user, k=10)
        assert not result.cold_start and not result.degraded and len(result) == 10
        ranked = [r for r in result if r.source == "ranked"]
        assert ranked and all(r.sources for r in ranked) and ranked[0].reasons
        assert [r.score for r in result] == sorted((r.score for r in result), reverse=True)
        history = {str(sequences.item_ids[i]) for i in sequences.user(index[user])}
        assert not history & {r.item_id for r in result}  # nothing the user already met
        assert {"retrieve", "rank_features", "score"} <= set(result.timings_ms)
    unknown = recommender.recommend("U-nobody", k=5)
    assert unknown.cold_start and [r.source for r in unknown] == ["popular"] * 5


def test_a_batch_answers_what_single_requests_answer(recommender: Recommender, active_users: list[str]) -> None:
    batch = recommender.recommend_batch(active_users, k=10)
    for user, listed in zip(active_users, batch):
        alone = recommender.recommend(user, k=10, explain=False)
        assert [r.item_id for r in listed] == [r.item_id for r in alone]
        # LightGBM's scores of the same rows: equal, whatever rows are predicted with them.
        np.testing.assert_allclose([r.score for r in listed], [r.score for r in alone], rtol=1e-6)


def test_a_two_tower_ranker_is_refused_beside_a_sequence_retriever(recommender: Recommender) -> None:
    from tests.shops import served_shop

    session_ranker = Reranker.from_registry(served_shop())
    with pytest.raises(ModelUnavailable, match="needs a next-item ranker"):
        check_bundle(ModelBundle(recommender.bundle.retriever, session_ranker, recommender.bundle.items))


def test_the_answer_names_each_items_sources_over_http(data: DataDir, active_users: list[str]) -> None:
    from fastapi.testclient import TestClient

    from ranking.service import ServiceConfig, create_app

    with TestClient(create_app(ServiceConfig(data_dir=data.root))) as client:
        body = client.get(f"/recommend/{active_users[0]}", params={"k": 5}).json()
    assert not body["cold_start"] and body["items"][0]["sources"]
    assert set(body["items"][0]["sources"]) <= set(SOURCES)
    assert pd.Series([item["source"] for item in body["items"]]).isin(["ranked", "popular"]).all()
