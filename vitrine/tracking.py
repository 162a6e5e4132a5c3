"""MLflow set-up, lineage and the model registry's names, shared by every stage that trains, evaluates or serves.

The embedded default tracks into SQLite and a local artifact folder under the data dir; setting
`MLFLOW_TRACKING_URI` (e.g. `postgresql+psycopg2://postgres@127.0.0.1:5432/mlflow`, or an `http://`
server) sends everything there instead. The registry lives with the tracking store. Name the
`+psycopg2` driver: SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, which is not installed.

The registry is where training hands models to serving: the model names and aliases below are the
only spelling of them, and `register_model` the only code that creates versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
from collections.abc import Iterator
from contextvars import ContextVar
from importlib import metadata
from pathlib import Path

from vitrine.paths import DataDir, environment_restored

# Environment variables MLflow sets when told its URIs.
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
# Registered models, one per trained stage.
ENCODER_MODEL = "vitrine-encoder"
RETRIEVER_MODEL = "vitrine-retriever"
RANKER_MODEL = "vitrine-ranker"
MODEL_DESCRIPTIONS = {
    ENCODER_MODEL: "Item encoder (CLIP-style dual encoder) for `vitrine embed`.",
    RETRIEVER_MODEL: "Retriever: user tower + FAISS index of item vectors.",
    RANKER_MODEL: "LightGBM LambdaRank reranker.",
}
# What serving follows; moving it is the deployment.
CHAMPION_ALIAS = "champion"
# The champion an alias move replaced, kept so that an operator can roll back with one command:
# `mlflow` alias `previous` -> `champion`.
PREVIOUS_ALIAS = "previous"
# The last version the pipeline evaluated, promoted or not: lets an operator inspect a rejected one.
CHALLENGER_ALIAS = "challenger"
# The evaluated challenger a refit `@champion` was trained again from (`training.promotion.install_refit`).
# The refit has seen every day, those of the next run's split too, so the next evaluation scores this
# version in the champion's place: both sides of the comparison then never saw the test days.
VALIDATED_ALIAS = "validated"

# Tags `register_model` adds to every version it creates while `registrations_tagged` is in force:
# the pipeline names its run and step there, so a version knows from birth which attempt made it.
_REGISTRATION_TAGS: ContextVar[dict[str, str]] = ContextVar("vitrine_registration_tags", default={})

# Packages whose versions decide whether a model can be reproduced or even loaded.
LINEAGE_PACKAGES = ("vitrine", "torch", "torchrec", "fbgemm-gpu-cpu", "feast", "lightgbm", "transformers", "faiss-cpu", "mlflow")


def configure(data: DataDir, experiment: str = "vitrine") -> str:
    """Point MLflow at this data dir's store (or `$MLFLOW_TRACKING_URI`) and select `experiment`.

    Returns the tracking URI. Artifacts of a new experiment go under `data/mlflow/artifacts`
    unless the tracking server decides (http URIs).
    """
    import mlflow

    uri = data.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        data.mlflow.mkdir(parents=True, exist_ok=True)
    # MLflow also writes these URIs into the environment (for subprocesses); left there, the first data
    # dir configured would capture every later one, since `DataDir` reads `$MLFLOW_TRACKING_URI` as the
    # user's choice of a remote store. The environment keeps only what the user set.
    with environment_restored(*URI_VARIABLES):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None if uri.startswith("http") else (data.mlflow / "artifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


def git_commit() -> str:
    """The commit of the code that runs, with `-dirty` when the tree has changes; `unknown` outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def data_snapshot(data: DataDir) -> str:
    """A content hash of the canonical shop (items, users, every event partition): the data snapshot id."""
    digest = hashlib.sha256()
    files = [data.items, data.users, *sorted(data.events.rglob("*.parquet"))]
    for path in files:
        if not path.exists():
            continue
        digest.update(str(path.relative_to(data.shop)).encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def package_versions() -> dict[str, str]:
    versions = {}
    for name in LINEAGE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def lineage(data: DataDir) -> dict[str, str]:
    """Tags that every run and registered model carries: code, data snapshot and package versions."""
    tags = {"git_commit": git_commit(), "data_snapshot": data_snapshot(data)}
    tags.update({f"version.{name}": version for name, version in package_versions().items()})
    return tags


@contextlib.contextmanager
def registrations_tagged(tags: dict[str, str]) -> Iterator[None]:
    """Every version `register_model` creates inside the block carries `tags` too (they win over the stage's).

    The tags go in with the version's creation, in one call: a process killed right after it
    still leaves a version that says who made it (`training.pipeline` finds a dead attempt's
    versions by them).
    """
    token = _REGISTRATION_TAGS.set({**_REGISTRATION_TAGS.get(), **tags})
    try:
        yield
    finally:
        _REGISTRATION_TAGS.reset(token)


def register_model(name: str, source: str, run_id: str, tags: dict[str, str]) -> str:
    """A new version of registered model `name` (created when absent) for the artifacts at `source`.

    The stages log the model's files before they call this, so a version never points at nothing.

    Args:
        name: one of the model names above.
        source: the artifact URI of the model folder (a plain folder: the stages save their own formats).
        run_id: the MLflow run that produced it.
        tags: lineage and figures, copied onto the version (with those of `registrations_tagged`).

    Returns:
        The new version number, as text.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=MODEL_DESCRIPTIONS.get(name, ""))
    tags = {**tags, **_REGISTRATION_TAGS.get()}
    return str(client.create_model_version(name, source=source, run_id=run_id, tags=tags).version)
