"""MLflow set-up and lineage, shared by every stage that trains or evaluates.

The embedded default tracks into SQLite and a local artifact folder under the data dir; setting
`MLFLOW_TRACKING_URI` (e.g. `postgresql+psycopg2://postgres@127.0.0.1:5432/mlflow`, or an `http://`
server) sends everything there instead. The registry lives with the tracking store. Name the
`+psycopg2` driver: SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, which is not installed.
"""

from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

import mlflow

from vitrine.paths import DataDir

# Packages whose versions decide whether a model can be reproduced or even loaded.
LINEAGE_PACKAGES = ("vitrine", "torch", "torchrec", "fbgemm-gpu-cpu", "feast", "lightgbm", "transformers", "faiss-cpu", "mlflow")


def configure(data: DataDir, experiment: str = "vitrine") -> str:
    """Point MLflow at this data dir's store (or `$MLFLOW_TRACKING_URI`) and select `experiment`.

    Returns the tracking URI. Artifacts of a new experiment go under `data/mlflow/artifacts`
    unless the tracking server decides (http URIs).
    """
    uri = data.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        data.mlflow.mkdir(parents=True, exist_ok=True)
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
