"""A `vitrine serve` process on loopback and bounded request loops against it, for the fault tests.

    with served(data, env) as base, Traffic(base, paths) as traffic:
        ...  # break something, mend it
    answers = traffic.answers   # every request: when, status, degraded, versions

Every loop stops at `max_requests` or `max_seconds`, whichever comes first, and sends to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.servers import free_port, stop

# A fresh process imports torch, Feast and MLflow and loads the models: tens of seconds on a busy box.
SERVER_START_TIMEOUT_S = 180.0
# Far above a healthy answer (a few ms): a request this slow is counted as lost, not waited for.
REQUEST_TIMEOUT_S = 5.0
ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def served(data_root: Path, env: dict[str, str] | None = None, *, online: str = "sqlite", poll_s: float = 0.5) -> Iterator[str]:
    """`vitrine serve` on a free 127.0.0.1 port until the block ends; yields its base URL once /readyz is 200."""
    port = free_port()
    command = [sys.executable, "-m", "vitrine.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--online", online,
               "--poll-s", str(poll_s), "--data-dir", str(data_root)]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    log = data_root.parent / f"serve-{port}.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(command, env=environment, stdout=sink, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT_S
            while True:
                assert server.poll() is None, f"server exited: {log.read_text()[-3000:]}"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"server not ready after {SERVER_START_TIMEOUT_S} s: {log.read_text()[-3000:]}"
                time.sleep(0.25)
            yield base
        finally:
            stop(server)


def server_log(data_root: Path) -> str:
    """Everything the servers of this data dir printed (stdout and stderr)."""
    return "\n".join(path.read_text(errors="replace") for path in sorted(data_root.parent.glob("serve-*.log")))


@dataclass(frozen=True)
class Answer:
    """One request of a load run."""

    at: float  # seconds since the load began, when the request was sent
    path: str
    status: int  # HTTP status; 0 when no answer came (refused connection, timeout)
    degraded: bool = False
    versions: tuple[tuple[str, str], ...] = ()  # the models that answered, as sorted (model, version) pairs
    reason: str | None = None


@dataclass
class Traffic:
    """GETs from `threads` threads at about `rate` a second in all, cycling through `paths`, until stopped or a bound is hit."""

    base: str
    paths: Sequence[str]
    threads: int = 2
    # Requests a second in all: a steady load that leaves the box's 2 cores some room. As fast as the
    # server answers would starve Redis and the test's own threads too, and time out reads that a
    # production box makes in a millisecond.
    rate: float = 100.0
    max_requests: int = 20_000
    max_seconds: float = 120.0
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.base.startswith("http://127.0.0.1:"), "load goes to loopback only"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._paths = itertools.cycle(self.paths)
        self._workers = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.threads)]

    def __enter__(self) -> "Traffic":
        self._started = time.monotonic()
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=REQUEST_TIMEOUT_S + 5)

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def _next(self) -> str | None:
        with self._lock:
            if self._stop.is_set() or len(self.answers) >= self.max_requests or self.elapsed() > self.max_seconds:
                return None
            return next(self._paths)

    def _loop(self) -> None:
        period = self.threads / self.rate
        due = time.monotonic()
        with httpx.Client(base_url=self.base, timeout=REQUEST_TIMEOUT_S) as http:
            while (path := self._next()) is not None:
                due += period
                at = self.elapsed()
                try:
                    response = http.get(path)
                except httpx.HTTPError:
                    answer = Answer(at, path, 0)
                else:
                    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
                    answer = Answer(at, path, response.status_code, bool(body.get("degraded", False)),
                                    tuple(sorted(body.get("versions", {}).items())), body.get("reason"))  # fmt: skip
                with self._lock:
                    self.answers.append(answer)
                time.sleep(max(0.0, due - time.monotonic()))

    def wait_for(self, condition: Callable[[Answer], bool], after: float, timeout_s: float) -> float | None:
        """Seconds from `after` (an `elapsed()` reading) to the first answer sent later that meets `condition`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                hit = next((a.at for a in self.answers if a.at >= after and condition(a)), None)
            if hit is not None:
                return hit - after
            time.sleep(0.05)
        return None

    def since(self, moment: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.at >= moment]

