"""The scheduled training pipeline: new data in, a better `@champion` out (or the old one kept).

    validate -> embed -> features -> feast -> retriever -> ranker -> evaluate -> promote

Each step is a small named function over a `StepContext`; it calls the stage's public function
and returns the few outputs later steps need (model versions, counts), which the runner records in
the run's state file (`training.pipeline_state`). The runner wraps the whole run in one MLflow
parent run and each step in a nested child run, so `mlflow ui` shows one tree per day.

- Resumable: a re-run continues the newest unfinished run from its failed step (same parent run),
  skipping finished steps; `--no-resume` starts over.
- A failed step ends its child run (and the parent) FAILED and never reaches `promote`, so the
  champion stays where it was.
- Serving (`ranking.service`) polls the `@champion` alias: the alias move in `promote` is the deploy.

Example:
    >>> from vitrine.paths import DataDir
    >>> result = run_pipeline(DataDir.resolve("data"), PipelineConfig())   # doctest: +SKIP
    >>> result.decision["promote"]                                          # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import mlflow
from mlflow import MlflowClient
from rich.console import Console

from training.pipeline_state import FINISHED, RunState, StepRecord
from training.promotion import PromotionPolicy
from vitrine import tracking
from vitrine.errors import InvalidInput
from vitrine.paths import DataDir

YESTERDAY = "YESTERDAY"
# The experiment every pipeline run lands in (the stages' own runs land there too).
PIPELINE_EXPERIMENT = "vitrine"
# Tag that marks a parent run as a pipeline run, for `mlflow ui` filters: tags.vitrine.pipeline = 'true'.
PIPELINE_TAG = "vitrine.pipeline"

console = Console(stderr=True)


def pipeline_dir(data: DataDir) -> Path:
    """Where the per-run state files live (`data/pipeline/`)."""
    # DataDir has no `pipeline` property yet; requested from its owner. Until then named here, once.
    return data.root / "pipeline"


def resolve_since(value: str | None, today: date | None = None) -> date | None:
    """`--since` as a date: None (full run), `YESTERDAY` (relative to UTC today) or `YYYY-MM-DD`.

    Example:
        >>> resolve_since("YESTERDAY", today=date(2026, 1, 2))
        datetime.date(2026, 1, 1)
    """
    if value is None or value == "" or value.lower() in ("all", "none"):
        return None
    if value.upper() == YESTERDAY:
        return (today or datetime.now(timezone.utc).date()) - timedelta(days=1)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"--since: {value!r} is neither YESTERDAY nor a date YYYY-MM-DD") from None


@dataclass(frozen=True)
class PipelineConfig:
    """What one pipeline run does. Stage settings are the stages' own config objects."""

    # Process only data from this UTC day on (ingest append, incremental features, new items).
    # None: a full run over everything in the shop.
    since: date | None = None
    # Continue the newest unfinished run (same arguments) from its failed step.
    resume: bool = True
    # What a challenger must show to replace the champion.
    policy: PromotionPolicy = field(default_factory=PromotionPolicy)
    # MLflow experiment of the parent run.
    experiment: str = PIPELINE_EXPERIMENT
    # Per-stage config overrides, keyed by step name ("embed", "retriever", "ranker", "evaluate"):
    # each value is passed to that stage as its own config object. None: the stage's defaults.
    stage_configs: dict[str, Any] = field(default_factory=dict)
    # Show progress bars of the stages.
    progress: bool = True


@dataclass
class StepContext:
    """What a step sees: the data dir, the config, the outputs of earlier steps, its MLflow run."""

    data: DataDir
    config: PipelineConfig
    state: RunState
    client: MlflowClient
    # The step's own (child) run: stages that log into the active run log here.
    run_id: str

    def output(self, step: str, key: str, default: Any = None) -> Any:
        """An output an earlier step recorded (survives a resume)."""
        return self.state.outputs(step).get(key, default)

    def stage_config(self, step: str) -> Any:
        return self.config.stage_configs.get(step)


StepFn = Callable[[StepContext], dict[str, Any]]


@dataclass(frozen=True)
class Step:
    """One named pipeline step."""

    name: str
    run: StepFn
    # One line for `mlflow ui` and the progress output.
    description: str


@dataclass
class PipelineResult:
    """What a finished pipeline run produced."""

    parent_run_id: str
    state_path: Path
    resumed: bool
    # Steps skipped because a previous attempt of this run had finished them.
    skipped: list[str]
    steps: dict[str, StepRecord]
    tracking_uri: str

    @property
    def decision(self) -> dict[str, Any]:
        return self.steps["promote"].outputs if "promote" in self.steps else {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "parent_run_id": self.parent_run_id,
            "state_path": str(self.state_path),
            "tracking_uri": self.tracking_uri,
            "resumed": self.resumed,
            "skipped": self.skipped,
            "steps": {
                name: {"status": r.status, "run_id": r.run_id, "seconds": round(r.seconds, 2), "outputs": r.outputs}
                for name, r in self.steps.items()
            },
        }


class StepFailed(RuntimeError):
    """A pipeline step raised; the run is resumable from `step`. The cause is chained."""

    def __init__(self, step: str, state_path: Path, parent_run_id: str, cause: BaseException):
        super().__init__(
            f"pipeline step {step!r} failed: {type(cause).__name__}: {cause} "
            f"(parent run {parent_run_id}; state {state_path}; re-run to resume from {step!r})"
        )
        self.step = step
        self.state_path = state_path
        self.parent_run_id = parent_run_id


def _external_parent(client: MlflowClient) -> str | None:
    """The run `mlflow run` created for us (`$MLFLOW_RUN_ID`), when it lives in our tracking store."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    try:
        client.get_run(run_id)
        return run_id
    except mlflow.exceptions.MlflowException:
        # `mlflow run` tracked into another store than ours: start our own parent; mlflow.start_run
        # would otherwise try to resume the foreign id and fail.
        os.environ.pop("MLFLOW_RUN_ID", None)
        return None


def _open_state(data: DataDir, config: PipelineConfig, uri: str, client: MlflowClient) -> tuple[RunState, bool]:
    since = config.since.isoformat() if config.since else None
    if config.resume:
        state = RunState.latest_unfinished(pipeline_dir(data), since=since, tracking_uri=uri)
        if state is not None:
            try:
                client.get_run(state.parent_run_id)
                return state, True
            except mlflow.exceptions.MlflowException:
                pass  # parent run deleted from the store: start afresh
    parent = _external_parent(client)
    if parent is None:
        experiment = mlflow.get_experiment_by_name(config.experiment)
        assert experiment is not None  # created by tracking.configure
        run_name = f"pipeline {datetime.now(timezone.utc):%Y-%m-%d %H:%M}" + (f" since {since}" if since else "")
        parent = client.create_run(experiment.experiment_id, run_name=run_name).info.run_id
    return RunState.new(pipeline_dir(data), parent_run_id=parent, since=since, tracking_uri=uri), False


def run_pipeline(data: DataDir, config: PipelineConfig | None = None, steps: tuple[Step, ...] | None = None) -> PipelineResult:
    """Run (or resume) the pipeline once. Raises `StepFailed` when a step fails.

    Args:
        data: the data dir (shop, features, models, MLflow store).
        config: what to run; defaults to a full run with the default promotion policy.
        steps: the step list; defaults to `STEPS`. Tests pass a shorter list.

    Example:
        >>> run_pipeline(DataDir.resolve("data"), PipelineConfig(since=date(2026, 1, 1)))  # doctest: +SKIP
    """
    config = config or PipelineConfig()
    steps = STEPS if steps is None else steps
    uri = tracking.configure(data, config.experiment)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    state, resumed = _open_state(data, config, uri, client)
    skipped: list[str] = []
    with mlflow.start_run(run_id=state.parent_run_id) as parent:
        mlflow.set_tags({PIPELINE_TAG: "true", "pipeline.state_file": str(state.path),
                         "pipeline.since": state.since or "all", "pipeline.resumed": str(resumed).lower()})
        mlflow.set_tags(tracking.lineage(data))
        for step in steps:
            if state.is_done(step.name):
                skipped.append(step.name)
                console.print(f"[dim]- {step.name}: done in an earlier attempt, skipped[/]")
                continue
            _run_step(step, data, config, state, client)
            # The data changes during the run (validate ingests): keep the parent's lineage current.
            mlflow.set_tags(tracking.lineage(data))
        state.finish()
        mlflow.log_metric("pipeline_seconds", sum(state.steps[s.name].seconds for s in steps if s.name in state.steps))
    return PipelineResult(parent.info.run_id, state.path, resumed, skipped, dict(state.steps), uri)


def _run_step(step: Step, data: DataDir, config: PipelineConfig, state: RunState, client: MlflowClient) -> None:
    console.print(f"[bold]- {step.name}[/]: {step.description}")
    started = time.perf_counter()
    with mlflow.start_run(run_name=step.name, nested=True, description=step.description) as child:
        run_id = child.info.run_id
        mlflow.set_tags({"pipeline.step": step.name, "pipeline.parent_run_id": state.parent_run_id})
        state.start_step(step.name, run_id)
        context = StepContext(data, config, state, client, run_id)
        try:
            outputs = step.run(context)
        except BaseException as exc:
            seconds = time.perf_counter() - started
            mlflow.set_tag("pipeline.error", f"{type(exc).__name__}: {exc}"[:5000])
            mlflow.log_text(traceback.format_exc(), "error.txt")
            state.fail_step(step.name, seconds=seconds, error=f"{type(exc).__name__}: {exc}")
            console.print(f"[bold red]  {step.name} failed after {seconds:.1f}s:[/] {exc}")
            # Leaving the `with` blocks with the exception marks the child and the parent FAILED.
            raise StepFailed(step.name, state.path, state.parent_run_id, exc) from exc
        seconds = time.perf_counter() - started
        mlflow.log_metric("step_seconds", seconds)
        state.finish_step(step.name, run_id=run_id, seconds=seconds, outputs=outputs)
    console.print(f"  [green]{step.name} done[/] in {seconds:.1f}s")


# --------------------------------------------------------------------------------------------
# The steps. Each calls one stage's public function; none re-implements a stage.
# --------------------------------------------------------------------------------------------


def validate(ctx: StepContext) -> dict[str, Any]:
    """Ingest what waits in `data/incoming` (append only new days with --since), then count the shop."""
    raise NotImplementedError


STEPS: tuple[Step, ...] = ()
