"""The training pipeline: MLflow run tree, resume after a real failure, tracking in SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytest
from mlflow import MlflowClient

from training.pipeline import PipelineConfig, Step, StepContext, StepFailed, run_pipeline
from vitrine.paths import DataDir

PG = "127.0.0.1"


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
    client = MlflowClient(data.mlflow_tracking_uri)
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
    assert MlflowClient(postgres_uri).get_run(parent).data.tags["vitrine.pipeline"] == "true"
    assert not (data.mlflow / "mlflow.db").exists()  # nothing went to the embedded store
