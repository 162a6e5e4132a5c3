"""`vitrine pipeline run` killed with SIGKILL, and run twice at once, as real processes.

Each case starts the real CLI in a subprocess on a real shop, with the embedded MLflow store
(SQLite under the data dir) and real Feast, and kills it with `kill -9`: nothing in the pipeline
gets to clean up. The kill lands either inside a step's work (found by polling the run's state
file) or in the widest window there is, after a step's work returned and before it is recorded
(the pipeline's `VITRINE_PIPELINE_HOLD_AFTER` seam). Then the run is resumed, as an operator would,
by running the same command again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from training.pipeline import (
    HOLD_AFTER_ENV,
    PIPELINE_RUN_TAG,
    STEP_RUN_TAG,
    STEP_TAG,
    STEPS,
    PipelineConfig,
    Step,
    StepContext,
    StepFailed,
    run_pipeline,
)
from training.pipeline_lock import PipelineBusy, pipeline_lock
from vitrine.paths import DataDir
from vitrine.tracking import CHAMPION_ALIAS, RANKER_MODEL, RETRIEVER_MODEL

# A refused run must say so at once: imports (torch, MLflow) take seconds on a loaded box, not a minute.
REFUSAL_TIMEOUT_S = 120
# One step of the tiny shop's run takes at most ~70 s alone (the next-item retriever); 2 shared cores
# and the import of torch in a fresh process can make that several times longer.
STEP_TIMEOUT_S = 900
# A killed process is reaped in milliseconds; this only bounds the wait.
REAP_TIMEOUT_S = 30
POLL_S = 0.05
# What one uninterrupted next-item run registers of each model: the challenger (retriever step) and
# its refit (refit step), as `tests/training/test_pipeline.py` counts (3 runs: 3 challengers + 2 refits).
VERSIONS_PER_RUN = 2


def vitrine_command() -> list[str]:
    """The installed `vitrine` entry point of this interpreter's environment (the module, where none is installed)."""
    script = Path(sys.executable).with_name("vitrine")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vitrine.cli"]


def pipeline_env(hold_after: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "VITRINE_DATA_DIR", HOLD_AFTER_ENV)}
    # COLUMNS: rich wraps what it prints at the terminal's width, 80 without one; messages are checked whole.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="400")
    if hold_after:
        env[HOLD_AFTER_ENV] = hold_after
    return env


def start_pipeline(data: DataDir, log: Path, *args: str, hold_after: str | None = None) -> subprocess.Popen[bytes]:
    """`vitrine pipeline run --data-dir DATA ARGS` in the background, stderr into `log`, stdout into `log`.out."""
    command = [*vitrine_command(), "pipeline", "run", "--data-dir", str(data.root), *args]
    with log.open("wb") as err, log.with_suffix(".out").open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=err, env=pipeline_env(hold_after))


def log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, what: str,
               timeout_s: float = STEP_TIMEOUT_S) -> None:
    """Poll `condition` until it holds; fail when the process ends first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            pytest.fail(f"the pipeline exited {process.returncode} before {what}:\n{log_tail(log)}")
        time.sleep(POLL_S)
    pytest.fail(f"no {what} within {timeout_s}s:\n{log_tail(log)}")


def kill_9(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=REAP_TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL


def newest_state(data: DataDir) -> dict[str, Any]:
    """The newest state file of the data dir (the run being resumed), as JSON; {} when none is readable."""
    paths = sorted(data.pipeline.glob("*.json"))
    try:
        return json.loads(paths[-1].read_text()) if paths else {}
    except (OSError, ValueError):
        return {}  # never half-written (atomic rename), but the file may be replaced between glob and read


def step_status(data: DataDir, step: str) -> str | None:
    return newest_state(data).get("steps", {}).get(step, {}).get("status")


def tracking_client(data: DataDir) -> MlflowClient:
    uri = data.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# --- two runs at once -----------------------------------------------------------------------------


@pytest.fixture
def hand_made_data(tmp_path: Path) -> DataDir:
    from tests.shops import hand_made

    return hand_made(DataDir(tmp_path / "data"))


def test_a_second_run_refuses_at_once_or_waits_for_the_first(hand_made_data: DataDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              record_property: Callable[[str, object], None]) -> None:
    data = hand_made_data
    first_log = tmp_path / "first.log"
    first = start_pipeline(data, first_log, hold_after="validate")
    try:
        wait_until(lambda: "holding after validate" in first_log.read_text(errors="replace"), first, first_log,
                   "the first run inside its run")

        # A second run refuses at once: exit 6, naming the data dir, the holder's pid and start time.
        began = time.monotonic()
        second = subprocess.run([*vitrine_command(), "pipeline", "run", "--data-dir", str(data.root)], capture_output=True, text=True,
                                env=pipeline_env(), timeout=REFUSAL_TIMEOUT_S)
        refused_in = time.monotonic() - began
        message = second.stderr
        assert second.returncode == 6, message
        assert f"another pipeline run holds {data.root}" in message, message
        assert f"pid {first.pid} " in message and "started 20" in message, message
        assert "holding after" not in second.stderr  # it ran no step
        assert len(list(data.pipeline.glob("*.json"))) == 1  # and opened no state of its own

        # One with --wait waits; when the first dies (kill -9), it takes the lock over, resumes the
        # killed run and gets as far as the first did.
        waiter_log = tmp_path / "waiter.log"
        waiter = start_pipeline(data, waiter_log, "--wait", str(STEP_TIMEOUT_S), hold_after="validate")
        time.sleep(3)
        assert waiter.poll() is None and "holding after" not in waiter_log.read_text(errors="replace")
        kill_9(first)
        try:
            wait_until(lambda: "holding after validate" in waiter_log.read_text(errors="replace"), waiter, waiter_log,
                       "the waiting run inside its run")
            assert len(list(data.pipeline.glob("*.json"))) == 1  # resumed the killed run's state, opened none
        finally:
            kill_9(waiter)
    finally:
        if first.poll() is None:
            kill_9(first)

    # Killed twice: no stale lock; the file still names the last holder, which is only a note.
    assert f"pid={waiter.pid}" in (data.pipeline / ".lock").read_text()
    with pipeline_lock(data):
        with pytest.raises(PipelineBusy, match="another pipeline run holds"):
            with pipeline_lock(data):
                pass

    # --no-resume after the kills: the abandoned run's MLflow runs are closed; none says RUNNING for ever.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    abandoned = newest_state(data)["parent_run_id"]
    fresh = run_pipeline(data, PipelineConfig(resume=False, progress=False), (Step("noop", lambda ctx: {}, "does nothing"),))
    client = tracking_client(data)
    assert fresh.parent_run_id != abandoned and client.get_run(abandoned).info.status == "KILLED"
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()], "attributes.status = 'RUNNING'")
    record_property("outcome", f"second run refused in {refused_in:.1f}s naming pid {first.pid}; a --wait run took over after kill -9")


# --- a step that dies after registering, retried ------------------------------------------------

TEST_MODEL = "vitrine-test-faults"


def register_then_maybe_fail(ctx: StepContext) -> dict[str, Any]:
    """A stage's way of registering (files logged, then the version), then a failure until data/fixed exists."""
    import mlflow

    from vitrine import tracking

    folder = ctx.data.root / "model"
    folder.mkdir(exist_ok=True)
    (folder / "weights.txt").write_text("weights")
    tracking.configure(ctx.data)
    with mlflow.start_run(run_name="stage") as run:
        mlflow.log_artifacts(str(folder), artifact_path="model")
        version = tracking.register_model(TEST_MODEL, f"{run.info.artifact_uri}/model", run.info.run_id, {})
    if not (ctx.data.root / "fixed").exists():
        raise RuntimeError("died after registering")
    return {"version": version}


def test_a_retried_step_leaves_one_version_not_one_per_attempt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               record_property: Callable[[str, object], None]) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    data = DataDir(tmp_path / "data")
    steps = (Step("train", register_then_maybe_fail, "registers, then fails until fixed"),)
    with pytest.raises(StepFailed):
        run_pipeline(data, PipelineConfig(progress=False), steps)
    client = tracking_client(data)
    assert [v.version for v in client.search_model_versions(f"name = '{TEST_MODEL}'")] == [1]

    (data.root / "fixed").touch()
    result = run_pipeline(data, PipelineConfig(progress=False), steps)
    versions = client.search_model_versions(f"name = '{TEST_MODEL}'")
    assert [str(v.version) for v in versions] == [result.steps["train"].outputs["version"]] == ["2"]
    assert versions[0].tags[STEP_RUN_TAG] == result.steps["train"].run_id and versions[0].tags[PIPELINE_RUN_TAG] == result.parent_run_id
    assert client.get_run(result.steps["train"].run_id).data.tags["pipeline.dropped_versions"] == f"{TEST_MODEL}/1"
    record_property("versions_lost", 0)
    record_property("outcome", "a step failed after registering v1, retried: v1 dropped, v2 the only version and the step's output")


# --- kill -9 in every step, resumed ---------------------------------------------------------------

# Where each kill lands, in order, along one pipeline run that is resumed after every kill:
# "after": the step's work returned (models registered, aliases moved) and it is not yet recorded;
# "during": a moment into the step's own work (training, materializing).
KILLS: tuple[tuple[str, str], ...] = (
    ("validate", "after"),
    ("embed", "after"),
    ("features", "after"),
    ("feast", "during"),
    ("feast", "after"),
    ("retriever", "during"),
    ("retriever", "after"),
    ("ranker", "after"),
    ("evaluate", "after"),
    ("promote", "after"),
    ("refit", "during"),
    ("refit", "after"),
)
# How far into a step's work a "during" kill lands: feast takes ~4 s, the retriever ~70 s, the refit ~20 s.
DURING_S = {"feast": 0.5, "retriever": 5.0, "refit": 3.0}
assert {step for step, _ in KILLS} == {step.name for step in STEPS}, "a kill in every step"


@pytest.fixture(scope="module")
def tiny_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataDir]:
    """The pipeline tests' tiny generated shop, waiting in incoming/, with an untrained encoder saved (no encoder training)."""
    from embeddings.dual_encoder import build_dual_encoder
    from embeddings.encode import default_model_dir
    from tests.shops import generated
    from tests.training.test_pipeline import TINY_SHOP, TINY_VIT

    data = DataDir(tmp_path_factory.mktemp("faults") / "data")
    generated(data, start=date(2026, 1, 1), ingest=False, **TINY_SHOP)
    build_dual_encoder(TINY_VIT).save(Path(default_model_dir(data)))
    yield data


def attempt_versions(client: MlflowClient, parent: str) -> list[Any]:
    """Every model version the pipeline run `parent` registered (tagged at creation)."""
    return [v for model in (RETRIEVER_MODEL, RANKER_MODEL) for v in client.search_model_versions(f"name = '{model}'")
            if v.tags.get(PIPELINE_RUN_TAG) == parent]


def loads(data: DataDir, client: MlflowClient, version: Any, scratch: Path) -> None:
    """The version's files download from its source and load as its model (raises otherwise)."""
    import mlflow

    from ranking.reranker import Reranker
    from ranking.retriever import load_retriever

    local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(scratch / f"{version.name}-{version.version}"),
                                                tracking_uri=data.mlflow_tracking_uri)
    if version.name == RETRIEVER_MODEL:
        load_retriever(local, version=str(version.version))
    else:
        Reranker.load(local, version=str(version.version))


@pytest.mark.slow
def test_kill_9_in_every_step_then_resume_completes_with_a_clean_registry(tiny_shop: DataDir, tmp_path: Path,
                                                                         record_property: Callable[[str, object], None]) -> None:
    data = tiny_shop
    client = tracking_client(data)
    parent = ""
    killed_in: list[str] = []
    for number, (step, where) in enumerate(KILLS):
        log = tmp_path / f"{number:02d}-{step}-{where}.log"
        process = start_pipeline(data, log, hold_after=step if where == "after" else None)
        try:
            if where == "after":
                wait_until(lambda: f"holding after {step}" in log.read_text(errors="replace"), process, log, f"the hold after {step}")
            else:
                wait_until(lambda: step_status(data, step) == "running", process, log, f"step {step} running")
                time.sleep(DURING_S[step])
        finally:
            kill_9(process)
        state = newest_state(data)
        parent = parent or state["parent_run_id"]
        assert state["parent_run_id"] == parent, "every restart resumed the one run"
        assert state["steps"][step]["status"] == "running", f"the kill {where} {step} landed later:\n{log_tail(log)}"
        killed_in.append(f"{where} {step}")
        if (step, where) == ("retriever", "after"):
            # The fault is real: the dead attempt registered both models, and nothing recorded them.
            assert {v.name for v in attempt_versions(client, parent) if v.tags[STEP_TAG] == "retriever"} == {RETRIEVER_MODEL, RANKER_MODEL}

    log = tmp_path / "final.log"
    final = start_pipeline(data, log, "--json")
    try:
        final.wait(timeout=len(STEPS) * STEP_TIMEOUT_S)
    finally:
        if final.poll() is None:
            kill_9(final)
    assert final.returncode == 0, log_tail(log)
    result = json.loads(log.with_suffix(".out").read_text())
    assert result["parent_run_id"] == parent and result["resumed"]

    # The state: one run, every step done, each run more than once (once per kill in it, and once more).
    state = newest_state(data)
    assert state["status"] == "finished" and len(list(data.pipeline.glob("*.json"))) == 1
    for step in STEPS:
        record = state["steps"][step.name]
        assert record["status"] == "finished", step.name
        assert record["attempts"] == 1 + sum(1 for s, _ in KILLS if s == step.name), step.name

    # The registry: as many versions as an uninterrupted run registers, one per model and step,
    # each READY, made by the attempt the state recorded, with files that load.
    versions = attempt_versions(client, parent)
    by_step = sorted((v.tags[STEP_TAG], v.name) for v in versions)
    assert by_step == sorted((s, m) for s in ("retriever", "refit") for m in (RETRIEVER_MODEL, RANKER_MODEL)), by_step
    every = [v for model in (RETRIEVER_MODEL, RANKER_MODEL) for v in client.search_model_versions(f"name = '{model}'")]
    assert len(every) == 2 * VERSIONS_PER_RUN, [(v.name, v.version, v.tags.get(STEP_TAG)) for v in every]
    recorded = {step: state["steps"][step]["run_id"] for step in ("retriever", "refit")}
    unloadable = 0
    for version in versions:
        assert version.status == "READY", (version.name, version.version, version.status)
        assert version.tags[STEP_RUN_TAG] == recorded[version.tags[STEP_TAG]]
        try:
            loads(data, client, version, tmp_path / "download")
        except Exception as exc:  # noqa: BLE001 - counted and reported below
            unloadable += 1
            print(f"{version.name} v{version.version} does not load: {exc}")
    record_property("versions_lost", unloadable)
    assert unloadable == 0

    # The champion: the refit pair the state recorded, served from the registry.
    from ranking.reranker import Reranker
    from ranking.retriever import retriever_from_registry

    refit = state["steps"]["refit"]["outputs"]
    champions = {m: str(client.get_model_version_by_alias(m, CHAMPION_ALIAS).version) for m in (RETRIEVER_MODEL, RANKER_MODEL)}
    assert refit["refit"] and champions == refit["versions"]
    assert str(retriever_from_registry(data).version) == champions[RETRIEVER_MODEL]
    assert Reranker.from_registry(data).version == f"{RANKER_MODEL}/{champions[RANKER_MODEL]}"

    # MLflow: nothing of this run is left RUNNING; the dead attempts are KILLED, and each is one child run.
    experiment = client.get_run(parent).info.experiment_id
    assert client.get_run(parent).info.status == "FINISHED"
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'", max_results=500)
    statuses = sorted((r.data.tags.get(STEP_TAG, r.info.run_name), r.info.status) for r in children if r.data.tags.get(STEP_TAG))
    assert sum(1 for _, status in statuses if status == "KILLED") == len(KILLS), statuses
    assert sum(1 for _, status in statuses if status == "FINISHED") == len(STEPS), statuses
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()], "attributes.status = 'RUNNING'")
    served = f"v{champions[RETRIEVER_MODEL]}/v{champions[RANKER_MODEL]}"
    record_property("outcome", f"killed {len(KILLS)} times ({', '.join(killed_in)}), resumed to the end: "
                               f"{len(every)} versions as uninterrupted, champion {served} loads")
