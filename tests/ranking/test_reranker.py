"""The serving reranker: text model round trip, feature-list guard, blend, registry alias."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm
import mlflow
import numpy as np
import pytest

from ranking.artifact_check import write_manifest
from ranking.ranker_features import FEATURE_NAMES
from ranking.reranker import (
    META_FILE,
    MODEL_FILE,
    BlendConfig,
    RankerMetadata,
    Reranker,
    save_ranker,
)
from vitrine.errors import InvalidInput, ModelUnavailable
from vitrine.paths import DataDir
from vitrine.tracking import RANKER_MODEL, configure

F = {name: i for i, name in enumerate(FEATURE_NAMES)}
GAIN = (0.0, 1.0, 3.0, 10.0)


def tiny_training_set(seed: int = 0, requests: int = 60, per_request: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Requests where the label follows clip_sim_recent_max: a model that learns it ranks by it."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(requests * per_request, len(FEATURE_NAMES))).astype(np.float32)
    signal = X[:, F["clip_sim_recent_max"]]
    y = np.digitize(signal, [0.5, 1.0, 1.5]).astype(int)
    return X, y, np.full(requests, per_request)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    X, y, groups = tiny_training_set()
    params = {"objective": "lambdarank", "label_gain": list(GAIN), "min_data_in_leaf": 5, "verbosity": -1, "num_threads": 1}
    data = lightgbm.Dataset(X, label=y, group=groups, feature_name=list(FEATURE_NAMES))
    booster = lightgbm.train(params, data, num_boost_round=20)
    metadata = RankerMetadata(FEATURE_NAMES, GAIN, reference_price=20.0, cvr_prior=0.05, best_iteration=20, lineage={"retriever_version": "7"})
    return save_ranker(booster, tmp_path_factory.mktemp("ranker"), metadata)


def test_saved_as_text_with_feature_list_and_reloads_identically(model_dir: Path):
    assert (model_dir / MODEL_FILE).read_text().startswith("tree")  # LightGBM text, not a pickle
    meta = json.loads((model_dir / META_FILE).read_text())
    assert meta["feature_names"] == list(FEATURE_NAMES) and meta["label_gain"] == list(GAIN)
    ranker = Reranker.load(model_dir)
    X, _, _ = tiny_training_set(seed=1, requests=1)
    again = Reranker.load(model_dir)
    np.testing.assert_array_equal(ranker.score(X), again.score(X))
    assert ranker.feature_names == FEATURE_NAMES and ranker.version.startswith("local-")
    assert ranker.metadata.lineage["retriever_version"] == "7"
    # It learned the planted signal: the most similar candidate comes first.
    order = np.argsort(-ranker.score(X))
    assert X[order[0], F["clip_sim_recent_max"]] >= np.sort(X[:, F["clip_sim_recent_max"]])[-3]


def test_a_model_with_other_features_is_refused_by_name(model_dir: Path, tmp_path: Path):
    # Written (and sealed by a manifest) as a saver of another feature list would write them.
    for name in (MODEL_FILE, META_FILE):
        (tmp_path / name).write_text((model_dir / name).read_text())
    meta = json.loads((tmp_path / META_FILE).read_text())
    meta["feature_names"] = [n for n in meta["feature_names"] if n != "item_cvr_7d"] + ["old_feature"]
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    write_manifest(tmp_path)
    with pytest.raises(ModelUnavailable, match=r"missing \['item_cvr_7d'\].*unknown \['old_feature'\]"):
        Reranker.load(tmp_path)
    meta["feature_names"] = list(reversed(FEATURE_NAMES))
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    write_manifest(tmp_path)
    with pytest.raises(ModelUnavailable, match="another order"):
        Reranker.load(tmp_path)


def test_missing_or_truncated_files_are_model_unavailable(model_dir: Path, tmp_path: Path):
    with pytest.raises(ModelUnavailable, match="missing"):
        Reranker.load(tmp_path)
    (tmp_path / META_FILE).write_text((model_dir / META_FILE).read_text())
    (tmp_path / MODEL_FILE).write_text((model_dir / MODEL_FILE).read_text()[:300])
    write_manifest(tmp_path)
    with pytest.raises(ModelUnavailable, match="LightGBM"):
        Reranker.load(tmp_path)


def test_blend_objectives(model_dir: Path):
    ranker = Reranker.load(model_dir)
    X = np.zeros((3, len(FEATURE_NAMES)), dtype=np.float32)  # identical relevance for all three
    X[:, F["item_cvr_30d"]] = [0.10, 0.05, np.nan]  # unknown CVR -> the prior, 0.05
    X[:, F["item_price"]] = [10.0, 40.0, 40.0]
    engagement = ranker.score(X)
    assert np.allclose(engagement, engagement[0]) and np.array_equal(engagement, ranker.relevance(X))
    revenue = ranker.with_blend(BlendConfig("revenue", alpha=1.0)).score(X)
    # 0.10 x 10/20 = 0.05 < 0.05 x 40/20 = 0.10 (x P(relevant) = 1/3 each)
    assert revenue == pytest.approx([0.05 / 3, 0.10 / 3, 0.10 / 3])
    purchases = ranker.with_blend(BlendConfig("revenue", alpha=0.0)).score(X)
    assert np.argmax(purchases) == 0  # alpha 0: price does not count, the higher CVR wins
    with pytest.raises(InvalidInput, match="objective"):
        BlendConfig("clicks")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="alpha"):
        BlendConfig("revenue", alpha=-1.0)


def test_wrong_shape_is_invalid_input(model_dir: Path):
    with pytest.raises(InvalidInput, match="expected"):
        Reranker.load(model_dir).score(np.zeros((2, 3), dtype=np.float32))


def test_loads_the_champion_from_the_registry(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = DataDir(tmp_path / "data")
    configure(data)
    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), artifact_path="ranker")
    client.create_registered_model(RANKER_MODEL)
    version = client.create_model_version(RANKER_MODEL, source=f"{run.info.artifact_uri}/ranker", run_id=run.info.run_id)
    with pytest.raises(ModelUnavailable, match="champion"):
        Reranker.from_registry(data)
    client.set_registered_model_alias(RANKER_MODEL, "champion", version.version)
    ranker = Reranker.from_registry(data)
    assert ranker.version == f"{RANKER_MODEL}/{version.version}"
    X, _, _ = tiny_training_set(seed=2, requests=1)
    np.testing.assert_array_equal(ranker.score(X), Reranker.load(model_dir).score(X))


def test_reason_contributions_add_up_to_the_score_and_name_the_signal(model_dir: Path):
    from ranking.path_contributions import PathContributions

    ranker = Reranker.load(model_dir)
    X, _, _ = tiny_training_set(seed=2, requests=10)
    X[::7, F["item_price"]] = np.nan  # missing values follow the trees' default branches
    contributions = ranker.contributions(X)
    assert contributions.shape == (len(X), len(FEATURE_NAMES))
    paths = PathContributions(ranker.booster)
    assert paths.bias(ranker.booster.num_trees()) != 0.0
    np.testing.assert_allclose(contributions.sum(axis=1) + paths.bias(ranker.booster.num_trees()), ranker.relevance(X), atol=1e-9)
    # The planted signal is the top reason wherever it moved the score, as TreeSHAP says too.
    top = np.argmax(np.abs(contributions), axis=1)
    shap = ranker.booster.predict(X, pred_contrib=True)[:, :-1]
    assert np.mean(top == F["clip_sim_recent_max"]) > 0.9
    assert np.mean(top == np.argmax(np.abs(shap), axis=1)) > 0.9
    assert ranker.contributions(X[:0]).shape == (0, len(FEATURE_NAMES))
    # From the leaves scoring reached, the same contributions without a second walk.
    scores, leaves = ranker.relevance_and_leaves(X)
    assert leaves is not None and leaves.shape == (len(X), ranker.booster.num_trees())
    np.testing.assert_array_equal(scores, ranker.relevance(X))
    np.testing.assert_array_equal(ranker.contributions(X[::3], leaves[::3]), contributions[::3])
