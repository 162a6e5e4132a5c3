"""Where every stage reads and writes, under one data dir.

The data dir defaults to `./data`; `VITRINE_DATA_DIR` or the CLI's `--data-dir` override it.
Each stage writes files that the next stage reads; this module is the one place that names them.

    data/
      shop/                    canonical shop after ingest (the data contract)
        items.parquet
        users.parquet
        events/event_date=YYYY-MM-DD/*.parquet
        images/<item_id>.<ext>
      incoming/                what `generate` / `import` wrote in the contract's format, before validation
      live/events/             events posted to the service (`POST /events`), in the contract's format:
                               events-YYYY-MM-DD-<pid>.csv per UTC day and process; `vitrine ingest --live` merges them
      live/ingested/           spool files of past days, moved there once merged
      truth/                   synthetic shops only: ground-truth tastes, for evaluation only
      rejects/                 rows that failed validation, with the reason
      embeddings/              item_embeddings.parquet, written by `vitrine embed`
      models/                  trained encoders, retrievers, rankers (local copies; MLflow has the registry)
      features/                Feast offline sources written by `vitrine features build`
      feast/                   embedded Feast registry and SQLite online store
      mlflow/                  embedded MLflow tracking store (mlflow.db) and artifacts
      pipeline/                one state file per pipeline run (finished steps, for resuming)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "VITRINE_DATA_DIR"
DEFAULT_DATA_DIR = Path("data")


@dataclass(frozen=True)
class DataDir:
    """The layout of one data dir. Paths are absolute so that they survive a `chdir`."""

    root: Path

    @classmethod
    def resolve(cls, data_dir: str | Path | None = None) -> "DataDir":
        """The explicit dir if given, else `$VITRINE_DATA_DIR`, else `./data`."""
        chosen = data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
        return cls(Path(chosen).expanduser().resolve())

    @property
    def shop(self) -> Path:
        return self.root / "shop"

    @property
    def items(self) -> Path:
        return self.shop / "items.parquet"

    @property
    def users(self) -> Path:
        return self.shop / "users.parquet"

    @property
    def events(self) -> Path:
        return self.shop / "events"

    @property
    def images(self) -> Path:
        return self.shop / "images"

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def live(self) -> Path:
        """A source folder for `ingest` (append mode): what the service received, not yet validated."""
        return self.root / "live"

    @property
    def live_events(self) -> Path:
        """The spool of `POST /events`: one CSV per UTC day and serving process."""
        return self.live / "events"

    @property
    def truth(self) -> Path:
        return self.root / "truth"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def item_embeddings(self) -> Path:
        return self.embeddings / "item_embeddings.parquet"

    @property
    def item_tags(self) -> Path:
        return self.embeddings / "item_tags.parquet"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def feast(self) -> Path:
        return self.root / "feast"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def pipeline(self) -> Path:
        return self.root / "pipeline"

    @property
    def mlflow_tracking_uri(self) -> str:
        """`$MLFLOW_TRACKING_URI` when set (e.g. a PostgreSQL-backed server), else SQLite in the data dir."""
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow / 'mlflow.db'}"


@contextlib.contextmanager
def environment_restored(*names: str) -> Iterator[None]:
    """Put `names` back in the environment as they were (set, or unset) when the block ends."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
