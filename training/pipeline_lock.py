"""One pipeline run per data dir at a time: an exclusive lock on `data/pipeline/.lock`.

Two runs over one data dir would both ingest, both train and both move `@champion`, each resuming
the other's state file; so `run_pipeline` holds this lock for its whole run. It is an `flock` on
an open file: the kernel drops it when the holder's process ends, however it ends (`kill -9`,
OOM, power loss on a local disk), so a dead run never leaves a stale lock behind. The file itself
stays; its content names the holder (pid, host, start time, command) for the refusal message and
for an operator, and is only a note: holding the flock is what counts.

A second run refuses at once with `PipelineBusy` (exit code 6), or waits up to `wait_s` seconds
for the holder to finish (`vitrine pipeline run --wait 3600`).

Example:
    >>> with pipeline_lock(DataDir.resolve("data")):   # doctest: +SKIP
    ...     ...                                         # nothing else runs the pipeline on data/ here
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from vitrine.errors import Busy, StorageUnavailable
from vitrine.paths import DataDir

# The lock file under `data/pipeline/` (a dot file: `RunState.latest_unfinished` globs *.json).
LOCK_FILE = ".lock"
# How often a waiting run tries the lock again: a pipeline run takes minutes, a second is plenty.
WAIT_POLL_S = 1.0


class PipelineBusy(Busy):
    """Another pipeline run holds the data dir's lock (exit 6). The message names its pid and start time."""


def lock_path(data: DataDir) -> Path:
    return data.pipeline / LOCK_FILE


@contextlib.contextmanager
def pipeline_lock(data: DataDir, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold the data dir's pipeline lock for the block; yields the lock file.

    Args:
        data: the data dir whose pipeline runs are serialized.
        wait_s: how long to wait for a running holder to finish; 0 refuses at once.

    Raises:
        PipelineBusy: the lock is still held after `wait_s` seconds.
        StorageUnavailable: the lock file cannot be created (a read-only or full data dir).
    """
    path = lock_path(data)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_RDWR without O_TRUNC: opening must not wipe the holder's note before we own the lock.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageUnavailable(f"{path}: cannot open the pipeline lock ({exc.strerror or exc})") from exc
    try:
        _acquire(fd, path, data, wait_s)
        with contextlib.suppress(OSError):  # the note only informs; a full disk must not stop the run here
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder_note().encode(), 0)
            os.fsync(fd)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _acquire(fd: int, path: Path, data: DataDir, wait_s: float) -> None:
    deadline = time.monotonic() + max(wait_s, 0.0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                waited = f" after waiting {wait_s:g}s" if wait_s > 0 else ""
                raise PipelineBusy(
                    f"another pipeline run holds {data.root}{waited} ({holder(path)}); "
                    f"wait for it to finish (or pass --wait SECONDS); the lock is {path}"
                ) from None
            time.sleep(min(WAIT_POLL_S, max(deadline - time.monotonic(), 0.0)))


def _holder_note() -> str:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
    return f"pid={os.getpid()}\nhost={socket.gethostname()}\nstarted={started}\ncommand={command}\n"


def holder(path: Path) -> str:
    """The holder's note as one line ("pid 123 on host, started 2026-...: vitrine pipeline run"), or why there is none."""
    try:
        fields = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    except OSError:
        return "holder unknown"
    if "pid" not in fields:
        return "holder unknown: it has not written its note yet"
    return f"pid {fields['pid']} on {fields.get('host', '?')}, started {fields.get('started', '?')}: {fields.get('command', '?')}"
