"""The resume state of one pipeline run: which steps finished, and what they produced.

One JSON file per pipeline run under `data/pipeline/` (`<started>-<parent run id>.json`). A step
is recorded only after it finished, together with its outputs (model versions, counts), so that a
re-run after a failure skips what is done and hands the later steps what the earlier ones made.
Writes are atomic (temp file + rename): a crash mid-write leaves the previous state readable.

Example:
    >>> state = RunState.new(Path("/tmp/d/pipeline"), parent_run_id="abc", since=None, tracking_uri="sqlite://")
    >>> state.finish_step("validate", run_id="r1", seconds=0.5, outputs={"events": 10})
    >>> state.is_done("validate")
    True
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RUNNING, FAILED, FINISHED = "running", "failed", "finished"


@dataclass
class StepRecord:
    """What one step left behind."""

    status: str
    # MLflow child run of the last attempt (a retried step gets a new child run).
    run_id: str
    seconds: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    attempts: int = 1


@dataclass
class RunState:
    """The state file of one pipeline run. Mutated by the runner, saved after every change."""

    path: Path
    parent_run_id: str
    # ISO date the run processes from (`--since`), or None for a full run.
    since: str | None
    # A state can only resume in the tracking store its parent run lives in.
    tracking_uri: str
    started_at: str
    status: str = RUNNING
    failed_step: str = ""
    steps: dict[str, StepRecord] = field(default_factory=dict)

    @classmethod
    def new(cls, folder: Path, *, parent_run_id: str, since: str | None, tracking_uri: str) -> "RunState":
        started = datetime.now(timezone.utc)
        path = folder / f"{started:%Y%m%dT%H%M%S}-{parent_run_id}.json"
        state = cls(path, parent_run_id, since, tracking_uri, started.isoformat())
        state.save()
        return state

    @classmethod
    def load(cls, path: Path) -> "RunState":
        raw = json.loads(path.read_text())
        steps = {name: StepRecord(**record) for name, record in raw.pop("steps", {}).items()}
        return cls(path=path, steps=steps, **raw)

    @classmethod
    def latest_unfinished(cls, folder: Path, *, since: str | None, tracking_uri: str) -> "RunState | None":
        """The newest run that did not finish, if it matches `since` and the tracking store.

        A run started with other arguments is not resumed: its finished steps processed other data.
        """
        if not folder.exists():
            return None
        for path in sorted(folder.glob("*.json"), reverse=True):
            try:
                state = cls.load(path)
            except (OSError, ValueError, TypeError):
                continue  # an unreadable state cannot be resumed; a fresh run is always safe
            if state.status == FINISHED:
                return None  # only the newest run may be resumed: older failures were superseded
            if state.since == since and state.tracking_uri == tracking_uri:
                return state
            return None
        return None

    def is_done(self, step: str) -> bool:
        record = self.steps.get(step)
        return record is not None and record.status == FINISHED

    def outputs(self, step: str) -> dict[str, Any]:
        record = self.steps.get(step)
        return dict(record.outputs) if record is not None else {}

    def start_step(self, step: str, run_id: str) -> None:
        previous = self.steps.get(step)
        attempts = previous.attempts + 1 if previous is not None else 1
        self.steps[step] = StepRecord(RUNNING, run_id, attempts=attempts)
        self.status = RUNNING
        self.failed_step = ""
        self.save()

    def finish_step(self, step: str, *, run_id: str, seconds: float, outputs: dict[str, Any]) -> None:
        attempts = self.steps[step].attempts if step in self.steps else 1
        self.steps[step] = StepRecord(FINISHED, run_id, seconds, outputs, attempts=attempts)
        self.save()

    def fail_step(self, step: str, *, seconds: float, error: str) -> None:
        record = self.steps[step]
        record.status, record.seconds, record.error = FAILED, seconds, error
        self.status, self.failed_step = FAILED, step
        self.save()

    def finish(self) -> None:
        self.status = FINISHED
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = asdict(self)
        body.pop("path")
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(body, handle, indent=2, sort_keys=True, default=str)
        os.replace(tmp, self.path)
