"""The compiled walk of a LightGBM model scores to the last bit what `Booster.predict` scores, and reaches the same leaves."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from ranking.tree_kernel import SPLIT_ROWS, CompiledTrees


def rows(n: int, seed: int) -> np.ndarray:
    """Features with NaNs, exact zeros, values within LightGBM's zero threshold and wide scales."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)) * np.array([0.01, 1, 10, 100, 1, 1])
    x[rng.random(x.shape) < 0.15] = np.nan
    x[rng.random(x.shape) < 0.1] = 0.0
    x[rng.random(x.shape) < 0.05] = 1e-40
    return x


def booster(params: dict, x: np.ndarray, rounds: int = 60, early_stopping: bool = False) -> lgb.Booster:
    y = (np.nan_to_num(x[:, 1]) + np.nan_to_num(x[:, 2]) / 10 + np.isnan(x[:, 3]) > 0.5).astype(float)
    data = lgb.Dataset(x, y, params={"verbose": -1})
    base = {"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1, "seed": 0, **params}
    if not early_stopping:
        return lgb.train(base, data, num_boost_round=rounds)
    valid = lgb.Dataset(rows(300, 9), (rows(300, 9)[:, 1] > 0).astype(float), reference=data)
    return lgb.train(base, data, num_boost_round=400, valid_sets=[valid], callbacks=[lgb.early_stopping(5, verbose=False)],
                     keep_training_booster=True)  # all its trees, best_iteration marking where predict stops


@pytest.mark.parametrize(
    "params",
    [{}, {"zero_as_missing": True}, {"use_missing": False}, {"objective": "lambdarank"}],
    ids=["nan-missing", "zero-missing", "no-missing", "lambdarank"],
)
def test_scores_and_leaves_are_lightgbms(params: dict) -> None:
    x = rows(2000, 0)
    if params.get("objective") == "lambdarank":
        y = np.random.default_rng(1).integers(0, 2, len(x))
        model = lgb.train({**params, "num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1}, lgb.Dataset(x, y, group=[20] * 100), 40)
    else:
        model = booster(params, x)
    compiled = CompiledTrees.of(model)
    assert compiled is not None
    probe = rows(3000, 2)
    scores, leaves = compiled.predict(probe)
    np.testing.assert_array_equal(scores, model.predict(probe, raw_score=True))
    np.testing.assert_array_equal(leaves, model.predict(probe, pred_leaf=True))


def test_a_split_walk_scores_as_rows_walked_alone() -> None:
    """From SPLIT_ROWS rows the second half walks on another thread: same scores and leaves as a row at a time."""
    model = booster({}, rows(2000, 7))
    compiled = CompiledTrees.of(model)
    assert compiled is not None
    probe = rows(SPLIT_ROWS + 1, 8)  # an odd count: the halves differ by a row
    scores, leaves = compiled.predict(probe)
    alone = [compiled.predict(probe[i : i + 1]) for i in range(len(probe))]
    np.testing.assert_array_equal(scores, np.concatenate([a[0] for a in alone]))
    np.testing.assert_array_equal(leaves, np.concatenate([a[1] for a in alone]))


def test_the_walk_stops_where_predict_stops() -> None:
    model = booster({}, rows(2000, 3), early_stopping=True)
    assert 0 < model.best_iteration < model.num_trees()
    compiled = CompiledTrees.of(model)
    assert compiled is not None and compiled.n_trees == model.best_iteration
    probe = rows(500, 4)
    np.testing.assert_array_equal(compiled.predict(probe)[0], model.predict(probe, raw_score=True))


def test_a_model_with_categorical_splits_is_left_to_lightgbm() -> None:
    x = rows(2000, 5)
    x[:, 0] = np.random.default_rng(6).integers(0, 8, len(x))
    y = (x[:, 0] % 3 == 0).astype(float)
    model = lgb.train({"objective": "binary", "verbose": -1, "min_data_in_leaf": 5}, lgb.Dataset(x, y, categorical_feature=[0]), 20)
    assert CompiledTrees.of(model) is None
