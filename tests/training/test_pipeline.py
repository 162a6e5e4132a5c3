"""The training pipeline: MLflow run tree, resume after a real failure, tracking in SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from training.pipeline import PipelineConfig, Step, StepContext, StepFailed, run_pipeline
from vitrine.paths import DataDir

PG = "127.0.0.1"


def tracking_client(data: DataDir) -> MlflowClient:
    """A client of the data dir's store; the registry named explicitly, not MLflow's process-wide default."""
    uri = data.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def children(client: MlflowClient, parent_run_id: str) -> list[Any]:
    experiment = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return sorted(runs, key=lambda r: r.info.start_time)


def read_input(ctx: StepContext) -> dict[str, Any]:
    return {"rows": len(pd.read_parquet(ctx.data.root / "input.parquet"))}


def double(ctx: StepContext) -> dict[str, Any]:
    return {"doubled": 2 * ctx.output("read", "rows")}


def count_runs(ctx: StepContext) -> dict[str, Any]:
    marker = ctx.data.root / "count.txt"
    marker.write_text(str(int(marker.read_text()) + 1 if marker.exists() else 1))
    return {}


LIGHT_STEPS = (
    Step("count", count_runs, "counts how often it ran"),
    Step("read", read_input, "reads data/input.parquet"),
    Step("double", double, "uses an earlier step's output"),
)


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataDir:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return DataDir(tmp_path / "data")


def run_failing_then_fixed(data: DataDir) -> tuple[str, MlflowClient]:
    """A corrupt input fails step `read`; fixed, the re-run resumes there. Returns the parent run id."""
    data.root.mkdir(parents=True, exist_ok=True)
    (data.root / "input.parquet").write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(StepFailed) as failed:
        run_pipeline(data, PipelineConfig(), LIGHT_STEPS)
    assert failed.value.step == "read"
    client = tracking_client(data)
    parent = failed.value.parent_run_id
    assert client.get_run(parent).info.status == "FAILED"
    assert [(r.data.tags["pipeline.step"], r.info.status) for r in children(client, parent)] == [
        ("count", "FINISHED"), ("read", "FAILED")
    ]

    pd.DataFrame({"x": [1, 2, 3]}).to_parquet(data.root / "input.parquet")
    result = run_pipeline(data, PipelineConfig(), LIGHT_STEPS)
    assert result.resumed and result.parent_run_id == parent
    assert result.skipped == ["count"]
    assert (data.root / "count.txt").read_text() == "1"  # the finished step did not run again
    assert result.steps["double"].outputs == {"doubled": 6}
    assert result.steps["read"].attempts == 2
    assert client.get_run(parent).info.status == "FINISHED"
    statuses = [(r.data.tags["pipeline.step"], r.info.status) for r in children(client, parent)]
    assert statuses == [("count", "FINISHED"), ("read", "FAILED"), ("read", "FINISHED"), ("double", "FINISHED")]
    return parent, client


def test_failed_step_is_marked_failed_and_rerun_resumes_from_it(data: DataDir) -> None:
    parent, client = run_failing_then_fixed(data)
    assert "git_commit" in client.get_run(parent).data.tags and "data_snapshot" in client.get_run(parent).data.tags

    # A finished run is not resumed: the next run is a new parent run that does every step.
    again = run_pipeline(data, PipelineConfig(), LIGHT_STEPS)
    assert again.parent_run_id != parent and not again.resumed and again.skipped == []
    assert (data.root / "count.txt").read_text() == "2"


def test_no_resume_starts_a_fresh_run_after_a_failure(data: DataDir) -> None:
    data.root.mkdir(parents=True)
    (data.root / "input.parquet").write_bytes(b"not parquet")
    with pytest.raises(StepFailed) as failed:
        run_pipeline(data, PipelineConfig(), LIGHT_STEPS)
    pd.DataFrame({"x": [1]}).to_parquet(data.root / "input.parquet")
    fresh = run_pipeline(data, PipelineConfig(resume=False), LIGHT_STEPS)
    assert fresh.parent_run_id != failed.value.parent_run_id and fresh.skipped == []
    assert (data.root / "count.txt").read_text() == "2"


def test_the_run_mlflow_run_created_becomes_the_parent(data: DataDir, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mlflow run .` (MLproject) starts a run and passes its id in $MLFLOW_RUN_ID."""
    from vitrine import tracking

    tracking.configure(data)
    client = tracking_client(data)
    experiment = client.get_experiment_by_name("vitrine")
    assert experiment is not None
    outer = client.create_run(experiment.experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    pd.DataFrame({"x": [1, 2]}).to_parquet(data.root / "input.parquet")
    result = run_pipeline(data, PipelineConfig(), LIGHT_STEPS)
    assert result.parent_run_id == outer
    assert client.get_run(outer).info.status == "FINISHED"
    # The stages' own `mlflow.start_run()` must not resume the outer run: the variable is gone.
    assert "MLFLOW_RUN_ID" not in os.environ


@pytest.fixture
def postgres_uri(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh PostgreSQL database as the MLflow tracking store, dropped afterwards."""
    name = f"vitrine_test_{uuid.uuid4().hex[:12]}"
    try:
        subprocess.run(["createdb", "-h", PG, "-U", "postgres", name], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"PostgreSQL at {PG}:5432 unavailable: {exc}")
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the lock installs psycopg2.
    uri = f"postgresql+psycopg2://postgres@{PG}:5432/{name}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    # --force: this process's pooled MLflow connections would otherwise keep the database open.
    subprocess.run(["dropdb", "--force", "-h", PG, "-U", "postgres", name], check=False, capture_output=True, timeout=30)


def test_remote_postgres_tracking_store_holds_the_run_tree(tmp_path: Path, postgres_uri: str) -> None:
    data = DataDir(tmp_path / "data")
    parent, client = run_failing_then_fixed(data)
    assert client.get_run(parent).info.status == "FINISHED"
    assert MlflowClient(postgres_uri, registry_uri=postgres_uri).get_run(parent).data.tags["vitrine.pipeline"] == "true"
    assert not (data.mlflow / "mlflow.db").exists()  # nothing went to the embedded store


# --- the real pipeline on a tiny shop ------------------------------------------------------------
#
# One shop (generated once for the module) and three pipeline runs, each on different data:
#   1. training days with shuffled item ids (labels that mean nothing)  -> bootstrap champion
#   2. the clean shop ("better data")                                   -> must replace the champion
#   3. shuffled training days again ("worse data"), with a real failure -> must not replace it
# The held-out latest days are always the clean ones, as they are in real life: today's events
# are what the models are judged on.

from dataclasses import replace  # noqa: E402
from datetime import date  # noqa: E402

from training.pipeline import STEPS  # noqa: E402
from training.promotion import REFIT_OF_RUN, REFIT_OF_VERSION  # noqa: E402
from training.retriever_data import choose_split_time  # noqa: E402
from vitrine.tracking import CHAMPION_ALIAS, RANKER_MODEL, RETRIEVER_MODEL  # noqa: E402

# Large enough that Recall@100 is not trivial (100 of 400 items), small enough for seconds per stage.
TINY_SHOP = {"users": 300, "items": 300, "days": 14, "seed": 11}
EVAL_DAYS = 3


def _tiny_vit() -> Any:
    from embeddings.dual_encoder import DualEncoderSpec

    return DualEncoderSpec(hidden_size=48, num_layers=1, num_heads=2, intermediate_size=96, projection_dim=64)


TINY_VIT = _tiny_vit()


def fast_config(**overrides: Any) -> PipelineConfig:
    """The smallest settings the stages' configs allow that still learn something (both kinds of recommender)."""
    from embeddings.train_encoder import TrainEncoderConfig
    from ranking.sequence_tower import SequenceTowerConfig
    from training.ranker_dataset import DatasetConfig
    from training.train_next_item import NextItemConfig
    from training.train_ranker import RankerTrainConfig
    from training.train_retriever import TrainConfig
    from training.train_sequence import SequenceTrainConfig

    stages = {
        "encoder": TrainEncoderConfig(epochs=1, spec=TINY_VIT),
        "next_item": NextItemConfig(tower=SequenceTowerConfig(embedding_dim=32, layers=1, heads=1, max_length=10, dropout=0.2),
                                    train=SequenceTrainConfig(max_epochs=8, patience=2, batch_size=128, learning_rate=3e-3), threads=1),
        "retriever": TrainConfig(epochs=2, batch_size=256),
        "ranker": RankerTrainConfig(train_days=7, max_rounds=30, min_data_in_leaf=20,
                                    dataset=DatasetConfig(candidates=100, max_requests=1000)),
        "evaluate": {"max_requests": 500},
    }
    return PipelineConfig(stage_configs=stages, eval_days=EVAL_DAYS, progress=False, **overrides)


@pytest.fixture(scope="module")
def tiny_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DataDir, pd.DataFrame]]:
    """A data dir whose incoming/ holds a freshly generated tiny shop, and that shop's clean events.

    The encoder is an untrained default dual encoder (real MiniLM text tower, random tiny ViT) saved
    where the trainer saves: the embed step then embeds with it instead of training one, which the
    embeddings stage's own tests cover and which would cost this test a minute per module.
    """
    from embeddings.dual_encoder import build_dual_encoder
    from embeddings.encode import default_model_dir
    from tests.shops import generated

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        data = DataDir(tmp_path_factory.mktemp("pipeline") / "data")
        # Left in incoming/: the pipeline's validate step ingests it, with fixed dates (a replayable shop).
        generated(data, start=date(2026, 1, 1), ingest=False, **TINY_SHOP)
        build_dual_encoder(TINY_VIT).save(Path(default_model_dir(data)))
        clean = read_incoming_events(data)
        yield data, clean


def read_incoming_events(data: DataDir) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((data.incoming / "events").rglob("*.parquet"))],
                     ignore_index=True)


def put_incoming_events(data: DataDir, events: pd.DataFrame) -> None:
    """Replace the events waiting in incoming/ (the shop's next export)."""
    import shutil

    shutil.rmtree(data.incoming / "events")
    (data.incoming / "events").mkdir()
    events.to_parquet(data.incoming / "events" / "part-0.parquet", index=False)


def shuffled_training_days(events: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Item ids of every event before the latest split drawn at random: labels that carry no taste."""
    cutoff = choose_split_time(events, EVAL_DAYS, fast_config().min_test_users)
    bad = events.copy()
    early = (bad["timestamp"] < cutoff).to_numpy()
    items = bad["item_id"].unique()
    bad.loc[early, "item_id"] = np.random.default_rng(seed).choice(items, early.sum())
    return bad


def champions(client: MlflowClient) -> dict[str, str]:
    return {m: str(client.get_model_version_by_alias(m, CHAMPION_ALIAS).version) for m in (RETRIEVER_MODEL, RANKER_MODEL)}


def test_two_tower_better_data_replaces_the_champion_and_worse_data_never_does(tiny_shop: tuple[DataDir, pd.DataFrame]) -> None:
    data, clean = tiny_shop
    client = tracking_client(data)

    # 1. Meaningless training labels: promoted only because there is no champion yet, then refit on
    #    every day, and the refit is what serves.
    put_incoming_events(data, shuffled_training_days(clean, seed=1))
    first = run_pipeline(data, fast_config(recommender="two-tower"))
    assert first.decision["promote"] and first.decision["reason"] == "no champion yet"
    refit = first.steps["refit"].outputs
    assert refit["refit"] and refit["refit_of"] == first.decision["challenger_versions"]
    assert champions(client) == refit["versions"] != first.decision["challenger_versions"]

    # 2. Better data: the challenger beats the champion on the same split and replaces it. The
    #    champion is a refit that has seen this split's days: its validated twin is what is scored.
    put_incoming_events(data, clean)
    better = run_pipeline(data, fast_config(recommender="two-tower"))
    decision = better.decision
    assert decision["promote"], decision["reason"]
    assert "validated" in better.steps["evaluate"].outputs["champion_note"]
    assert decision["challenger"]["retriever.recall_at_100"] > decision["champion"]["retriever.recall_at_100"]
    served = better.steps["refit"].outputs["versions"]
    assert champions(client) == served
    for model, version in served.items():
        challenger = decision["challenger_versions"][model]
        tags = client.get_model_version(model, version).tags
        assert tags[REFIT_OF_VERSION] == challenger and tags["promotion.decision"] == "refit"
        challenger_run = client.get_model_version(model, challenger).run_id
        assert tags[REFIT_OF_RUN] == challenger_run
        assert client.get_run(client.get_model_version(model, version).run_id).data.params[f"{model}.{REFIT_OF_VERSION}"] == challenger
    retriever_refit = client.get_run(client.get_model_version(RETRIEVER_MODEL, served[RETRIEVER_MODEL]).run_id).data.params
    assert retriever_refit["train.validation_days"] == "0"  # trained through the last day
    assert retriever_refit["train.epochs"] == str(better.steps["retriever"].outputs["epochs"])
    ranker_refit = better.steps["refit"].outputs
    assert ranker_refit["ranker_rounds"] == better.steps["ranker"].outputs["best_iteration"]
    assert ranker_refit["ranker_windows"]["end"] > better.steps["validate"].outputs["split_start"]

    # 3. Worse data again, and a real failure on the way: the encoder's weights file is corrupt.
    put_incoming_events(data, shuffled_training_days(clean, seed=2))
    weights = next((data.models / "encoder").rglob("*.safetensors"))
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) // 3])
    with pytest.raises(StepFailed) as failed:
        run_pipeline(data, fast_config(recommender="two-tower"))
    assert failed.value.step == "embed"
    assert client.get_run(failed.value.parent_run_id).info.status == "FAILED"
    assert champions(client) == served  # a failed run leaves the champion alone

    weights.write_bytes(intact)
    worse = run_pipeline(data, fast_config(recommender="two-tower"))
    assert worse.resumed and worse.parent_run_id == failed.value.parent_run_id and worse.skipped == ["validate"]
    assert not worse.decision["promote"], worse.decision["reason"]
    assert "retriever.recall_at_100" in worse.decision["reason"]
    assert not worse.steps["refit"].outputs["refit"]  # nothing is refit for a rejected challenger
    assert champions(client) == served
    rejected = worse.decision["challenger_versions"][RETRIEVER_MODEL]
    assert client.get_model_version(RETRIEVER_MODEL, rejected).tags["promotion.decision"] == "rejected"

    # Lineage on every registered model; plots and the stages' own runs hang under the step runs.
    for model, version in [*decision["challenger_versions"].items(), *served.items()]:
        tags = client.get_model_version(model, version).tags
        for key in ("git_commit", "data_snapshot", "shop.events", "shop.items", "feature_repo",
                    "embedding_model_version", "version.torch", "version.feast", "pipeline_run_id"):
            assert tags.get(key), f"{model} v{version} lacks lineage tag {key}"
        assert tags["shop.events"] == str(len(clean))
    evaluate_run = better.steps["evaluate"].run_id
    assert "recall_at_k.png" in [a.path for a in client.list_artifacts(evaluate_run)]
    for step in ("retriever", "ranker"):
        stage_runs = client.get_run(better.steps[step].run_id).data.tags["pipeline.stage_runs"].split(",")
        assert decision["challenger_versions"][f"vitrine-{step}"] in {
            str(v.version) for v in client.search_model_versions(f"run_id = '{stage_runs[0]}'")
        }


def test_next_item_better_data_replaces_the_champion_and_worse_data_never_does(tiny_shop: tuple[DataDir, pd.DataFrame]) -> None:
    """The default recommender through the same gate: promoted over nothing, then over worse, never by worse."""
    data, clean = tiny_shop
    client = tracking_client(data)
    before = {m: {v.version for v in client.search_model_versions(f"name='{m}'")} for m in (RETRIEVER_MODEL, RANKER_MODEL)}

    put_incoming_events(data, shuffled_training_days(clean, seed=3))
    first = run_pipeline(data, fast_config())
    put_incoming_events(data, clean)
    better = run_pipeline(data, fast_config())
    decision = better.decision
    assert decision["promote"], decision["reason"]
    # Run 1's champion may be a two-tower pair (the module's other test): then the challenger is judged alone.
    if decision["champion"] is not None:
        assert decision["challenger"]["retriever.recall_at_100"] > decision["champion"]["retriever.recall_at_100"]
    served = better.steps["refit"].outputs["versions"]
    assert champions(client) == served and first.steps["refit"].outputs["refit"]
    retriever_run = client.get_run(client.get_model_version(RETRIEVER_MODEL, served[RETRIEVER_MODEL]).run_id)
    assert retriever_run.data.params["epochs"] == str(better.steps["retriever"].outputs["epochs"])  # the chosen epochs, refit
    assert retriever_run.data.params["rounds"] == str(better.steps["ranker"].outputs["best_iteration"])
    # ... at the learning rate chosen with them.
    assert retriever_run.data.params["learning_rate"] == str(better.steps["retriever"].outputs["learning_rate"])
    assert retriever_run.data.tags["events_before"] == "all"  # the refit saw every day
    for model, version in served.items():
        tags = client.get_model_version(model, version).tags
        assert tags[REFIT_OF_VERSION] == decision["challenger_versions"][model] and tags["kind"] == "next-item"

    put_incoming_events(data, shuffled_training_days(clean, seed=4))
    worse = run_pipeline(data, fast_config())
    assert not worse.decision["promote"] and "retriever.recall_at_100" in worse.decision["reason"]
    assert champions(client) == served
    new = {m: {v.version for v in client.search_model_versions(f"name='{m}'")} - before[m] for m in before}
    assert all(len(versions) == 5 for versions in new.values())  # 3 challengers + 2 refits, nothing half-registered

    from ranking.recommender import Recommender

    user = str(clean["user_id"].value_counts().index[0])
    recs = Recommender.from_data(data).recommend(user, k=10)
    assert not recs.cold_start and recs.versions["retriever"] == served[RETRIEVER_MODEL] and recs[0].sources


def test_since_processes_only_the_new_day(tiny_shop: tuple[DataDir, pd.DataFrame]) -> None:
    data, clean = tiny_shop
    put_incoming_events(data, clean)
    run_pipeline(data, fast_config(), STEPS[:4])  # the shop as it was, features for every day
    days_before = sorted(p.name for p in data.events.iterdir())
    last = pd.Timestamp(clean["timestamp"].max()).normalize()
    new_day = clean[clean["timestamp"] >= last].assign(timestamp=lambda f: f["timestamp"] + pd.Timedelta(days=1))
    put_incoming_events(data, new_day)

    since = (last + pd.Timedelta(days=1)).date()
    result = run_pipeline(data, fast_config(since=since), STEPS[:4])
    assert result.steps["validate"].outputs["append"] and result.steps["validate"].outputs["event_days_written"] == 1
    assert sorted(p.name for p in data.events.iterdir()) == days_before + [f"event_date={since}"]
    assert result.steps["features"].outputs["first_day"] == since.isoformat()
    assert result.steps["feast"].outputs["start"].startswith(since.isoformat())


# --- the real pipeline on a real order-only shop -------------------------------------------------
#
# A committed slice of Amazon Toys 5-core (tests/data/make_toys_sample.py): purchases only, no
# sessions, no views, titles and categories only. The source gives each user's order, not dates;
# here each user's purchases keep their order on uneven days (random gaps, users ending anywhere in
# the last four months), so that the last days hold a handful of users, as a real review log's do.

TOYS_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "amazon-toys-sample"
TOYS_LAST_DAY = pd.Timestamp("2014-07-01", tz="UTC")
# Days a user's purchases spread over at most, and days before the log's end a user's last one may fall:
# short enough that the item snapshots (one row per item and day) stay small for a test.
TOYS_USER_SPAN_DAYS, TOYS_END_SPREAD_DAYS = 120, 120


def uneven_days(events: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Each user's purchases in their order, on distinct random days; the file's last user ends on the last day."""
    rng = np.random.default_rng(seed)
    out = events.copy()
    back = np.empty(len(out), dtype=np.int64)
    last_user = out["user_id"].iloc[-1]
    for user, rows in out.groupby("user_id", sort=False).indices.items():
        offset = 0 if user == last_user else int(rng.integers(0, TOYS_END_SPREAD_DAYS))
        span = max(len(rows), min(TOYS_USER_SPAN_DAYS, 3 * len(rows)))
        back[rows] = offset + np.sort(rng.choice(span, len(rows), replace=False))[::-1]  # decreasing: the user's order
    out["timestamp"] = (TOYS_LAST_DAY - pd.to_timedelta(back, unit="D")).strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def tiny_text_encoder(folder: Path) -> Any:
    """A dual encoder whose text tower is a one-layer random BERT (MiniLM's tokenizer): seconds for 2,800 titles."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from embeddings.dual_encoder import DualEncoderSpec, build_dual_encoder, minilm_dir

    torch.manual_seed(0)
    text = folder / "tiny-bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(text)  # fmt: skip
    AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True).save_pretrained(text)
    spec = DualEncoderSpec(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                           projection_dim=32, text_model_dir=str(text))  # fmt: skip
    return build_dual_encoder(spec, seed=0)


def order_only_config() -> PipelineConfig:
    return replace(fast_config(), min_test_users=60)


def test_an_order_only_shop_with_sparse_last_days_trains_refits_and_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embeddings.encode import default_model_dir
    from ranking.recommender import Recommender

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    data = DataDir(tmp_path / "data")
    data.incoming.mkdir(parents=True)
    pd.read_csv(TOYS_SAMPLE / "items.csv", dtype=str).to_csv(data.incoming / "items.csv", index=False)
    events = uneven_days(pd.read_csv(TOYS_SAMPLE / "events.csv", dtype=str))
    events.to_csv(data.incoming / "events.csv", index=False)
    tiny_text_encoder(tmp_path).save(Path(default_model_dir(data)))
    stamps = pd.to_datetime(events["timestamp"], utc=True)
    last_days = stamps >= TOYS_LAST_DAY - pd.Timedelta(days=EVAL_DAYS - 1)
    assert stamps.max() == TOYS_LAST_DAY and events.loc[last_days, "user_id"].nunique() < 20

    result = run_pipeline(data, order_only_config())

    validate = result.steps["validate"].outputs
    assert validate["events"] == len(events) and validate["events_rejected"] == validate["items_rejected"] == 0
    # The last 3 days hold a few users: the split reaches back until it holds 60.
    assert validate["split_days"] > EVAL_DAYS
    split = pd.Timestamp(validate["split_start"])
    assert stamps[stamps >= split].groupby(events["user_id"]).size().size >= 60
    assert result.steps["evaluate"].outputs["test_users"] >= 30
    # The tower and ranker chose on each user's own last purchase before the split, not on calendar days.
    holdout = result.steps["retriever"].outputs["holdout"]
    assert holdout["users"] >= 200 and holdout["candidate_recall"] > 0
    # Promoted (no champion yet), refit on every day, and the refit serves.
    assert result.decision["promote"]
    refit = result.steps["refit"].outputs
    assert refit["refit"] and champions(tracking_client(data)) == refit["versions"]

    recommender = Recommender.from_data(data, as_of=(TOYS_LAST_DAY + pd.Timedelta(days=1)).to_pydatetime())
    user = events["user_id"].iloc[-1]  # bought on the last day
    recs = recommender.recommend(user, k=10)
    assert not recs.cold_start and not recs.degraded, recs.reason
    assert len(recs) == 10 and all(r.title for r in recs)
    assert recs.versions["retriever"] == refit["versions"][RETRIEVER_MODEL]  # served by the refit pair
    assert recs.versions["ranker"] == f"{RANKER_MODEL}/{refit['versions'][RANKER_MODEL]}"
