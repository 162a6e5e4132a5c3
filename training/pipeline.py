"""The scheduled training pipeline: new data in, a better `@champion` out (or the old one kept).

    validate -> embed -> features -> feast -> retriever -> ranker -> evaluate -> promote -> refit

Each step is a small named function over a `StepContext`; it calls the stage's public function
and returns the few outputs later steps need (model versions, counts), which the runner records in
the run's state file (`training.pipeline_state`). The runner wraps the whole run in one MLflow
parent run and each step in a nested child run, so `mlflow ui` shows one tree per day.

- Resumable: a re-run continues the newest unfinished run from its failed step (same parent run),
  skipping finished steps; `--no-resume` starts over. A run killed outright (`kill -9`, OOM) is
  resumed the same way: its step is still `running` in the state file, and its MLflow runs are
  closed as KILLED when the re-run (or a `--no-resume` one) starts.
- One run per data dir: `run_pipeline` holds `data/pipeline/.lock` (`training.pipeline_lock`) for
  the whole run; a second one refuses (`PipelineBusy`) or waits `wait_s`.
- No duplicate versions: every model version a step registers is tagged, at its creation, with
  the pipeline run, the step and the step's attempt (`vitrine.tracking.registrations_tagged`).
  When an attempt finishes, the versions earlier attempts of that step registered of the same
  models and never handed on (the attempt died or failed before it was recorded) are deleted
  from the registry, so a resumed run holds as many versions as an uninterrupted one.
- A failed step ends its child run and the parent FAILED and the run never reaches `promote`, so
  the champion stays where it was.
- Serving (`ranking.service`) polls the `@champion` alias: the alias moves in `promote` and
  `refit` are the deploy.
- The split: challengers train on the events before T and are judged, with the champion, on each
  user's next interaction after T. T is the start of the last `eval_days` event days, or earlier
  where those days hold fewer than `min_test_users` users (an order-only shop's sparse last days).
- The refit: a promoted pair is trained again, same settings, on every day through the last one
  (the latest days hold each user's most recent behaviour), and that pair is served.

Example:
    >>> from vitrine.paths import DataDir
    >>> result = run_pipeline(DataDir.resolve("data"), PipelineConfig())   # doctest: +SKIP
    >>> result.decision["promote"]                                          # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import os
import time
import traceback
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Literal, get_args

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from rich.console import Console

from training.pipeline_lock import pipeline_lock
from training.pipeline_state import RUNNING, RunState, StepRecord
from training.promotion import PromotionPolicy
from training.split_evaluation import DEFAULT_EVAL_DAYS, DEFAULT_MIN_TEST_USERS
from vitrine import tracking
from vitrine.errors import InvalidInput
from vitrine.options import OnlineKind
from vitrine.paths import DataDir

YESTERDAY = "YESTERDAY"
# The experiment every pipeline run lands in (the stages' own runs land there too).
PIPELINE_EXPERIMENT = "vitrine"
# Tag that marks a parent run as a pipeline run, for `mlflow ui` filters: tags.vitrine.pipeline = 'true'.
PIPELINE_TAG = "vitrine.pipeline"
# Tags of every model version a step registers: the pipeline's parent run, the step, and the
# step's child run (one per attempt).
PIPELINE_RUN_TAG, STEP_TAG, STEP_RUN_TAG = "pipeline_run_id", "pipeline.step", "pipeline.step_run_id"
# Fault-injection seam of the reliability tests (tests/reliability/test_pipeline_faults.py): a comma
# list of step names; after each one's work returned, and before it is recorded as done (the widest
# window a crash can hit), the run prints "holding after <step>" and sleeps HOLD_S. Never set in
# production: unset, it costs one environment lookup per step.
HOLD_AFTER_ENV = "VITRINE_PIPELINE_HOLD_AFTER"
# Long enough for a test to kill the run in the window; short enough that a variable left set by
# mistake delays a run by minutes, not forever.
HOLD_S = 120.0

console = Console(stderr=True)


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


Recommender = Literal["next-item", "two-tower"]
RECOMMENDERS: tuple[str, ...] = get_args(Recommender)


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
    # Per-stage settings: "encoder" (TrainEncoderConfig), "next_item" (NextItemConfig), "retriever"
    # (TrainConfig), "ranker" (RankerTrainConfig), each the stage's own config object, and
    # "evaluate" ({"max_requests": n}).
    # Absent: the stage's defaults.
    stage_configs: dict[str, Any] = field(default_factory=dict)
    # Show progress bars of the stages.
    progress: bool = True
    # Train the encoder again even when one exists (it is trained once otherwise: item vectors stay
    # in one space across days, and the daily run stays short).
    retrain_encoder: bool = False
    # Event days at the end held out as the latest time split, at least: challengers train on the
    # days before it, and challenger and champion are both evaluated on it.
    eval_days: int = DEFAULT_EVAL_DAYS
    # Users the latest split holds at least: where the last eval_days hold fewer, T moves back.
    min_test_users: int = DEFAULT_MIN_TEST_USERS
    # Online store the feast step materializes into: "sqlite" (embedded default) or "redis"
    # (`$VITRINE_REDIS`, host:port); the one the service reads.
    online: OnlineKind = "sqlite"
    # Seconds to wait for another pipeline run on the same data dir to finish (its lock); 0 refuses at once.
    wait_s: float = 0.0
    # What is trained and served: "next-item" (the sequence tower, co-visitation and popular
    # sources and their reranker, `training.train_next_item`) or "two-tower" (the two-tower
    # retriever and its session ranker). Stage settings: "next_item" (NextItemConfig), or
    # "retriever" and "ranker" for two-tower.
    recommender: Recommender = "next-item"


@dataclass
class StepContext:
    """What a step sees: the data dir, the config, the outputs of earlier steps, its MLflow run."""

    data: DataDir
    config: PipelineConfig
    state: RunState
    client: MlflowClient
    # The step's own (child) run: the pipeline's figures for this step go here; the stage's own
    # runs are linked to it afterwards.
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
    """The run `mlflow run` created for us (`$MLFLOW_RUN_ID`), when it lives in our tracking store.

    The variable is removed either way: every stage calls `mlflow.start_run()`, which would
    otherwise resume that one run instead of starting its own.
    """
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    if not run_id:
        return None
    try:
        client.get_run(run_id)
        return run_id
    except MlflowException:
        return None  # `mlflow run` tracked into another store than ours: start our own parent


def _open_state(data: DataDir, config: PipelineConfig, uri: str, client: MlflowClient) -> tuple[RunState, bool]:
    since = config.since.isoformat() if config.since else None
    parent = _external_parent(client)
    unfinished = RunState.latest_unfinished(data.pipeline, since=since, tracking_uri=uri)
    if unfinished is not None and config.resume:
        try:
            client.get_run(unfinished.parent_run_id)
            return unfinished, True
        except MlflowException:
            pass  # parent run deleted from the store: start afresh
    elif unfinished is not None and unfinished.status == RUNNING:
        _close_abandoned_run(client, unfinished)
    if parent is None:
        experiment = mlflow.get_experiment_by_name(config.experiment)
        assert experiment is not None  # created by tracking.configure
        run_name = f"pipeline {datetime.now(timezone.utc):%Y-%m-%d %H:%M}" + (f" since {since}" if since else "")
        parent = client.create_run(experiment.experiment_id, run_name=run_name).info.run_id
    return RunState.new(data.pipeline, parent_run_id=parent, since=since, tracking_uri=uri), False


def _close_abandoned_run(client: MlflowClient, state: RunState) -> None:
    """`--no-resume` after a run was killed: its MLflow runs (parent, the step it died in) are closed as KILLED.

    A state still `running` while we hold the lock belongs to a dead process; left alone, its runs
    would say RUNNING in `mlflow ui` for ever.
    """
    for step, record in state.steps.items():
        if record.status == RUNNING:
            _close_interrupted_attempt(client, state, step)
    try:
        if client.get_run(state.parent_run_id).info.status == "RUNNING":
            client.set_terminated(state.parent_run_id, "KILLED")
    except MlflowException:
        pass  # deleted from the store: nothing to close


def run_pipeline(data: DataDir, config: PipelineConfig | None = None, steps: tuple[Step, ...] | None = None) -> PipelineResult:
    """Run (or resume) the pipeline once. Raises `StepFailed` when a step fails.

    The parent and child runs are driven through `MlflowClient`, not `mlflow.start_run`: every
    stage opens its own run with the fluent API (which refuses to start a second top-level run while
    one is active), so the pipeline keeps no fluent run open while a stage works. The stage's runs
    are linked to the step's child run afterwards (`_link_stage_runs`).

    Args:
        data: the data dir (shop, features, models, MLflow store).
        config: what to run; defaults to a full run with the default promotion policy.
        steps: the step list; defaults to `STEPS`. Tests pass a shorter list.

    Raises:
        StepFailed: a step raised; the run is resumable from it.
        PipelineBusy: another run holds the data dir (`training.pipeline_lock`) for longer than `config.wait_s`.

    Example:
        >>> run_pipeline(DataDir.resolve("data"), PipelineConfig(since=date(2026, 1, 1)))  # doctest: +SKIP
    """
    config = config or PipelineConfig()
    with pipeline_lock(data, config.wait_s):
        return _run_locked(data, config, STEPS if steps is None else steps)


def _run_locked(data: DataDir, config: PipelineConfig, steps: tuple[Step, ...]) -> PipelineResult:
    uri = tracking.configure(data, config.experiment)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    state, resumed = _open_state(data, config, uri, client)
    parent = state.parent_run_id
    client.update_run(parent, status="RUNNING")
    _set_tags(client, parent, {PIPELINE_TAG: "true", "pipeline.state_file": str(state.path),
                               "pipeline.since": state.since or "all", "pipeline.resumed": str(resumed).lower(),
                               "pipeline.steps": ",".join(s.name for s in steps)})
    _set_tags(client, parent, tracking.lineage(data))
    skipped: list[str] = []
    for step in steps:
        if state.is_done(step.name):
            skipped.append(step.name)
            console.print(f"[dim]- {step.name}: done in an earlier attempt, skipped[/]")
            continue
        try:
            _run_step(step, data, config, state, client)
        except StepFailed:
            client.set_terminated(parent, "FAILED")
            raise
        # The data changes during the run (validate ingests): keep the parent's lineage current.
        _set_tags(client, parent, tracking.lineage(data))
    total = sum(state.steps[s.name].seconds for s in steps if s.name in state.steps)
    client.log_metric(parent, "pipeline_seconds", total)
    for name, record in state.steps.items():
        client.log_metric(parent, f"step_seconds.{name}", record.seconds)
    state.finish()
    client.set_terminated(parent, "FINISHED")
    return PipelineResult(parent, state.path, resumed, skipped, dict(state.steps), uri)


def _set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value)[:5000])


def _run_step(step: Step, data: DataDir, config: PipelineConfig, state: RunState, client: MlflowClient) -> None:
    console.print(f"[bold]- {step.name}[/]: {step.description}")
    _close_interrupted_attempt(client, state, step.name)
    parent = client.get_run(state.parent_run_id)
    tags = {"mlflow.parentRunId": parent.info.run_id, "mlflow.note.content": step.description,
            STEP_TAG: step.name, **tracking.lineage(data)}
    child = client.create_run(parent.info.experiment_id, run_name=step.name, tags=tags).info.run_id
    state.start_step(step.name, child)
    context = StepContext(data, config, state, client, child)
    started_ms = int(time.time() * 1000)
    started = time.perf_counter()
    try:
        with tracking.registrations_tagged({PIPELINE_RUN_TAG: parent.info.run_id, STEP_TAG: step.name, STEP_RUN_TAG: child}):
            outputs = step.run(context)
        _hold_if_asked(step.name)
    except BaseException as exc:
        seconds = time.perf_counter() - started
        client.set_tag(child, "pipeline.error", f"{type(exc).__name__}: {exc}"[:5000])
        client.log_text(child, traceback.format_exc(), "error.txt")
        _link_stage_runs(client, child, parent.info.run_id, step.name, started_ms)
        client.set_terminated(child, "FAILED")
        state.fail_step(step.name, seconds=seconds, error=f"{type(exc).__name__}: {exc}")
        console.print(f"[bold red]  {step.name} failed after {seconds:.1f}s:[/] {exc}")
        raise StepFailed(step.name, state.path, state.parent_run_id, exc) from exc
    seconds = time.perf_counter() - started
    client.log_metric(child, "step_seconds", seconds)
    _link_stage_runs(client, child, parent.info.run_id, step.name, started_ms)
    dropped = _drop_earlier_attempts(client, parent.info.run_id, step.name, child)
    if dropped:
        client.set_tag(child, "pipeline.dropped_versions", ", ".join(dropped))
        console.print(f"  dropped what an earlier attempt of {step.name} registered: {', '.join(dropped)}")
    client.set_terminated(child, "FINISHED")
    state.finish_step(step.name, run_id=child, seconds=seconds, outputs=outputs)
    console.print(f"  [green]{step.name} done[/] in {seconds:.1f}s")


def _hold_if_asked(step: str) -> None:
    """The reliability tests' kill window (`HOLD_AFTER_ENV`); nothing when the variable is unset."""
    if step in os.environ.get(HOLD_AFTER_ENV, "").split(","):
        console.print(f"  holding after {step} for {HOLD_S:g}s (${HOLD_AFTER_ENV})")
        time.sleep(HOLD_S)


def _close_interrupted_attempt(client: MlflowClient, state: RunState, step: str) -> None:
    """Close the MLflow runs of an attempt whose process died inside `step` (the state still says running).

    A killed process ends nothing: its step's child run and the stage runs it opened stay RUNNING
    in MLflow for ever. They are linked to the step as a finished attempt's are, and marked KILLED.
    """
    record = state.steps.get(step)
    if record is None or record.status != RUNNING:
        return
    try:
        attempt = client.get_run(record.run_id)
    except MlflowException:
        return  # deleted from the store: nothing to close
    linked = _link_stage_runs(client, record.run_id, state.parent_run_id, step, attempt.info.start_time)
    for run_id in [record.run_id, *linked]:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "pipeline.error", f"interrupted: the process died during step {step!r}")
            client.set_terminated(run_id, "KILLED")
    console.print(f"  [yellow]an earlier attempt of {step} died in it (run {record.run_id}): closed as KILLED[/]")


def _drop_earlier_attempts(client: MlflowClient, parent: str, step: str, child: str) -> list[str]:
    """Delete the model versions that earlier attempts of `step` in this pipeline run registered; "name/version" each.

    Such a version was never handed on: its attempt died or failed before the step was recorded.
    Only a model the finishing attempt registered again loses its earlier versions (the step's
    output names the new one); a model it did not register keeps them, since the step may be using
    what the dead attempt left (the embed step reuses an encoder a killed attempt saved). A
    version `@champion` points to is kept whatever made it: serving follows the alias. The data
    dir's lock guarantees that no attempt of this run is alive but the caller's.
    """
    from vitrine.tracking import CHAMPION_ALIAS

    versions = [v for v in client.search_model_versions(f"tags.{PIPELINE_RUN_TAG} = '{parent}'") if v.tags.get(STEP_TAG) == step]
    registered_now = {v.name for v in versions if v.tags.get(STEP_RUN_TAG) == child}
    dropped = []
    for version in versions:
        if version.tags.get(STEP_RUN_TAG) == child or version.name not in registered_now or CHAMPION_ALIAS in version.aliases:
            continue
        client.delete_model_version(version.name, version.version)
        dropped.append(f"{version.name}/{version.version}")
    return dropped


def _link_stage_runs(client: MlflowClient, child: str, parent: str, step: str, since_ms: int) -> list[str]:
    """Tag the runs a stage opened during this step (its training/evaluation runs) with the step's run.

    Same experiment: they nest under the child run in `mlflow ui` (`mlflow.parentRunId`); another
    experiment (e.g. `vitrine-encoder`): linked by tags both ways.
    """
    experiment = client.get_run(child).info.experiment_id
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"attributes.start_time >= {since_ms}", max_results=200)
    linked = []
    for run in runs:
        if run.info.run_id in (child, parent) or run.data.tags.get("pipeline.step"):
            continue
        if "mlflow.parentRunId" not in run.data.tags and run.info.experiment_id == experiment:
            client.set_tag(run.info.run_id, "mlflow.parentRunId", child)
        client.set_tag(run.info.run_id, "pipeline.parent_run_id", parent)
        client.set_tag(run.info.run_id, "pipeline.step_run_id", child)
        linked.append(run.info.run_id)
    if linked:
        client.set_tag(child, "pipeline.stage_runs", ",".join(linked))
    return linked


# --------------------------------------------------------------------------------------------
# The steps. Each calls one stage's public function; none re-implements a stage.
# --------------------------------------------------------------------------------------------


def shop_counts(data: DataDir) -> dict[str, Any]:
    """Row counts of the canonical shop from Parquet metadata (no data read): lineage of every model."""
    import pyarrow.parquet as pq

    from vitrine.shop.store import event_days

    def rows(path: Path) -> int:
        return pq.ParquetFile(path).metadata.num_rows if path.exists() else 0

    days = event_days(data)
    events = sum(rows(part) for part in data.events.rglob("*.parquet")) if data.events.exists() else 0
    return {"items": rows(data.items), "users": rows(data.users), "events": events, "event_days": len(days),
            "first_event_day": days[0] if days else None, "last_event_day": days[-1] if days else None}


def _incoming_fingerprint(data: DataDir) -> str | None:
    """Names, sizes and mtimes of what waits in data/incoming (None when empty): what `validate` ingested."""
    if not data.incoming.is_dir():
        return None
    digest = hashlib.sha256()
    found = False
    for path in sorted(p for p in data.incoming.rglob("*") if p.is_file() and "images" not in p.relative_to(data.incoming).parts):
        stat = path.stat()
        digest.update(f"{path.relative_to(data.incoming)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        found = True
    return digest.hexdigest()[:16] if found else None


def _ingested_marker(data: DataDir) -> Path:
    return data.pipeline / "last_ingested.txt"


def validate(ctx: StepContext) -> dict[str, Any]:
    """Ingest what waits in `data/incoming` once (contract checks, rejects), then count the shop.

    A drop already ingested (same files) is not ingested again, so re-runs are idempotent. Into an
    existing shop, ingest appends (new days replace only those days); only an empty shop is replaced,
    so a daily export of one day can never wipe the history.
    """
    from vitrine.shop.ingest import ingest

    data = ctx.data
    fingerprint = _incoming_fingerprint(data)
    outputs: dict[str, Any] = {"ingested": False}
    marker = _ingested_marker(data)
    already = marker.read_text().strip() if marker.exists() else None
    if fingerprint is not None and fingerprint != already:
        append = data.items.exists()
        report = ingest(data, append=append)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(fingerprint)
        summary = report.to_dict()
        outputs.update(ingested=True, append=append, event_days_written=len(report.event_days))
        for table, figures in summary["tables"].items():
            ctx.client.log_metric(ctx.run_id, f"{table}.accepted", figures["accepted"])
            ctx.client.log_metric(ctx.run_id, f"{table}.rejected", figures["rejected"])
            outputs[f"{table}_rejected"] = figures["rejected"]
        ctx.client.log_dict(ctx.run_id, summary, "ingest_report.json")
    counts = shop_counts(data)
    if counts["items"] == 0 or counts["events"] == 0:
        raise InvalidInput(f"{data.shop}: no shop to train on (items {counts['items']}, events {counts['events']}); "
                           f"put a shop in {data.incoming} (`vitrine generate` or `vitrine import`)")
    for key in ("items", "users", "events", "event_days"):
        ctx.client.log_metric(ctx.run_id, f"shop.{key}", counts[key])
    outputs.update(counts)
    outputs.update(latest_split(data, ctx.config))
    return outputs


def latest_split(data: DataDir, config: PipelineConfig) -> dict[str, Any]:
    """T of this run's latest split, and how many days it holds out (more than eval_days on a sparse shop)."""
    from training.split_evaluation import latest_split_time
    from vitrine.shop.store import event_days

    cutoff = latest_split_time(data, config.eval_days, config.min_test_users)
    last = pd.Timestamp(event_days(data)[-1], tz="UTC")
    return {"split_start": cutoff.isoformat(), "split_days": int((last - cutoff) / pd.Timedelta(days=1)) + 1}


def embed_items(ctx: StepContext) -> dict[str, Any]:
    """Item vectors with the trained encoder; the encoder is trained first when there is none yet."""
    from embeddings.encode import default_model_dir, embed
    from embeddings.train_encoder import TrainEncoderConfig, train_encoder

    data = ctx.data
    outputs: dict[str, Any] = {"encoder_trained": False}
    if not Path(default_model_dir(data)).is_dir() or ctx.config.retrain_encoder:
        trained = train_encoder(data, ctx.stage_config("encoder") or TrainEncoderConfig(), progress=ctx.config.progress)
        registered = trained.get("mlflow") or {}
        outputs.update(encoder_trained=True, encoder_version=str(registered.get("version", "")),
                       encoder_run_id=str(registered.get("run_id", "")))
    # Incremental by default: with the same encoder, only new or changed items are encoded and the
    # rest keep their stored vectors; a freshly trained encoder (new version) re-embeds everything.
    summary = embed(data, progress=ctx.config.progress)
    ctx.client.log_dict(ctx.run_id, summary, "embed_summary.json")
    ctx.client.log_metric(ctx.run_id, "items_embedded", summary["items"])
    for count in ("encoded", "reused", "removed"):
        ctx.client.log_metric(ctx.run_id, f"items_{count}", summary[count])
    outputs.update(embedding_model_version=summary["model_version"], items_embedded=summary["items"],
                   items_encoded=summary["encoded"], items_reused=summary["reused"], items_removed=summary["removed"],
                   embed_mode=summary["mode"], with_image=summary["with_image"],
                   replaced_version=summary["replaced_version"] or "")
    return outputs


def build_features(ctx: StepContext) -> dict[str, Any]:
    """Daily feature snapshots: all days, or only days >= --since (incremental)."""
    from feature_repo.snapshots.build import build

    report = build(ctx.data, since=ctx.config.since)
    for view, rows in report.rows.items():
        ctx.client.log_metric(ctx.run_id, f"rows.{view}", rows)
    return {"first_day": report.first_day, "last_day": report.last_day, "events_read": report.events_read,
            "rows": dict(report.rows)}


def feast_apply_materialize(ctx: StepContext) -> dict[str, Any]:
    """`feast apply` then `feast materialize` of the snapshot days just built into the online store."""
    from feature_repo import store as feature_store

    online = ctx.config.online
    feature_store.apply(ctx.data, online)
    first = pd.Timestamp(ctx.output("features", "first_day"), tz="UTC")
    # Snapshot rows sit at day starts: the range ends just after the last snapshot day's rows.
    end = pd.Timestamp(ctx.output("features", "last_day"), tz="UTC") + pd.Timedelta(days=1)
    # Item vectors carry one fixed early timestamp (they never go stale), so a full run loads them
    # from the beginning of time; an incremental run starts where the new snapshots start.
    start = first.to_pydatetime() if ctx.config.since else None
    stats = feature_store.materialize(ctx.data, start if start is not None else datetime(1970, 1, 1, tzinfo=timezone.utc),
                                      end.to_pydatetime(), online)
    for view, seconds in stats["views"].items():
        ctx.client.log_metric(ctx.run_id, f"materialize_seconds.{view}", seconds)
    return {"online": online, "start": stats["start"], "end": stats["end"], "views": sorted(stats["views"]),
            "feature_repo": feature_repo_version()}


def feature_repo_version() -> str:
    """Content hash of the Feast definitions: changes whenever a feature view or service changes."""
    from feature_repo.store import REPO_DIR

    return hashlib.sha256((REPO_DIR / "definitions.py").read_bytes()).hexdigest()[:12]


def split_time(ctx: StepContext) -> pd.Timestamp:
    """T of this run, as the validate step chose it (`latest_split`; chosen now for a run validated before it existed)."""
    chosen = ctx.output("validate", "split_start") or latest_split(ctx.data, ctx.config)["split_start"]
    return pd.Timestamp(chosen)


def _model_lineage(ctx: StepContext) -> dict[str, str]:
    """What the pipeline knows of a model's inputs beyond `vitrine.tracking.lineage`."""
    return {
        "pipeline_run_id": ctx.state.parent_run_id,
        "shop.items": str(ctx.output("validate", "items", "")),
        "shop.users": str(ctx.output("validate", "users", "")),
        "shop.events": str(ctx.output("validate", "events", "")),
        "shop.event_days": f"{ctx.output('validate', 'first_event_day')}/{ctx.output('validate', 'last_event_day')}",
        "feature_repo": str(ctx.output("feast", "feature_repo", "")),
        "feature_days": f"{ctx.output('features', 'first_day')}/{ctx.output('features', 'last_day')}",
        "embedding_model_version": str(ctx.output("embed", "embedding_model_version", "")),
        "split_start": split_time(ctx).isoformat(),
    }


def _tag_lineage(ctx: StepContext, model: str, version: str, extra: dict[str, str] | None = None) -> None:
    """Add the pipeline's lineage tags (and `extra`, which wins) that the version lacks."""
    have = ctx.client.get_model_version(model, version).tags
    for key, value in {**tracking.lineage(ctx.data), **_model_lineage(ctx), **(extra or {})}.items():
        if key not in have or key in (extra or {}):
            ctx.client.set_model_version_tag(model, version, key, value)


def _tag_challenger(ctx: StepContext, model: str, version: str) -> None:
    """Point `@challenger` at the new version and add the pipeline's lineage tags it lacks."""
    from vitrine.tracking import CHALLENGER_ALIAS

    _tag_lineage(ctx, model, version)
    ctx.client.set_registered_model_alias(model, CHALLENGER_ALIAS, version)


def train_next_item_step(ctx: StepContext) -> dict[str, Any]:
    """Fit the next-item recommender on the events before the latest split; register its tower and ranker (challengers)."""
    from training.train_next_item import NextItemConfig, train_next_item
    from vitrine.tracking import RANKER_MODEL, RETRIEVER_MODEL

    run = train_next_item(ctx.data, ctx.stage_config("next_item") or NextItemConfig(), end=split_time(ctx), show_progress=ctx.config.progress)
    for model, version in run.versions.items():
        _tag_challenger(ctx, model, version)
    return {"model": RETRIEVER_MODEL, "version": run.versions[RETRIEVER_MODEL], "run_id": run.run_id,
            "ranker_version": run.versions[RANKER_MODEL], "model_dir": str(run.model_dir), "epochs": run.fitted.epochs,
            "rounds": run.fitted.rounds, "learning_rate": run.fitted.learning_rate, "holdout": run.fitted.holdout,
            "seconds": run.fitted.seconds}


def train_retriever_step(ctx: StepContext) -> dict[str, Any]:
    """Train the retriever on the days before the latest split and register it (the next-item one brings its ranker)."""
    if ctx.config.recommender == "next-item":
        return train_next_item_step(ctx)
    return train_two_tower_step(ctx)


def train_two_tower_step(ctx: StepContext) -> dict[str, Any]:
    """Train the two-tower retriever on the days before the latest split and register it."""
    from dataclasses import replace

    from training.train_retriever import TrainConfig, train_retriever
    from vitrine.tracking import RETRIEVER_MODEL

    config = ctx.stage_config("retriever") or TrainConfig()
    # The challenger never sees the latest split: the events after T are the trainer's validation
    # set, held out of the final model too, so the evaluate step compares it fairly.
    config = replace(config, validation_days=ctx.config.eval_days, validation_cutoff=split_time(ctx).isoformat(),
                     validation_next_only=True)
    run = train_retriever(ctx.data, config, show_progress=ctx.config.progress)
    if not run.version:
        raise RuntimeError("train_retriever registered no vitrine-retriever version")
    _tag_challenger(ctx, RETRIEVER_MODEL, run.version)
    last = run.fit.epochs[-1] if run.fit.epochs else {}
    return {"model": RETRIEVER_MODEL, "version": run.version, "run_id": run.run_id or "",
            "model_dir": str(run.model_dir), "epochs": len(run.fit.epochs),
            "last_epoch": {k: float(v) for k, v in last.items()}}


def train_ranker_step(ctx: StepContext) -> dict[str, Any]:
    """Train the LightGBM reranker on the challenger retriever's candidates, before the latest split.

    The next-item ranker was trained by the retriever step, on the candidates of the tower it held
    each user's last item out from: this step records it.
    """
    if ctx.config.recommender == "next-item":
        from vitrine.tracking import RANKER_MODEL

        return {"model": RANKER_MODEL, "version": ctx.output("retriever", "ranker_version"), "run_id": ctx.output("retriever", "run_id"),
                "best_iteration": ctx.output("retriever", "rounds"), "trained_by": "retriever step (next-item)"}
    from ranking.retriever import Retriever
    from training.train_ranker import RankerTrainConfig, RetrieverCandidates, train_ranker
    from vitrine.tracking import CHALLENGER_ALIAS, RANKER_MODEL

    retriever = Retriever.from_registry(ctx.data, CHALLENGER_ALIAS)
    if str(retriever.version) != str(ctx.output("retriever", "version")):
        raise RuntimeError(f"vitrine-retriever@{CHALLENGER_ALIAS} is v{retriever.version}, this run trained "
                           f"v{ctx.output('retriever', 'version')}: another pipeline run is active")
    config = ctx.stage_config("ranker") or RankerTrainConfig()
    result = train_ranker(ctx.data, config, retriever=RetrieverCandidates(retriever), end=split_time(ctx),
                          progress=ctx.config.progress)
    if not result.registered_version:
        raise RuntimeError("train_ranker registered no vitrine-ranker version")
    _tag_challenger(ctx, RANKER_MODEL, result.registered_version)
    return {"model": RANKER_MODEL, "version": result.registered_version, "run_id": result.run_id,
            "model_dir": str(result.model_dir), "valid_ndcg_at_10": result.valid_ndcg_at_10,
            "best_iteration": result.best_iteration, "windows": result.windows,
            "train_requests": result.train_summary["requests"], "valid_requests": result.valid_summary["requests"],
            "retriever_version": str(retriever.version)}


def evaluate_models(ctx: StepContext) -> dict[str, Any]:
    """Challenger and current champion pairs, scored on the same latest time split."""
    if ctx.config.recommender == "next-item":
        return evaluate_next_item(ctx)
    return evaluate_two_tower(ctx)


def evaluate_next_item(ctx: StepContext) -> dict[str, Any]:
    """The next-item challenger and champion, each served as at T, on every user's next new item after T."""
    from training.split_evaluation import NextItemSplit, evaluate_next_item_pair

    split = NextItemSplit.of(ctx.data, split_time(ctx))
    judged = _judge_pairs(ctx, lambda alias: evaluate_next_item_pair(ctx.data, split, alias), split.cutoff)
    return {"split_start": split.cutoff.isoformat(), "test_users": int(len(split.users)), **judged}


def evaluate_two_tower(ctx: StepContext) -> dict[str, Any]:
    """Challenger and current champion two-tower pairs, scored on the same latest time split."""
    from training.split_evaluation import LatestSplit, evaluate_pair

    config = ctx.stage_config("evaluate") or {}
    latest = LatestSplit.of(ctx.data, split_time(ctx), max_requests=config.get("max_requests"))
    judged = _judge_pairs(ctx, lambda alias: evaluate_pair(latest, alias), latest.cutoff)
    return {"split_start": latest.cutoff.isoformat(), "test_users": len(latest.split.targets), "test_requests": len(latest.requests),
            **judged}


def _judge_pairs(ctx: StepContext, score: Callable[[str], tuple[dict[str, float], dict[int, float]]], cutoff: pd.Timestamp) -> dict[str, Any]:
    """`@challenger` and the champion scored by `score(alias)` on one split; figures, curves and plot logged to the step run.

    A refit champion has seen the split's days: its validated twin is scored in its place
    (`champion_to_evaluate`). A champion that does not load, or is of another kind, cannot be
    compared: the challenger is then judged alone, and the note says why.
    """
    import tempfile

    from training.promotion import champion_to_evaluate, champion_version
    from training.split_evaluation import plot_recall_curves
    from vitrine.errors import ModelUnavailable
    from vitrine.tracking import CHALLENGER_ALIAS, RETRIEVER_MODEL

    challenger, challenger_curve = score(CHALLENGER_ALIAS)
    curves = {"challenger": challenger_curve}
    champion: dict[str, float] | None = None
    champion_note = "no champion yet"
    if champion_version(ctx.client, RETRIEVER_MODEL) is not None:
        alias, champion_note = champion_to_evaluate(ctx.client)
        try:
            champion, curves["champion"] = score(alias)
        except ModelUnavailable as exc:
            champion_note = f"champion not comparable: {exc}"
    for role, figures in (("challenger", challenger), ("champion", champion or {})):
        for name, value in figures.items():
            ctx.client.log_metric(ctx.run_id, f"{role}.{name}", value)
    with tempfile.TemporaryDirectory() as scratch:
        plot = plot_recall_curves(curves, Path(scratch) / "recall_at_k.png", cutoff)
        ctx.client.log_artifact(ctx.run_id, str(plot))
    ctx.client.log_dict(ctx.run_id, {"challenger": challenger, "champion": champion, "curves": curves}, "evaluation.json")
    return {"challenger": challenger, "champion": champion, "champion_note": champion_note}


def promote_if_better(ctx: StepContext) -> dict[str, Any]:
    """Decide with the agreed rules and move `@champion` only when the challenger wins."""
    from training.promotion import decide, promote
    from vitrine.tracking import RANKER_MODEL, RETRIEVER_MODEL

    challenger = ctx.output("evaluate", "challenger")
    champion = ctx.output("evaluate", "champion")
    decision = decide(challenger, champion, ctx.config.policy)
    note = ctx.output("evaluate", "champion_note")
    if champion is None and note and note != "no champion yet":
        decision = type(decision)(decision.promote, note, decision.challenger, None, decision.outcomes)
    versions = {RETRIEVER_MODEL: ctx.output("retriever", "version"), RANKER_MODEL: ctx.output("ranker", "version")}
    champions = promote(ctx.client, versions, decision, pipeline_run_id=ctx.state.parent_run_id)
    ctx.client.log_text(ctx.run_id, decision.to_json(), "decision.json")
    ctx.client.set_tag(ctx.run_id, "promotion.decision", "promoted" if decision.promote else "rejected")
    ctx.client.set_tag(ctx.run_id, "promotion.reason", decision.reason[:5000])
    ctx.client.set_tag(ctx.state.parent_run_id, "promotion.decision", "promoted" if decision.promote else "rejected")
    ctx.client.log_metric(ctx.run_id, "promoted", float(decision.promote))
    for rule in ctx.config.policy.rules:
        ctx.client.log_param(ctx.run_id, f"rule.{rule.metric}", f"min_gain={rule.min_gain} higher_is_better={rule.higher_is_better}")
    verdict = "promoted" if decision.promote else "kept the champion"
    console.print(f"  {verdict}: {decision.reason}")
    return {"promote": decision.promote, "reason": decision.reason, "challenger": decision.challenger,
            "champion": decision.champion, "challenger_versions": versions, "champions": champions}


def refit_champion(ctx: StepContext) -> dict[str, Any]:
    """Train the promoted pair again on every day through the last one, and serve that pair.

    The challenger was trained before T and judged after it; the days after T hold each user's
    most recent behaviour, which the served model should know. The refit takes the challenger's
    settings with what its validation run chose (the retriever's epochs, the ranker's boosting
    rounds and first training day), trains the retriever on the whole log and the ranker on the
    refit retriever's candidates for requests through the last day, and moves `@champion` to both
    (`training.promotion.install_refit`). Each refit version is tagged with the challenger version
    and run it was refit from. A rejected challenger is not refit: the champion stays.
    """
    if ctx.config.recommender == "next-item":
        return refit_next_item(ctx)
    return refit_two_tower(ctx)


def _install_refits(ctx: StepContext, refits: dict[str, str], refit_runs: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Tag each refit version with the challenger it is the refit of, then move `@champion` to the refits."""
    from training.promotion import REFIT_OF_RUN, REFIT_OF_VERSION, install_refit
    from vitrine.tracking import RANKER_MODEL, RETRIEVER_MODEL

    validated = {RETRIEVER_MODEL: str(ctx.output("retriever", "version")), RANKER_MODEL: str(ctx.output("ranker", "version"))}
    runs = {RETRIEVER_MODEL: str(ctx.output("retriever", "run_id")), RANKER_MODEL: str(ctx.output("ranker", "run_id"))}
    last_day = str(ctx.output("validate", "last_event_day"))
    for model, version in refits.items():
        lineage = {REFIT_OF_VERSION: validated[model], REFIT_OF_RUN: runs[model], "split_start": "none: refit on every day",
                   "trained_through": last_day}
        _tag_lineage(ctx, model, version, lineage)
        # Keyed by model: one run holds both models of a next-item refit.
        ctx.client.log_param(refit_runs[model], f"{model}.{REFIT_OF_VERSION}", validated[model])
        ctx.client.log_param(refit_runs[model], f"{model}.{REFIT_OF_RUN}", runs[model])
    champions = install_refit(ctx.client, refits, validated)
    console.print("  serving the refit: " + ", ".join(f"{m}@champion = v{v} (refit of v{validated[m]})" for m, v in refits.items()))
    return champions, validated


def refit_next_item(ctx: StepContext) -> dict[str, Any]:
    """The promoted next-item configuration trained again on every day, same epochs and rounds, and served."""
    from training.train_next_item import NextItemConfig, train_next_item

    if not ctx.output("promote", "promote"):
        return {"refit": False, "reason": "challenger not promoted: nothing refit, the champion stays"}
    epochs, rounds = int(ctx.output("retriever", "epochs")), int(ctx.output("retriever", "rounds"))
    rate = ctx.output("retriever", "learning_rate")  # None: a state recorded before the rate was chosen (its default)
    run = train_next_item(ctx.data, ctx.stage_config("next_item") or NextItemConfig(), epochs=epochs, rounds=rounds,
                          learning_rate=None if rate is None else float(rate), show_progress=ctx.config.progress)
    champions, validated = _install_refits(ctx, dict(run.versions), {model: run.run_id for model in run.versions})
    return {"refit": True, "versions": run.versions, "run_ids": {model: run.run_id for model in run.versions}, "refit_of": validated,
            "champions": champions, "retriever_epochs": epochs, "ranker_rounds": rounds, "ranker_learning_rate": run.fitted.learning_rate}


def refit_two_tower(ctx: StepContext) -> dict[str, Any]:
    """The promoted two-tower pair trained again through the last day, and served (see `refit_champion`)."""
    from dataclasses import replace

    from ranking.retriever import Retriever
    from training.train_ranker import RankerRefit, RankerTrainConfig, RetrieverCandidates, train_ranker
    from training.train_retriever import TrainConfig, train_retriever
    from vitrine.tracking import RANKER_MODEL as RANKER
    from vitrine.tracking import RETRIEVER_MODEL as RETRIEVER

    if not ctx.output("promote", "promote"):
        return {"refit": False, "reason": "challenger not promoted: nothing refit, the champion stays"}
    epochs = int(ctx.output("retriever", "epochs"))
    config = replace(ctx.stage_config("retriever") or TrainConfig(), validation_days=0, validation_cutoff=None, epochs=epochs)
    run = train_retriever(ctx.data, config, show_progress=ctx.config.progress)
    if not run.version or run.model_dir is None:
        raise RuntimeError("train_retriever registered no vitrine-retriever version for the refit")
    rounds = int(ctx.output("ranker", "best_iteration"))
    refit = RankerRefit(rounds, pd.Timestamp(ctx.output("ranker", "windows")["train_start"]), str(ctx.output("ranker", "run_id")))
    retriever = Retriever.load(run.model_dir, version=run.version)
    result = train_ranker(ctx.data, ctx.stage_config("ranker") or RankerTrainConfig(), retriever=RetrieverCandidates(retriever),
                          refit=refit, progress=ctx.config.progress)
    if not result.registered_version:
        raise RuntimeError("train_ranker registered no vitrine-ranker version for the refit")
    refits = {RETRIEVER: str(run.version), RANKER: str(result.registered_version)}
    refit_runs = {RETRIEVER: run.run_id or "", RANKER: result.run_id}
    champions, validated = _install_refits(ctx, refits, refit_runs)
    return {"refit": True, "versions": refits, "run_ids": refit_runs, "refit_of": validated, "champions": champions,
            "retriever_epochs": epochs, "ranker_rounds": rounds, "ranker_windows": result.windows,
            "ranker_train_requests": result.train_summary["requests"]}


STEPS: tuple[Step, ...] = (
    Step("validate", validate, "ingest new data from data/incoming (contract checks, rejects) and count the shop"),
    Step("embed", embed_items, "item vectors (trains the encoder first when there is none)"),
    Step("features", build_features, "daily feature snapshots (incremental with --since)"),
    Step("feast", feast_apply_materialize, "feast apply + materialize into the online store"),
    Step("retriever", train_retriever_step, "train + register the retriever (challenger); the next-item one brings its ranker"),
    Step("ranker", train_ranker_step, "the LightGBM reranker on the challenger's candidates (registered)"),
    Step("evaluate", evaluate_models, "challenger and champion on the same latest time split"),
    # The service (`ranking.service`) polls `@champion`: moving the alias is the deployment.
    Step("promote", promote_if_better, "move @champion to the challenger only if it beats the champion"),
    # What is served: the promoted configuration trained again through the last day.
    Step("refit", refit_champion, "train the promoted pair again on every day and serve that refit (@champion)"),
)
