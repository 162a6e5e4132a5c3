"""Serving the retriever: save/load round trip, exclusions, no -1 padding, exact vs HNSW, registry errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ranking.ann import AnnConfig, ann_recall, build_index, index_kind, search
from ranking.retriever import Candidate, Retriever, save_retriever
from ranking.retriever_inputs import InputSpec, encode_items, encode_users
from ranking.two_tower import TwoTower, TwoTowerConfig
from vitrine.errors import InvalidInput, ModelUnavailable
from vitrine.paths import DataDir

DIM = 8
N_ITEMS = 40


def _catalog() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "item_id": [f"I{i:03d}" for i in range(N_ITEMS)],
            "category": rng.choice(["shoes", "bags"], N_ITEMS),
            "brand": rng.choice(["a", "b"], N_ITEMS),
            "price_band": rng.integers(0, 5, N_ITEMS),
            "embedding": list(rng.standard_normal((N_ITEMS, DIM)).astype(np.float32)),
        }
    )


def _users() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["U1", "U2", "U3"],
            "recent_item_ids": [["I001", "I002"], [], None],
            "top_category": ["shoes", None, "bags"],
            "events_7d": [3, 0, None],
        }
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TwoTower, InputSpec]:
    catalog = _catalog()
    examples = catalog.head(30).assign(user_id=["U1", "U2"] * 15, weight=1.0)
    examples["recent_item_ids"] = [["I001"]] * 30
    spec = InputSpec.fit(examples, DIM)
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(embedding_dim=8, hidden_dim=16, output_dim=8), spec.table_sizes, DIM).eval()
    with torch.inference_mode():
        vectors = model.item_vectors(encode_items(catalog, spec).batch(np.arange(N_ITEMS))).numpy()
    path = save_retriever(tmp_path_factory.mktemp("ret") / "retriever", model, spec, catalog["item_id"].tolist(), vectors,
                          lineage={"run_id": "abc123", "data_snapshot": "deadbeef"})  # fmt: skip
    return path, model, spec


def test_saved_dir_holds_the_documented_files_and_no_pickle(saved) -> None:
    path, _, _ = saved
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["config.json", "model.safetensors", "vocab.json", "item_vectors.npy", "item_ids.json", "index.faiss", "manifest.json"]
    )
    manifest = json.loads((path / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(p.name for p in path.iterdir() if p.name != "manifest.json")
    config = json.loads((path / "config.json").read_text())
    assert config["lineage"]["data_snapshot"] == "deadbeef"
    assert config["ann"]["kind"] == "exact"


def test_loaded_retriever_scores_users_like_the_trained_model(saved) -> None:
    path, model, spec = saved
    retriever = Retriever.load(path)
    assert retriever.version == "abc123"
    assert retriever.item_ids[:2] == ["I000", "I001"]
    with torch.inference_mode():
        expected = model.user_vectors(encode_users(_users(), spec).batch(np.arange(3))).numpy()
    np.testing.assert_allclose(retriever.user_vectors(_users()), expected, rtol=1e-5, atol=1e-6)


def test_retrieve_returns_k_best_first_without_excluded_items(saved) -> None:
    retriever = Retriever.load(saved[0])
    features = _users().iloc[0].to_dict()
    everything = retriever.retrieve("U1", N_ITEMS, user_features=features)
    excluded = {c.item_id for c in everything[:3]}
    found = retriever.retrieve("U1", 10, user_features=features, exclude_items=excluded)
    assert len(found) == 10 and all(isinstance(c, Candidate) for c in found)
    assert excluded.isdisjoint(c.item_id for c in found)
    assert [c.score for c in found] == sorted((c.score for c in found), reverse=True)
    assert [c.item_id for c in found] == [c.item_id for c in everything[3:13]]


def test_k_beyond_the_catalog_returns_every_item_once_and_never_padding(saved) -> None:
    retriever = Retriever.load(saved[0])
    found = retriever.retrieve("someone-new", 500, user_features=None, exclude_items={"I000"})
    ids = [c.item_id for c in found]
    assert len(ids) == N_ITEMS - 1 == len(set(ids))
    assert "I000" not in ids and all(i in retriever.item_ids for i in ids)


def test_batch_matches_single_calls(saved) -> None:
    retriever = Retriever.load(saved[0])
    users = _users()
    batch = retriever.retrieve_batch(users, 5, exclude_items=[{"I001"}, set(), set()])
    for row, found in zip(users.to_dict("records"), batch):
        single = retriever.retrieve(row["user_id"], 5, user_features=row, exclude_items={"I001"} if row["user_id"] == "U1" else ())
        assert [c.item_id for c in found] == [c.item_id for c in single]
    with pytest.raises(InvalidInput, match="k"):
        retriever.retrieve_batch(users, 0)


def test_hnsw_beyond_the_exact_limit_keeps_high_recall() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:100] + 0.1 * rng.standard_normal((100, 16)).astype(np.float32)
    hnsw = build_index(vectors, AnnConfig(exact_max_items=1000))
    assert index_kind(hnsw) == "hnsw" and index_kind(build_index(vectors)) == "exact"
    assert ann_recall(hnsw, vectors, queries, k=50) > 0.95
    rows, _ = search(hnsw, queries[:2], k=5000)  # more than the index holds: all rows, no -1
    assert all(len(r) <= 3000 and (r >= 0).all() for r in rows)


def test_a_wide_hnsw_search_returns_k_and_leaves_the_shared_index_as_it_was() -> None:
    import faiss

    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = build_index(vectors, AnnConfig(exact_max_items=100, hnsw_ef_search=16))
    rows, _ = search(index, vectors[:3], k=400)
    assert [len(r) for r in rows] == [400, 400, 400]
    assert faiss.downcast_index(index).hnsw.efSearch == 16  # other threads' searches keep their cost


def test_missing_files_and_missing_alias_raise_model_unavailable(saved, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "vocab.json", "model.safetensors"):
        (broken / name).write_bytes((saved[0] / name).read_bytes())
    with pytest.raises(ModelUnavailable, match="item_ids.json"):
        Retriever.load(broken)
    with pytest.raises(ModelUnavailable, match="vitrine-retriever@never-set"):
        Retriever.from_registry(DataDir.resolve(tmp_path / "data"), alias="never-set")


def _online_rows() -> list[dict[str, object]]:
    """Feature rows as the online readers hand them: nulls as None, keys absent, odd ids, a prefixed name."""
    return [
        {"user_id": "U1", "recent_item_ids": ["I001", "I999", "I002"], "top_category": "shoes", "events_7d": 3,
         "user_stats__views_30d": 12, "avg_price_paid": 19.5, "days_since_last_event": 2.0},
        {"user_id": "never-seen", "recent_item_ids": [], "top_category": "hats", "events_7d": None,
         "user_stats__views_30d": None, "days_since_last_purchase": None},
        {"user_id": "U2", "recent_item_ids": None, "top_category": None, "events_7d": 0, "avg_price_paid": None},
        {"user_id": "U3", "recent_item_ids": ["I999"], "events_30d": 40, "max_price_paid": 250.0,
         "days_since_last_event": 0.5, "purchase_rate_30d": 0.25},
    ]  # fmt: skip


def test_dict_rows_encode_exactly_like_the_frame_of_the_same_rows(saved) -> None:
    path, _, spec = saved
    # Non-trivial dense statistics, so that the standardisation is exercised too.
    stats = {key: (0.1 * n, 0.5 + 0.25 * n) for n, key in enumerate(sorted(spec.dense_stats))}
    rows = _online_rows()
    for used in (spec, InputSpec.from_json({**spec.to_json(), "dense_stats": stats})):
        fast, slow = encode_users(rows, used), encode_users(pd.DataFrame(rows), used)
        for name in ("user_idx", "recent_values", "recent_offsets", "top_category", "dense"):
            got, want = getattr(fast, name), getattr(slow, name)
            assert got.dtype == want.dtype and np.array_equal(got, want), name
        # The prefixed column is read (not "absent, so zero") and unknown ids and items map to UNKNOWN.
        assert fast.user_idx[1] == 0 and fast.top_category[1] == 0 and fast.top_category[2] == 0
        assert fast.recent_offsets.tolist() == [0, 2, 2, 2, 2]  # I999 is unknown: it carries no signal
        fast_in, slow_in = fast.batch(np.arange(4)), slow.batch(np.arange(4))
        assert torch.equal(fast_in.dense, slow_in.dense)
        assert torch.equal(fast_in.sparse.values(), slow_in.sparse.values())
        assert torch.equal(fast_in.sparse.lengths(), slow_in.sparse.lengths())
    prefixed = encode_users(rows[:1], spec).dense[0]
    renamed = {k.removeprefix("user_stats__"): v for k, v in rows[0].items()}
    assert np.array_equal(prefixed, encode_users([renamed], spec).dense[0])
    assert not np.array_equal(prefixed, encode_users([{**renamed, "views_30d": None}], spec).dense[0])
    retriever = Retriever.load(path)
    assert np.array_equal(retriever.user_vectors(rows), retriever.user_vectors(pd.DataFrame(rows)))
    # Items share the dense encoder: a signed feature (a falling trend) and a prefixed one stay exact too.
    items = [{"item_id": "I001", "trend_7d_30d": -0.4, "item_stats__views_30d": 7, "price": None},
             {"item_id": "new", "trend_7d_30d": None, "price": 12.0}]  # fmt: skip
    assert np.array_equal(encode_items(items, spec).dense, encode_items(pd.DataFrame(items), spec).dense)


@pytest.mark.parametrize(
    "config",
    [TwoTowerConfig(embedding_dim=8, hidden_dim=16, output_dim=8), TwoTowerConfig(embedding_dim=8, hidden_dim=16, output_dim=8, use_content=False, use_features=False)],
    ids=["multimodal", "id-only"],
)
def test_serving_user_tower_equals_the_torchrec_towers(saved, config: TwoTowerConfig) -> None:
    from ranking.user_tower import UserTower

    _, _, spec = saved
    torch.manual_seed(1)
    model = TwoTower(config, spec.table_sizes, DIM).eval()
    with torch.no_grad():  # non-zero tables everywhere, so that a wrong row or pooling would show
        for parameter in model.parameters():
            parameter.normal_()
    users = pd.concat([_users(), pd.DataFrame({"user_id": ["U9"], "recent_item_ids": [["I003", "I001", "nope"]], "top_category": ["x"]})])
    encoded = encode_users(users, spec)
    with torch.inference_mode():
        expected = model.user_vectors(encoded.batch(np.arange(len(encoded)))).numpy()
    np.testing.assert_allclose(UserTower(model)(encoded), expected, rtol=1e-5, atol=1e-6)
