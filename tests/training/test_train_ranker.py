"""The reranker's training task: labels, LambdaRank fit, metrics, and the real pipeline on a tiny shop.

The end-to-end tests use the real stages: a generated shop, `vitrine features build` snapshots read
through Feast's `ranker` service, a TorchRec retriever trained for one epoch, LightGBM, and MLflow
in a temporary SQLite store. They include the leakage canary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ranking.ranker_features import FEATURE_NAMES
from training.evaluate_ranker import evaluate_orders, order_metrics, paired_gain, popularity_order, retriever_order
from training.ranker_dataset import LABEL_GAIN, RankerDataset, label_requests
from training.train_ranker import RankerTrainConfig, fit_ranker
from vitrine.paths import DataDir

F = {name: i for i, name in enumerate(FEATURE_NAMES)}
UTC = "UTC"


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=UTC)


def test_labels_grade_the_strongest_interaction_of_the_session():
    events = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u1", "u1", "u2", "u2", "u3"],
            "item_id": ["a", "a", "a", "b", "c", "a", "b", "a"],
            "event_type": ["view", "click", "purchase", "add_to_cart", "view", "view", "view", "click"],
            "timestamp": [ts("2026-01-02 10:00"), ts("2026-01-02 10:01"), ts("2026-01-02 10:05"), ts("2026-01-02 10:03"),
                          ts("2026-01-02 10:04"), ts("2026-01-02 11:00"), ts("2026-01-02 11:01"), ts("2026-01-05 09:00")],
            "session_id": ["s1", "s1", "s1", "s1", "s1", "s2", "s2", "s3"],
            "price": [None, None, 12.5, None, None, None, None, None],
            "quantity": [None, None, 2.0, None, None, None, None, None],
        }
    )  # fmt: skip
    requests = label_requests(events, ts("2026-01-01"), ts("2026-01-04"))
    # s2 only viewed: no ranking signal, dropped; s3 starts after the window.
    assert requests.frame["user_id"].tolist() == ["u1"]
    assert requests.frame["timestamp"].iloc[0] == ts("2026-01-02 10:00")  # the session start
    labels = requests.labels.set_index("item_id")
    assert labels["grade"].to_dict() == {"a": 3, "b": 2}  # purchase beats click; the view of c is none
    assert labels.loc["a", "revenue"] == pytest.approx(25.0)
    # Without session ids (the Amazon import) the user's UTC day is the session.
    no_sessions = label_requests(events.drop(columns=["session_id"]), ts("2026-01-01"), ts("2026-01-06"))
    assert no_sessions.frame["user_id"].tolist() == ["u1", "u3"]
    assert LABEL_GAIN[3] > LABEL_GAIN[2] > LABEL_GAIN[1] > LABEL_GAIN[0] == 0


def synthetic_dataset(seed: int, requests: int = 120, per_request: int = 30) -> RankerDataset:
    """Retriever order is weakly informative; conversion and similarity carry the rest of the label."""
    rng = np.random.default_rng(seed)
    n = requests * per_request
    X = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    X[:, F["retriever_rank"]] = np.tile(np.arange(per_request), requests)
    utility = 0.3 * -X[:, F["retriever_rank"]] / per_request + X[:, F["clip_sim_recent_max"]] + X[:, F["item_cvr_30d"]]
    labels = np.digitize(utility + 0.3 * rng.normal(size=n), [1.2, 1.8, 2.4])
    return RankerDataset(
        features=X,
        labels=labels,
        revenue=np.where(labels == 3, 20.0, 0.0),
        group_sizes=np.full(requests, per_request),
        request_ids=np.arange(requests),
        request_times=np.zeros(requests, dtype="datetime64[ns]"),
        item_ids=np.array([f"I{i % per_request}" for i in range(n)], dtype=object),
        from_retriever=np.ones(n, dtype=bool),
        positives=np.array([max(1, (labels[i * per_request : (i + 1) * per_request] > 0).sum()) for i in range(requests)]),
    )


def test_lambdarank_fit_beats_retriever_order_and_stops_early():
    train, valid, test = synthetic_dataset(0), synthetic_dataset(1), synthetic_dataset(2)
    config = RankerTrainConfig(max_rounds=300, early_stopping_rounds=10, min_data_in_leaf=20, num_threads=1)
    fit = fit_ranker(train, valid, config)
    assert 1 <= fit.best_iteration < 300
    assert len(fit.history["valid"]) == len(fit.history["train"]) >= fit.best_iteration
    top_two = set(fit.importance["feature"].head(2))
    assert top_two == {"clip_sim_recent_max", "item_cvr_30d"}
    scores = fit.booster.predict(test.features, num_iteration=fit.best_iteration)
    figures = evaluate_orders(test, {"retriever": retriever_order(test), "reranked": scores})
    assert figures["reranked"]["ndcg_at_10"] > figures["retriever"]["ndcg_at_10"] + 0.1
    assert figures["reranked"]["purchases_at_10"] > figures["retriever"]["purchases_at_10"]
    gain = paired_gain(test, scores, retriever_order(test))["ndcg_at_10"]
    assert 0 < gain["ci95_low"] < gain["gain"] < gain["ci95_high"]  # the same lists, paired: a clear gain


def test_order_metrics_by_hand():
    labels = np.array([0, 3, 1, 0])  # one request, four candidates
    data = RankerDataset(
        features=np.zeros((4, len(FEATURE_NAMES)), np.float32),
        labels=labels,
        revenue=np.array([0, 30.0, 0, 0]),
        group_sizes=np.array([4]),
        request_ids=np.array([0]),
        request_times=np.zeros(1, dtype="datetime64[ns]"),
        item_ids=np.array(list("abcd"), dtype=object),
        from_retriever=np.ones(4, bool),
        positives=np.array([3]),  # the session had a third positive the candidates missed
    )
    perfect = order_metrics(data, np.array([0, 9, 5, 1.0]), k=2)
    assert perfect.ndcg_at_k == pytest.approx(1.0)
    assert perfect.recall_at_k == pytest.approx(2 / 3) and perfect.purchases_at_k == 1 and perfect.revenue_at_k == 30
    worst = order_metrics(data, np.array([9, 0, 1, 8.0]), k=2)
    assert worst.ndcg_at_k == 0 and worst.purchases_at_k == 0
    data.features[:, F["item_popularity_rank"]] = [2, 1, np.nan, 3]
    assert np.argsort(-popularity_order(data)).tolist() == [1, 0, 3, 2]  # unknown popularity last


def test_request_windows_grow_back_where_days_are_sparse():
    from training.train_ranker import Windows

    end = ts("2026-06-01")
    config = RankerTrainConfig(train_days=21, valid_days=3, min_train_requests=4, min_valid_requests=2)
    # Dense: a request an hour for two months; the calendar's 3 + 21 days hold far more than the minima.
    dense = pd.Series(pd.date_range(end - pd.Timedelta(days=60), end, freq="h", inclusive="left"))
    assert Windows.fitting(dense, end, config) == Windows.before(end, config)
    # Sparse: an order a month. Validation reaches back to its 2 requests, training to 4 more before them.
    sparse = pd.Series(pd.date_range("2025-06-15", periods=11, freq="MS", tz=UTC) + pd.Timedelta(hours=9))
    windows = Windows.fitting(sparse, end, config)
    assert windows.end == end and windows.valid_start == ts("2026-04-01") and windows.train_start == ts("2025-12-01")
    assert ((sparse >= windows.valid_start) & (sparse < end)).sum() == 2
    assert ((sparse >= windows.train_start) & (sparse < windows.valid_start)).sum() == 4
    # Fewer requests than both minima: shared in the minima's proportion, validation never takes them all.
    scarce = Windows.fitting(sparse, end, RankerTrainConfig(min_train_requests=50, min_valid_requests=10))
    assert ((sparse >= scarce.valid_start) & (sparse < end)).sum() == 2 and scarce.train_start <= sparse.min()


# --- end to end on a tiny shop ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_shop(retriever_data: DataDir) -> tuple[DataDir, object]:
    """A generated shop with features and stand-in item vectors, and a one-epoch retriever."""
    import os

    from ranking.retriever import Retriever
    from ranking.two_tower import TwoTowerConfig
    from training.train_retriever import TrainConfig, train_retriever

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    data = retriever_data
    run = train_retriever(
        data,
        TrainConfig(epochs=1, batch_size=256, random_negatives=32, validation_days=0),
        TwoTowerConfig(embedding_dim=16, hidden_dim=32, output_dim=16),
        register=False,
        show_progress=False,
    )
    assert run.model_dir is not None
    return data, Retriever.load(run.model_dir, version="test-retriever")


def test_leakage_canary_a_label_one_second_ahead_is_not_visible(tiny_shop, tmp_path: Path):
    """Plant the label itself in the feature store, one second after the request: it must not come back.

    The canary is a `user_recent_items` row at t + 1 s whose recent items are exactly the session's
    positives (the label shifted one second into the future). A control row at t - 1 s proves that
    the same plant made visible in time would be read.
    """
    import shutil

    from ranking.ranker_features import UserContext, build_features
    from training.ranker_dataset import label_requests
    from training.train_ranker import point_in_time_features
    from vitrine.shop.store import read_events, read_items

    data, _ = tiny_shop
    copy = DataDir(tmp_path / "data")
    shutil.copytree(data.root, copy.root, ignore=shutil.ignore_patterns("feast", "mlflow", "models"))
    events, items = read_events(copy), read_items(copy)
    end = events["timestamp"].max() + pd.Timedelta(seconds=1)
    requests = label_requests(events, end - pd.Timedelta(days=3), end, items)
    request = requests.frame.iloc[len(requests.frame) // 2]
    label_items = requests.labels[requests.labels["request_id"] == request["request_id"]]["item_id"].tolist()
    assert label_items

    def plant(when: pd.Timestamp, name: str) -> None:
        row = pd.read_parquet(next((copy.features / "user_recent_items").glob("*.parquet"))).head(1).copy()
        row["user_id"] = request["user_id"]
        row["event_timestamp"] = when
        row["recent_item_ids"] = [label_items]
        if "created" in row:
            row["created"] = when
        row.to_parquet(copy.features / "user_recent_items" / f"{name}.parquet", index=False)

    one = Requests_of(requests, request)
    plant(request["timestamp"] + pd.Timedelta(seconds=1), "zz-canary")
    user_rows, tables = point_in_time_features(copy, one, items)
    recent = user_rows.iloc[0]["recent_item_ids"]
    recent = [] if recent is None or (isinstance(recent, float)) else list(recent)
    assert recent != label_items, "a feature row from one second after the request leaked into its features"
    X = build_features(tables(request["day"]), UserContext.from_features(user_rows.iloc[0].to_dict()), label_items, np.zeros(len(label_items)))
    assert X[:, F["seen_recently"]].sum() == sum(item in recent for item in label_items)

    plant(request["timestamp"] - pd.Timedelta(seconds=1), "zz-canary")  # control: the same row, in time
    user_rows, _ = point_in_time_features(copy, one, items)
    assert list(user_rows.iloc[0]["recent_item_ids"]) == label_items


def Requests_of(requests, request):  # noqa: N802 - reads as a constructor
    from training.ranker_dataset import Requests

    frame = requests.frame[requests.frame["request_id"] == request["request_id"]].reset_index(drop=True)
    return Requests(frame, requests.labels[requests.labels["request_id"] == request["request_id"]])


def test_train_ranker_saves_logs_and_registers(tiny_shop):
    import mlflow

    from ranking.reranker import Reranker
    from training.ranker_dataset import DatasetConfig
    from training.train_ranker import RetrieverCandidates, train_ranker
    from vitrine.tracking import RANKER_MODEL, configure

    data, retriever = tiny_shop
    config = RankerTrainConfig(train_days=12, valid_days=3, max_rounds=30, min_data_in_leaf=5, num_leaves=7,
                               dataset=DatasetConfig(candidates=50, inject_positives=True))  # fmt: skip
    result = train_ranker(data, config, retriever=RetrieverCandidates(retriever), progress=False)
    assert result.registered_version == "1" and result.train_summary["injected_rows"] > 0
    assert result.valid_summary["injected_rows"] == 0  # validation looks like serving: no injected positives
    ranker = Reranker.load(result.model_dir)
    assert ranker.feature_names == FEATURE_NAMES
    assert ranker.metadata.lineage["retriever_version"] == "test-retriever"

    configure(data)
    client = mlflow.MlflowClient()
    version = client.get_model_version(RANKER_MODEL, "1")
    assert version.tags["retriever_version"] == "test-retriever" and "ranker" in version.tags["feature_services"]
    assert "data_snapshot" in version.tags and "git_commit" in version.tags
    run = client.get_run(result.run_id)
    assert run.data.params["serving_threads"] == "1" and run.data.params["dataset.candidates"] == "50"
    history = client.get_metric_history(result.run_id, "valid_ndcg_at_10")
    assert len(history) >= result.best_iteration
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"feature_importance.png", "feature_importance.json", "ranker"} <= artifacts
    importance = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="feature_importance.json")).read_text())
    assert "gain" in importance["columns"]


def test_cli_names_the_missing_retriever(tmp_path: Path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    vitrine = Path(sys.executable).with_name("vitrine")
    done = subprocess.run([str(vitrine), "train", "ranker", "--json", "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 4, done.stderr  # ModelUnavailable
    assert "vitrine-retriever@champion" in done.stderr
