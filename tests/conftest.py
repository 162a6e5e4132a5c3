"""Fixtures shared by every stage's tests: a fresh data dir, the real Redis, the real Amazon sample."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from vitrine.paths import DataDir

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# Tests use their own Redis database so that they never touch a developer's DB 0.
REDIS_TEST_DB = 15
# The small real shop every stage must run on: a committed slice of Amazon Reviews 2018, Gift Cards
# 5-core (tests/data/make_giftcards_sample.py), so that a clone without ../shared passes.
AMAZON_SAMPLE = Path(__file__).resolve().parent / "data" / "amazon-giftcards-sample"


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


@pytest.fixture(scope="session")
def amazon_sample() -> Path:
    """The dir with Gift_Cards_5.json, meta_Gift_Cards.json and images/ (read-only)."""
    if not (AMAZON_SAMPLE / "Gift_Cards_5.json").is_file():
        pytest.fail(f"the Amazon sample is missing at {AMAZON_SAMPLE}")
    return AMAZON_SAMPLE


@pytest.fixture(scope="session")
def amazon_shop(amazon_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> DataDir:
    """A data dir holding the imported Amazon sample, shared by the session: copy it before changing it."""
    from vitrine.shop.amazon import import_amazon_reviews

    data = DataDir.resolve(tmp_path_factory.mktemp("amazon") / "data")
    import_amazon_reviews(
        data, amazon_sample / "Gift_Cards_5.json", amazon_sample / "meta_Gift_Cards.json", amazon_sample / "images"
    )
    return data


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
