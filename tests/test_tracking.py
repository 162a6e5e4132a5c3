"""MLflow tracking per data dir: each data dir tracks into its own store unless the user names one."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from vitrine.paths import DataDir
from vitrine.tracking import configure, register_model


def test_each_data_dir_keeps_its_own_registry_in_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second = DataDir.resolve(tmp_path / "a"), DataDir.resolve(tmp_path / "b")
    for data in (first, second):
        assert configure(data) == f"sqlite:///{data.mlflow / 'mlflow.db'}"
        with mlflow.start_run() as run:
            pass
        register_model("vitrine-ranker", str(tmp_path), run.info.run_id, {"dir": data.root.name})
    # MLflow wrote its URI into the environment; had it stayed, `b` would have tracked into `a`.
    assert "MLFLOW_TRACKING_URI" not in os.environ
    for data in (first, second):
        configure(data)
        versions = mlflow.MlflowClient().search_model_versions("name='vitrine-ranker'")
        assert [v.tags["dir"] for v in versions] == [data.root.name]


def test_a_tracking_uri_the_user_sets_wins_and_stays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared)
    assert configure(DataDir.resolve(tmp_path / "a")) == shared == configure(DataDir.resolve(tmp_path / "b"))
    assert os.environ["MLFLOW_TRACKING_URI"] == shared
