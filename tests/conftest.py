"""Fixtures shared by every stage's tests: a fresh data dir, the real Redis, the CLI run in-process.

Each stage's folder has a conftest.py of its own for what only its tests use; every shop comes from
`tests/shops.py`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from vitrine.paths import DataDir

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# Tests use their own Redis database so that they never touch a developer's DB 0.
REDIS_TEST_DB = 15


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    """An empty data dir of its own for each test."""
    return DataDir.resolve(tmp_path / "data")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis at 127.0.0.1:6379 (test DB); fails the test loudly when it does not answer."""
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            answer = conn.recv(16)
    except OSError as exc:
        pytest.fail(f"Redis at {REDIS_HOST}:{REDIS_PORT} does not answer ({exc}); `.ci/run` starts it")
    if not answer.startswith(b"+PONG"):
        pytest.fail(f"{REDIS_HOST}:{REDIS_PORT} answered {answer!r}, not Redis")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_TEST_DB}"


# `vitrine <args>` run in-process: (exit code, stdout, stderr).
CliRunner = Callable[..., tuple[int, str, str]]


@pytest.fixture
def vitrine_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """Run `vitrine <args>` through `vitrine.cli.main`, which maps errors to exit codes."""
    import sys

    from vitrine import cli

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["vitrine", *args])
        code = 0
        try:
            cli.main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
