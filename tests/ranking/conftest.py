"""Fixtures of the serving tests: the session's served shop and a redis-server a test may stop and restart."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port, start_redis
from tests.shops import served_shop
from vitrine.paths import DataDir


@pytest.fixture(scope="session")
def served() -> DataDir:
    """Shop, features in Feast, retriever and ranker `@champion` (`tests.shops.served_shop`): read-only."""
    return served_shop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server on a free port that the test can stop and start again; its port."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: `.ci/run` needs it on the PATH")
    port = free_port()
    start_redis(port, tmp_path)
    yield port
    subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=10)
