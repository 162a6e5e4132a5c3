"""Training the retriever end to end on a tiny shop: DMP in-process, 2-process torchrun, MLflow registry."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from feature_repo.sequences import positive_interactions
from ranking.retriever import Retriever
from ranking.retriever_inputs import InputSpec
from training.retriever_data import (
    PointInTime,
    Split,
    TrainingSet,
    choose_split_time,
    content_dim,
    time_split,
    with_features,
)
from training.train_retriever import TrainConfig, train_retriever
from vitrine.errors import InvalidInput
from vitrine.paths import DataDir
from vitrine.shop.store import read_events, read_items

sys.path.insert(0, str(Path(__file__).parent))

TINY = TrainConfig(epochs=2, batch_size=128, random_negatives=32, validation_days=3)


@pytest.fixture(scope="module")
def shop(retriever_data: DataDir) -> DataDir:
    return retriever_data


def test_examples_carry_features_as_of_their_day_only(shop: DataDir) -> None:
    positives = positive_interactions(read_events(shop))
    narrow = read_events(shop, columns=["user_id", "item_id", "event_type", "session_id"], categorical=True)
    assert list(narrow.columns) == ["user_id", "item_id", "event_type", "session_id", "timestamp"]
    assert isinstance(narrow["user_id"].dtype, pd.CategoricalDtype)
    pd.testing.assert_frame_equal(positive_interactions(narrow), positives)  # what training reads
    assert positives.groupby(["user_id", "item_id"]).size().max() >= 1
    assert set(positives["weight"]) <= {1.0, 2.0, 3.0, 4.0}
    features = PointInTime.for_interactions(shop, positives, read_items(shop))
    frame = features.join(positives)
    assert len(frame) == len(positives) and (frame["item_id"].to_numpy() == positives["item_id"].to_numpy()).all()
    # The user's recent items at an interaction never include anything from that day or later.
    events = read_events(shop)
    sample = frame[frame["recent_item_ids"].notna()].sample(50, random_state=0)
    for row in sample.itertuples():
        day = row.timestamp.floor("D")
        before = set(events[(events.user_id == row.user_id) & (events.timestamp < day)].item_id)
        assert set(row.recent_item_ids) <= before


def test_train_logs_registers_and_serves(shop: DataDir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = train_retriever(shop, TINY, show_progress=False)
    assert run.version == "1" and run.model_dir is not None
    assert [set(e) >= {"loss", "examples_per_s", "val_recall_at_100", "val_ndcg_at_10"} for e in run.fit.epochs] == [True, True]
    assert run.ann_recall_at_100 == 1.0  # a small catalog gets the exact index

    client = mlflow.MlflowClient()
    version = client.get_model_version("vitrine-retriever", "1")
    assert version.tags["embedding_model_version"] == "stand-in"
    assert version.tags["feature_service"].startswith("retriever")
    assert len(version.tags["data_snapshot"]) == 16
    history = client.get_metric_history(run.run_id, "loss")
    assert len(history) == TINY.epochs

    client.set_registered_model_alias("vitrine-retriever", "champion", "1")
    served = Retriever.from_registry(shop)
    assert served.version == "1" and len(served.item_ids) == len(read_items(shop))
    # Every catalog item, including those listed after training's cut-off, is retrievable.
    found = served.retrieve("U-new", len(served.item_ids), user_features={"recent_item_ids": served.item_ids[:3]})
    assert len(found) == len(served.item_ids)


@pytest.fixture(scope="module")
def week_split(shop: DataDir) -> Split:
    """The time protocol's split of the tiny shop: the last 7 days are the test."""
    return time_split(shop, features_of(shop), read_items(shop), 7)


def features_of(shop: DataDir) -> pd.DataFrame:
    return with_features(shop, positive_interactions(read_events(shop)))


def test_random_negatives_never_include_items_unseen_in_training(week_split: Split) -> None:
    assert len(week_split.cold_items) > 0
    spec = InputSpec.fit(week_split.train, content_dim(week_split.catalog))
    train = TrainingSet.of(week_split.train, week_split.catalog, spec)
    assert len(train.negative_pool) > 0
    assert not set(train.negative_pool.tolist()) & set(week_split.cold_items.tolist())


def test_multimodal_towers_rank_cold_items_from_content(week_split: Split) -> None:
    """Items with no training interaction still land in users' lists when their content matches."""
    from tests.shops import tiny_next_item_config
    from training.evaluate_retriever import EvaluationConfig, evaluate_split

    config = EvaluationConfig(train=TrainConfig(epochs=4, batch_size=128, validation_days=0), tune_als=False,
                              next_item=tiny_next_item_config())
    report = evaluate_split(week_split, config)
    cold = {name: figures["cold_start"]["recall@20"] for name, figures in report["models"].items()}
    assert cold["two_tower_multimodal"] > cold["two_tower_id_only"]
    assert cold["two_tower_multimodal"] > cold["popularity"]
    # The next-item tower reaches cold items through their content too (its unknown id row plus the CLIP projection).
    assert cold["sequence_tower"] > cold["popularity"]
    assert set(report["models"]) >= {"sequence_tower", "next_item"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_process_torchrun_trains_one_sharded_model(shop: DataDir, tmp_path: Path) -> None:
    reports = tmp_path / "ranks"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VITRINE_DATA_DIR": str(shop.root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [
        str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "training.train_retriever", "--data-dir", str(shop.root), "--epochs", "1", "--batch-size", "128",
        "--validation-days", "3", "--no-register", "--report-dir", str(reports),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (json.loads((reports / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert (rank0["world_size"], rank1["world_size"]) == (2, 2)
    assert rank0["plan"] == rank1["plan"]  # one plan for both ranks
    assert rank0["replicated_digest"] == rank1["replicated_digest"]  # the data-parallel part is identical
    # Table-wise sharding: each rank holds tables, none holds them all, together they hold every table.
    assert rank0["local_tables"] and rank1["local_tables"]
    assert not set(rank0["local_tables"]) & set(rank1["local_tables"])
    # Losses are all-reduced: one sum on both ranks; 1e-6 relative covers gloo summing in another order.
    assert rank0["epochs"][0]["loss"] == pytest.approx(rank1["epochs"][0]["loss"], rel=1e-6)
    # The gathered model (rank 0) is complete and serves.
    retriever = Retriever.load(rank0["model_dir"])
    found = retriever.retrieve("U-any", 10, user_features={"recent_item_ids": retriever.item_ids[:2]})
    assert len(found) == 10 and len({c.item_id for c in found}) == 10
    assert np.isfinite([c.score for c in found]).all()


def test_history_window_starts_n_event_days_back_from_the_last(shop: DataDir, tmp_path: Path) -> None:
    from training.train_retriever import history_start
    from vitrine.shop.store import event_days

    last = pd.Timestamp(event_days(shop)[-1], tz="UTC")
    assert history_start(shop, None) is None
    assert history_start(shop, 1) == last
    start = history_start(shop, 5)
    assert start == last - pd.Timedelta(days=4)
    window = read_events(shop, start=start)
    assert window["timestamp"].min().floor("D") == start and window["timestamp"].max().floor("D") == last
    assert len(window) < len(read_events(shop))
    with pytest.raises(InvalidInput, match="history_days"):
        history_start(shop, 0)
    assert history_start(DataDir.resolve(tmp_path / "empty"), 5) is None


def test_validation_sample_keeps_each_users_targets_and_history(week_split: Split) -> None:
    n = len(week_split.test_users)
    assert n > 4
    sample = week_split.sample_users(4, seed=1)
    assert len(sample.test_users) == len(sample.targets) == len(sample.history) == 4
    position = {user: i for i, user in enumerate(week_split.test_users["user_id"])}
    picked = [position[user] for user in sample.test_users["user_id"]]
    assert picked == sorted(picked)  # original order kept
    for row, i in enumerate(picked):
        assert np.array_equal(sample.targets[row], week_split.targets[i]) and np.array_equal(sample.history[row], week_split.history[i])
    assert sample.train is week_split.train and week_split.sample_users(n) is week_split


def _assert_same_set(got: TrainingSet, want: TrainingSet) -> None:
    rows = np.arange(len(want))
    for name in ("weights", "item_key", "item_prob", "catalog_prob", "negative_pool"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert got.total == want.total and got.shard == want.shard
    for a, b in ((got.users.batch(rows), want.users.batch(rows)), (got.items.batch(rows), want.items.batch(rows))):
        assert torch.equal(a.sparse.values(), b.sparse.values()) and torch.equal(a.sparse.lengths(), b.sparse.lengths())
        assert torch.equal(a.dense, b.dense)
    assert torch.equal(got.items.batch(rows).content, want.items.batch(rows).content)


def test_chunked_loader_equals_the_joined_frame_and_shards_by_rank(shop: DataDir, monkeypatch: pytest.MonkeyPatch) -> None:
    """TrainingSet.read (chunk by chunk, per rank) encodes exactly what joining the whole log would."""
    import training.retriever_data as retriever_data
    from training.retriever_data import end_of_log, fit_spec, on_days

    items = read_items(shop)
    positives = positive_interactions(read_events(shop))
    end = end_of_log(positives)
    catalog = PointInTime.read(shop, on_days([], "user_id", []), on_days(items["item_id"], "item_id", [end]), items).catalog(items, end)
    frame = PointInTime.for_interactions(shop, positives, items).join(positives)
    spec = fit_spec(shop, positives, items, content_dim(catalog))
    assert spec == InputSpec.fit(frame, content_dim(catalog))  # no sampling below SPEC_SAMPLE examples
    whole = TrainingSet.of(frame, catalog, spec)

    monkeypatch.setattr(retriever_data, "CHUNK_EXAMPLES", len(positives) // 5)  # several chunks of whole days
    chunks: list[int] = []
    read = TrainingSet.read(shop, positives, catalog, spec, items, on_chunk=lambda done, total: chunks.append(done))
    assert len(chunks) >= 4 and chunks[-1] == len(positives)
    _assert_same_set(read, whole)
    second = TrainingSet.read(shop, positives, catalog, spec, items, shard=(1, 2))
    assert len(second) == len(positives) // 2 and second.total == len(positives)
    _assert_same_set(second, whole.share(1, 2))
    with pytest.raises(InvalidInput, match="share"):
        second.share(0, 2)


def test_spec_fitted_on_a_sample_keeps_every_id(shop: DataDir) -> None:
    from training.retriever_data import fit_spec

    items = read_items(shop)
    positives = positive_interactions(read_events(shop))
    spec = fit_spec(shop, positives, items, 16, sample=500, seed=3)
    assert set(spec.users) == set(positives["user_id"]) and set(spec.items) == set(positives["item_id"])
    full = fit_spec(shop, positives, items, 16)
    assert spec.dense_stats != full.dense_stats  # the statistics did come from the sample
    for name, (mean, std) in full.dense_stats.items():
        assert spec.dense_stats[name][0] == pytest.approx(mean, abs=0.25 * std + 1e-6), name


def _log(rows: list[tuple[str, str]]) -> pd.DataFrame:
    """Events of (user, day) pairs."""
    return pd.DataFrame({"user_id": [u for u, _ in rows], "timestamp": pd.to_datetime([d for _, d in rows], utc=True)})


def test_split_time_reaches_back_until_the_test_window_holds_enough_users() -> None:
    # Dense: the last 3 days hold 4 users, as many as asked: the calendar's T.
    dense = _log([("a", "2026-01-01"), ("b", "2026-01-02"), ("a", "2026-01-08"), ("b", "2026-01-09"),
                  ("c", "2026-01-10"), ("d", "2026-01-10")])  # fmt: skip
    assert choose_split_time(dense, 3, 4, max_test_share=1.0) == pd.Timestamp("2026-01-08", tz="UTC")
    # Sparse: an order-only log with one order on its last days; T moves back to the day that holds 3 users.
    sparse = _log([("a", "2025-06-01"), ("b", "2025-07-01"), ("c", "2025-09-01"), ("b", "2025-11-20"),
                   ("a", "2025-12-01"), ("d", "2026-01-10")])  # fmt: skip
    assert choose_split_time(sparse, 3, 3, max_test_share=1.0) == pd.Timestamp("2025-11-20", tz="UTC")
    # ... but never so far that more than half the events are held out, nor onto the first day.
    assert choose_split_time(sparse, 3, 4) == pd.Timestamp("2025-11-20", tz="UTC")
    assert choose_split_time(sparse, 3, 99, max_test_share=1.0) == pd.Timestamp("2025-06-02", tz="UTC")


def test_next_only_targets_are_each_users_first_new_items_after_the_cutoff(week_split: Split, shop: DataDir) -> None:
    examples = with_features(shop, positive_interactions(read_events(shop)))
    everything = time_split(shop, examples, read_items(shop), cutoff=week_split.cutoff)
    following = time_split(shop, examples, read_items(shop), cutoff=week_split.cutoff, next_only=True)
    assert everything.cutoff == following.cutoff == week_split.cutoff
    assert len(following.train) == len(everything.train)
    assert set(following.test_users["user_id"]) <= set(everything.test_users["user_id"])
    catalog = following.catalog["item_id"].to_numpy()
    test = examples[examples["timestamp"] >= following.cutoff]
    shorter = 0
    for user, targets, all_targets in zip(following.test_users["user_id"], following.targets, everything.targets):
        assert set(targets) <= set(all_targets)
        shorter += len(targets) < len(all_targets)
        first_day = test[test["user_id"] == user].groupby("item_id")["timestamp"].min().dt.floor("D")
        assert first_day.loc[list(catalog[targets])].nunique() == 1  # one day: the user's next one
    assert shorter > 0
