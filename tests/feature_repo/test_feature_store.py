"""The feature store end to end on a tiny shop: point-in-time joins, online/offline skew, idempotent
materialization, TTLs, and bad input, in both configurations (embedded SQLite and a real Redis)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from feature_repo import store as fs
from feature_repo.snapshots.build import build
from tests.shops import HAND_MADE_DAYS as DAYS
from tests.shops import HAND_MADE_START as START
from tests.shops import hand_made
from vitrine.errors import FeatureUnavailable, InvalidInput
from vitrine.paths import DataDir

END = START + pd.Timedelta(days=DAYS + 1)
# Feast's first materialize-incremental window: the last ttl before `end`; offline joins see the same.
WINDOW_START = END - pd.Timedelta(days=30)
USERS = [f"U{u:03d}" for u in range(40)]
ITEMS = [f"I{i:03d}" for i in range(30)]
STATS_VIEWS = ["item_stats", "user_stats", "user_recent_items"]


def write_embeddings(data: DataDir, items: list[str] = ITEMS, dim: int = 8) -> None:
    rng = np.random.default_rng(0)
    data.embeddings.mkdir(parents=True, exist_ok=True)
    vectors = rng.standard_normal((len(items), dim)).astype(np.float32)
    pq.write_table(
        pa.table(
            {
                "item_id": items,
                "embedding": pa.array(list(vectors), type=pa.list_(pa.float32())),
                "has_image": [i % 3 != 0 for i in range(len(items))],
                "model_version": ["test-1"] * len(items),
                "event_timestamp": pa.array([START.value] * len(items), type=pa.timestamp("ns", tz="UTC")),
            }
        ),
        data.item_embeddings,
    )


def normalise(value: object) -> object:
    """One comparable form for offline (numpy/pandas) and online (Python) values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [normalise(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(np.float32(value)), 5)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return value


def frame_values(frame: pd.DataFrame, columns: list[str]) -> list[list[object]]:
    return [[normalise(v) for v in frame[c].tolist()] for c in columns]


@pytest.fixture(scope="module")
def shop_with_vectors(shop: DataDir) -> DataDir:
    write_embeddings(shop)
    return shop


def test_a_future_event_never_leaks_into_features(tmp_path) -> None:
    t = START + pd.Timedelta(days=20)
    planted = pd.DataFrame(
        {
            "user_id": "U001",
            "item_id": "I002",
            "event_type": ["purchase"] * 6,
            # At t exactly, later that day, and on later days.
            "timestamp": [t, t, t + pd.Timedelta(hours=5), t + pd.Timedelta(days=1), t + pd.Timedelta(days=3), t + pd.Timedelta(days=9)],
            "price": 500.0,
        }
    )
    clean = hand_made(DataDir.resolve(tmp_path / "clean"))
    dirty = hand_made(DataDir.resolve(tmp_path / "dirty"), extra_events=planted)
    for data in (clean, dirty):
        build(data)
        write_embeddings(data)
    rows = pd.DataFrame(
        {"user_id": ["U001", "U001", "U003"], "item_id": ["I002", "I005", "I002"], "event_timestamp": [t, t + pd.Timedelta(hours=1), t]}
    )
    for service in ("ranker", "retriever"):
        before = fs.historical_features(clean, rows, service)
        after = fs.historical_features(dirty, rows, service)
        assert list(before.columns) == list(after.columns)
        assert frame_values(before, list(before.columns)) == frame_values(after, list(after.columns)), service
    # The planted purchases are visible two days later: the comparison above can see a leak.
    later = rows.assign(event_timestamp=t + pd.Timedelta(days=2))
    seen = fs.historical_features(dirty, later, "ranker")
    assert seen.loc[0, "user_stats__purchases_30d"] > fs.historical_features(clean, later, "ranker").loc[0, "user_stats__purchases_30d"]
    assert seen.loc[0, "max_price_paid"] == pytest.approx(500.0)


def test_historical_keeps_rows_and_names_columns(shop_with_vectors: DataDir) -> None:
    rows = pd.DataFrame(
        {
            "item_id": ["I003", "I001", "NOPE"],
            "label": [1, 0, 1],
            "event_timestamp": pd.to_datetime(["2026-01-25", "2026-01-10", "2026-01-25"]),  # naive: taken as UTC
        }
    )
    frame = fs.historical_features(shop_with_vectors, rows, "retriever")
    assert frame["item_id"].tolist() == ["I003", "I001", "NOPE"] and frame["label"].tolist() == [1, 0, 1]
    # Only item views join without a user_id; names shared with user_stats keep their view prefix
    # whatever the request, so a consumer's column list depends on the service only.
    assert {"item_stats__views_30d", "ctr_7d", "embedding", "has_image", "category"} <= set(frame.columns)
    assert "events_1d" not in frame.columns
    assert len(frame.loc[0, "embedding"]) == 8 and pd.isna(frame.loc[2, "item_stats__views_30d"])
    both = fs.feature_columns(shop_with_vectors, "ranker")
    assert "user_stats__views_30d" in both and "item_stats__views_30d" in both and "ctr_30d" in both


@pytest.mark.parametrize("online", ["sqlite", "redis"])
def test_online_equals_offline_and_materialize_is_idempotent(shop_with_vectors: DataDir, online: str, redis_db: redis.Redis) -> None:
    data = shop_with_vectors
    fs.apply(data, online)  # type: ignore[arg-type]
    # Vectors never expire (ttl 0): load them from the start, as materialize-incremental would (1 year).
    fs.materialize(data, START - pd.Timedelta(days=1), END, online, views=["item_embedding"])  # type: ignore[arg-type]
    fs.materialize(data, WINDOW_START, END, online, views=STATS_VIEWS)  # type: ignore[arg-type]
    store = fs.open_store(data, online)  # type: ignore[arg-type]
    entity = {"user_id": USERS[:30], "item_id": ITEMS}
    online_frame = fs.online_features(store, "retriever", entity)
    offline_frame = fs.historical_features(data, pd.DataFrame({**entity, "event_timestamp": END}), "retriever")
    columns = [c for c in online_frame.columns]
    assert frame_values(online_frame, columns) == frame_values(offline_frame, columns)
    assert online_frame["events_30d"].notna().sum() > 10  # the comparison compares real values

    fs.materialize(data, WINDOW_START, END, online, views=STATS_VIEWS)  # type: ignore[arg-type]
    fs.materialize(data, START - pd.Timedelta(days=3), END - pd.Timedelta(days=12), online)  # type: ignore[arg-type]
    again = fs.online_features(fs.open_store(data, online), "retriever", entity)  # type: ignore[arg-type]
    assert frame_values(again, columns) == frame_values(online_frame, columns)


def test_ttls_are_declared_and_redis_keys_never_expire(shop_with_vectors: DataDir, redis_db: redis.Redis) -> None:
    data = shop_with_vectors
    fs.apply(data, "redis")
    store = fs.open_store(data, "redis")
    ttls = {v.name: v.ttl for v in store.list_feature_views()}
    assert ttls == {
        "item_stats": pd.Timedelta(days=30),
        "user_stats": pd.Timedelta(days=30),
        "user_recent_items": pd.Timedelta(days=30),
        "user_sequence": pd.Timedelta(0),
        "item_covisitation": pd.Timedelta(days=30),
        "item_embedding": pd.Timedelta(0),
    }
    # No expiry: a user's sequence never goes stale (ttl 0), and all of a user's views share one key.
    assert store.config.online_store.key_ttl_seconds is None
    fs.materialize(data, WINDOW_START, END, "redis", views=["user_stats", "item_stats"])
    keys = list(redis_db.scan_iter(count=1000))
    assert any(b"user_id" in k for k in keys) and any(b"item_id" in k for k in keys)
    for key in keys:
        assert redis_db.ttl(key) == -1


def _redis_snapshot(client: redis.Redis) -> dict[bytes, dict[bytes, bytes]]:
    return {key: client.hgetall(key) for key in client.scan_iter(count=1000)}


def test_bad_input_fails_clearly_and_keeps_the_online_store(shop_with_vectors: DataDir, redis_db: redis.Redis, monkeypatch) -> None:
    data = shop_with_vectors
    fs.apply(data, "redis")
    fs.materialize(data, WINDOW_START, END, "redis")
    before = _redis_snapshot(redis_db)
    assert before

    with pytest.raises(InvalidInput, match="empty time range"):
        fs.materialize(data, END, END, "redis")

    source = data.features / "user_recent_items"
    moved = source.with_name("user_recent_items.away")
    source.rename(moved)
    try:
        with pytest.raises(FeatureUnavailable, match="user_recent_items.*does not exist"):
            fs.materialize(data, WINDOW_START, END, "redis")
        with pytest.raises(FeatureUnavailable, match="user_recent_items"):
            fs.historical_features(data, pd.DataFrame({"user_id": ["U001"], "event_timestamp": [END]}), "retriever")
    finally:
        moved.rename(source)

    with pytest.raises(InvalidInput, match="user_id.*strings.*row 0 has 7"):
        fs.historical_features(data, pd.DataFrame({"user_id": [7], "event_timestamp": [END]}), "ranker")
    with pytest.raises(InvalidInput, match="item_id.*strings"):
        fs.online_features(fs.open_store(data, "redis"), "ranker", {"item_id": [12]})
    with pytest.raises(InvalidInput, match="event_timestamp"):
        fs.historical_features(data, pd.DataFrame({"user_id": ["U001"]}), "ranker")

    monkeypatch.setenv(fs.REDIS_ENV, "127.0.0.1:6390")
    with pytest.raises(FeatureUnavailable, match="6390.*unreachable"):
        fs.materialize(data, WINDOW_START, END, "redis")
    monkeypatch.setenv(fs.REDIS_ENV, "127.0.0.1:6379,db=13")
    assert _redis_snapshot(redis_db) == before


def test_missing_embeddings_keep_apply_working_and_name_the_file(tmp_path) -> None:
    data = hand_made(DataDir.resolve(tmp_path))
    build(data)
    fs.apply(data)
    stats = fs.materialize(data, WINDOW_START, END, views=["user_stats", "item_stats", "user_recent_items"])
    assert set(stats["views"]) == {"user_stats", "item_stats", "user_recent_items"}
    with pytest.raises(FeatureUnavailable, match="item_embeddings.parquet does not exist; run `vitrine embed`"):
        fs.materialize(data, WINDOW_START, END)
    assert fs.historical_features(data, pd.DataFrame({"user_id": ["U001"], "item_id": ["I001"], "event_timestamp": [END]}), "ranker").shape[0] == 1
