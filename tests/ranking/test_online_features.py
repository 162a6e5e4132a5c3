"""The online feature readers against real Feast stores (SQLite and Redis) and a Redis we stop ourselves."""

from __future__ import annotations

import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from ranking.online_features import (
    REDIS_CONNECT_TIMEOUT_S,
    REDIS_RETRY_AFTER_S,
    REDIS_SOCKET_TIMEOUT_S,
    RedisOnlineReader,
    SdkOnlineReader,
    open_reader,
)
from tests.servers import start_redis
from vitrine.errors import FeatureUnavailable

NOW = datetime.now(timezone.utc).replace(microsecond=0)
VIEWS = ("user_stats", "user_recent_items")


def build_store(root: Path, online: dict[str, str]):
    """A tiny Feast repo declared in code: a user entity and two views with different ttls."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig
    from feast.types import Array, Float32, Int64, String
    from feast.value_type import ValueType

    root.mkdir(parents=True, exist_ok=True)
    stats = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u4"],
            "events_30d": [5, 0, 7, 3],
            "avg_price_paid": [12.5, None, 3.25, 8.0],
            "top_category": ["toys", None, "books", "garden"],
            "affinity_categories": [["toys", "books"], [], ["books"], ["garden"]],
            # u3's row is older than the view's 2-day ttl: it must read as missing.
            "event_timestamp": [NOW - timedelta(hours=5), NOW - timedelta(hours=5), NOW - timedelta(days=3), NOW - timedelta(hours=1)],
        }
    )
    recent = pd.DataFrame(
        {
            "user_id": ["u1", "u4"],
            "recent_item_ids": [["i3", "i1"], ["i9"]],
            "event_timestamp": [NOW - timedelta(hours=2), NOW - timedelta(days=40)],  # u4's is stale (ttl 30 d)
        }
    )
    stats.to_parquet(root / "user_stats.parquet")
    recent.to_parquet(root / "user_recent_items.parquet")
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    views = [
        FeatureView(
            name="user_stats",
            entities=[user],
            ttl=timedelta(days=2),
            schema=[
                Field(name="events_30d", dtype=Int64),
                Field(name="avg_price_paid", dtype=Float32),
                Field(name="top_category", dtype=String),
                Field(name="affinity_categories", dtype=Array(String)),
            ],
            source=FileSource(path=str(root / "user_stats.parquet"), timestamp_field="event_timestamp"),
        ),
        FeatureView(
            name="user_recent_items",
            entities=[user],
            ttl=timedelta(days=30),
            schema=[Field(name="recent_item_ids", dtype=Array(String))],
            source=FileSource(path=str(root / "user_recent_items.parquet"), timestamp_field="event_timestamp"),
        ),
    ]
    config = RepoConfig(
        project=f"t{uuid.uuid4().hex[:10]}",
        registry=str(root / "registry.db"),
        provider="local",
        online_store=online,
        entity_key_serialization_version=3,
    )
    store = FeatureStore(config=config, repo_path=str(root))
    store.apply([user, *views])
    store.materialize(NOW - timedelta(days=60), NOW + timedelta(seconds=1))
    return store


def delete_project_keys(store) -> None:
    import redis

    host, port_db = store.config.online_store.connection_string.split(":")
    port, _, db = port_db.partition(",db=")
    client = redis.Redis(host=host, port=int(port), db=int(db or 0))
    suffix = store.project.encode()
    for key in client.scan_iter(count=1000):
        if key.endswith(suffix):
            client.delete(key)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("feast_sqlite")
    return build_store(root, {"type": "sqlite", "path": str(root / "online.db")})


@pytest.fixture(scope="module")
def redis_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("feast_redis")
    store = build_store(root, {"type": "redis", "connection_string": "127.0.0.1:6379,db=11"})
    yield store
    delete_project_keys(store)


def test_sdk_reader_returns_feast_values_and_drops_stale_views(sqlite_store) -> None:
    reader = open_reader(sqlite_store, "user_id", VIEWS)
    assert isinstance(reader, SdkOnlineReader)
    u1, u2, u3, u4, unknown = reader.read(["u1", "u2", "u3", "u4", "nobody"])
    assert u1 == {
        "events_30d": 5,
        "avg_price_paid": 12.5,
        "top_category": "toys",
        "affinity_categories": ["toys", "books"],
        "recent_item_ids": ["i3", "i1"],
    }
    assert u2 is not None and u2["avg_price_paid"] is None and u2["recent_item_ids"] is None
    assert u3 is None  # its only row is older than user_stats' ttl: treated as unknown, not as 7 events
    assert u4 is not None and u4["events_30d"] == 3 and u4["recent_item_ids"] is None  # stale view only
    assert unknown is None


def test_redis_reader_equals_feast_get_online_features(redis_store) -> None:
    reader = open_reader(redis_store, "user_id", VIEWS)
    assert isinstance(reader, RedisOnlineReader)
    ids = ["u1", "u2", "u4", "nobody"]
    ours = reader.read(ids, now=NOW)
    refs = [f"{view}:{name}" for view, names in (("user_stats", ("events_30d", "avg_price_paid", "top_category", "affinity_categories")), ("user_recent_items", ("recent_item_ids",))) for name in names]
    feast_rows = redis_store.get_online_features(features=refs, entity_rows=[{"user_id": i} for i in ids]).to_dict()
    for n, row in enumerate(ours[:2]):
        assert row is not None
        for name, value in row.items():
            assert value == feast_rows[name][n], (ids[n], name)
    # u4: the SDK still returns the stale recent items (Feast does not check ttl online); we drop them.
    assert feast_rows["recent_item_ids"][2] == ["i9"]
    assert ours[2] is not None and ours[2]["recent_item_ids"] is None and ours[2]["events_30d"] == 3
    assert ours[3] is None
    # The SQLite SDK path and the Redis path agree on every fresh value.
    assert SdkOnlineReader(redis_store, "user_id", reader.views).read(ids, now=NOW) == ours


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_read_of_some_views_is_the_full_read_of_their_features(kind: str, sqlite_store, redis_store) -> None:
    store = sqlite_store if kind == "sqlite" else redis_store
    reader = open_reader(store, "user_id", VIEWS)
    ids = ["u1", "u2", "u3", "u4", "nobody"]
    full = reader.read(ids, now=NOW)
    recent = reader.read(ids, now=NOW, views=["user_recent_items"])
    # u1 has fresh recent items; u4's are stale and u2 has none, so without user_stats they are unknown.
    assert recent == [{"recent_item_ids": ["i3", "i1"]}, None, None, None, None]
    stats = reader.read(ids, now=NOW, views=("user_stats",))
    for whole, part in zip(full, stats):
        assert part == (None if whole is None else {name: whole[name] for name in part or ()})
    assert [sorted(row) if row else None for row in stats][0] == sorted(("events_30d", "avg_price_paid", "top_category", "affinity_categories"))
    with pytest.raises(FeatureUnavailable, match="user_sequence"):
        reader.read(ids, views=["user_sequence"])


def test_timeouts_are_finite_and_short() -> None:
    assert 0 < REDIS_SOCKET_TIMEOUT_S <= 0.1
    assert 0 < REDIS_CONNECT_TIMEOUT_S <= 0.5


def test_redis_down_fails_fast_and_reconnects_without_restart(private_redis, tmp_path) -> None:
    store = build_store(tmp_path / "repo", {"type": "redis", "connection_string": f"127.0.0.1:{private_redis}"})
    reader = open_reader(store, "user_id", VIEWS)
    assert reader.read(["u1"])[0] is not None
    # A stalled Redis (busy for half a second): the read gives up after the socket timeout.
    stall = subprocess.Popen(["redis-cli", "-p", str(private_redis), "DEBUG", "SLEEP", "0.5"], stdout=subprocess.DEVNULL)
    time.sleep(0.1)
    started = time.perf_counter()
    with pytest.raises(FeatureUnavailable):
        reader.read(["u1"])
    assert time.perf_counter() - started < REDIS_SOCKET_TIMEOUT_S + 0.25
    stall.wait(timeout=10)
    time.sleep(REDIS_RETRY_AFTER_S + 0.1)
    assert reader.read(["u1"])[0] is not None
    subprocess.run(["redis-cli", "-p", str(private_redis), "shutdown", "nosave"], capture_output=True, timeout=10)
    started = time.perf_counter()
    with pytest.raises(FeatureUnavailable):
        reader.read(["u1"])
    with pytest.raises(FeatureUnavailable):  # the breaker answers at once while Redis is down
        reader.read(["u1"])
    assert time.perf_counter() - started < 1.0
    start_redis(private_redis, tmp_path)
    store.materialize(NOW - timedelta(days=60), NOW + timedelta(seconds=1))
    time.sleep(REDIS_RETRY_AFTER_S + 0.1)
    row = reader.read(["u1"])[0]  # the same reader object, no restart
    assert row is not None and row["events_30d"] == 5


def test_redis_error_replies_are_feature_unavailable(redis_store) -> None:
    """A key of the wrong type makes Redis answer WRONGTYPE: the reader says FeatureUnavailable, never crashes."""
    import redis
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    entity = EntityKey(join_keys=["user_id"], entity_values=[Value(string_val="u-wrongtype")])
    key = serialize_entity_key(entity, entity_key_serialization_version=3) + redis_store.project.encode()
    client = redis.Redis(host="127.0.0.1", port=6379, db=11)
    client.set(key, b"not a hash")
    try:
        reader = open_reader(redis_store, "user_id", VIEWS)
        with pytest.raises(FeatureUnavailable, match="WRONGTYPE"):
            reader.read(["u1", "u-wrongtype"])
        assert reader.read(["u1"])[0] is not None  # no breaker: the server itself is fine
    finally:
        client.delete(key)
