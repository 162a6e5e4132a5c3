"""The served sequence retriever: the compiled user states equal the tower's, and a saved dir serves what was trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ranking.artifact_check import write_manifest
from ranking.next_item import CONTENT_QUERY_ITEMS, CONTENT_RECENCY, _content_top
from ranking.sequence_retriever import (
    CONTENT_NEIGHBOURS_FILE,
    KERNEL_USERS,
    SequenceRetriever,
    UserStates,
    is_sequence_retriever,
    save_sequence_retriever,
)
from ranking.sequence_tower import SequenceTower, SequenceTowerConfig, pad_histories
from vitrine.errors import ModelUnavailable

N_ITEMS = 50


def tower(content: bool, seed: int = 0, norm_first: bool = False) -> SequenceTower:
    torch.manual_seed(seed)
    vectors = np.random.default_rng(seed).normal(size=(N_ITEMS, 12)).astype(np.float32) if content else None
    config = SequenceTowerConfig(embedding_dim=16, layers=2, heads=2, max_length=8, dropout=0.3, use_content=content,
                                 feedforward_dim=32, norm_first=norm_first)
    model = SequenceTower(config, N_ITEMS, vectors)
    # Trained-looking weights: the default init leaves the blocks' biases at 0 and norms at 1.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


@pytest.mark.parametrize("content, norm_first", [(False, False), (True, False), (True, True)])
def test_compiled_states_equal_the_tower(content: bool, norm_first: bool) -> None:
    model = tower(content, norm_first=norm_first)
    known = np.arange(N_ITEMS) % 7 != 0  # some items the ids never trained on
    retriever = SequenceRetriever.of(model, [f"I{i}" for i in range(N_ITEMS)], known)
    rng = np.random.default_rng(1)
    histories = [rng.choice(N_ITEMS, size=n, replace=False) for n in (1, 2, 5, 8, 8, 3)]
    with torch.inference_mode():
        padded, lengths = pad_histories(histories, model.config.max_length)
        expected = model.user_vectors(padded, lengths, torch.from_numpy(known)[padded]).numpy()
    states = UserStates(model, retriever.vectors)
    # float32 arithmetic in another order: equal to rounding.
    np.testing.assert_allclose(np.stack([states(h) for h in histories]), expected, rtol=1e-4, atol=1e-5)
    # A request (few users) takes the compiled path, a batch the tower's: the same vectors.
    assert len(histories) <= KERNEL_USERS
    np.testing.assert_allclose(retriever.vectors_of(histories), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(retriever.vectors_of(histories * 3)[: len(histories)], expected, rtol=1e-4, atol=1e-5)


def test_a_saved_retriever_serves_what_was_trained(tmp_path: Path) -> None:
    model = tower(content=True)
    known = np.ones(N_ITEMS, dtype=bool)
    ids = [f"I{i}" for i in range(N_ITEMS)]
    memory = SequenceRetriever.of(model, ids, known)
    path = save_sequence_retriever(tmp_path / "retriever", memory, lineage={"run_id": "r1"})
    assert is_sequence_retriever(path)
    loaded = SequenceRetriever.load(path)
    assert loaded.config["ann"] == memory.config["ann"]
    histories = loaded.histories([["I3", "I9", "nope", "I1"], [], None])
    assert [h.tolist() for h in histories] == [[3, 9, 1], [], []]  # unknown ids dropped, no sequence = empty
    np.testing.assert_array_equal(loaded.vectors, memory.vectors)
    np.testing.assert_array_equal(loaded.vectors_of(histories), memory.vectors_of(histories))
    rows, _ = loaded.search(loaded.vectors_of(histories[:1]), 5)
    assert len(rows[0]) == 5 and loaded.version == "r1"
    # The content neighbours are read from the dir, not listed again: each item first, then by cosine.
    neighbours = loaded.content_neighbours
    assert neighbours is not None and loaded.content is not None
    np.testing.assert_array_equal(neighbours, memory.content_neighbours)  # type: ignore[arg-type]
    assert (neighbours[:, 0] == np.arange(N_ITEMS)).all()
    cosines = np.take_along_axis(loaded.content @ loaded.content.T, neighbours.astype(np.int64), axis=1)
    assert (np.diff(cosines, axis=1) <= 1e-6).all()
    np.save(path / CONTENT_NEIGHBOURS_FILE, neighbours[:2])
    write_manifest(path)  # as a saver of the wrong lists would have sealed them
    with pytest.raises(ModelUnavailable, match="content neighbours of 2 items"):
        SequenceRetriever.load(path)
    (path / "item_ids.json").write_text('["I1"]')
    write_manifest(path)
    with pytest.raises(ModelUnavailable, match="item ids"):
        SequenceRetriever.load(path)


def test_the_content_source_ranks_the_neighbour_pool_by_the_recency_weighted_query() -> None:
    retriever = SequenceRetriever.of(tower(content=True), [f"I{i}" for i in range(N_ITEMS)], np.ones(N_ITEMS, dtype=bool))
    content, neighbours = retriever.content, retriever.content_neighbours
    assert content is not None and neighbours is not None
    histories = [np.array([3, 9, 1, 20]), np.array([7]), np.array([], dtype=np.int64)]

    def expected(pool: np.ndarray, history: np.ndarray, k: int) -> list[int]:
        recent = history[-CONTENT_QUERY_ITEMS:][::-1]
        query = (CONTENT_RECENCY ** np.arange(len(recent))) @ content[recent]
        pool = np.setdiff1d(pool, history)
        return pool[np.argsort(-(content[pool] @ query), kind="stable")][:k].tolist()

    # Lists as long as the catalog: the pool is every item, so the source is the exact search.
    top = _content_top(retriever, histories, 10)
    for history, found in zip(histories[:2], top):
        assert found.tolist() == expected(np.arange(N_ITEMS), history, 10)
    assert (top[2] == -1).all()  # no history, no query
    # Short lists: only the last 3 items' neighbours compete (the 4th-last item's are not read).
    retriever.content_neighbours = neighbours[:, :4]
    top = _content_top(retriever, histories[:1], 10)[0]
    pool = np.unique(neighbours[[20, 1, 9], :4])
    assert top[top >= 0].tolist() == expected(pool, histories[0], 10)
