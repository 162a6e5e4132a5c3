"""Fixtures: a built tiny shop shared per module, and a private Redis db."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from feature_repo.snapshots.build import build
from feature_repo.store import REDIS_ENV
from tests.shops import hand_made
from vitrine.paths import DataDir

# A Redis db no other test of Vitrine uses; flushed before and after each test that takes it.
TEST_REDIS_DB = 13
TEST_REDIS = f"127.0.0.1:6379,db={TEST_REDIS_DB}"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> DataDir:
    """A built shop shared by a module's read-only tests."""
    data = hand_made(DataDir.resolve(tmp_path_factory.mktemp("shop")))
    build(data)
    return data


@pytest.fixture
def redis_db(monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """Point $VITRINE_REDIS at the private test db, empty before and after."""
    monkeypatch.setenv(REDIS_ENV, TEST_REDIS)
    client = redis.Redis(host="127.0.0.1", port=6379, db=TEST_REDIS_DB)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
