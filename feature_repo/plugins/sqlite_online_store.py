"""Feast's SQLite online store with Redis's write rule: a row only replaces an older one.

Feast's SQLite store upserts unconditionally, so materializing an earlier range after a later one
would put older values back; its Redis store skips rows whose event time is not newer than what is
stored. Vitrine promises the same in both configurations (materializing twice, or an overlapping
range, changes nothing), so this subclass reads the stored event time of each entity first and
hands Feast's writer only the newer rows.

Selected in feature_store.yaml with `online_store: {type: feature_repo.plugins.sqlite_online_store.NewestWinsSqliteOnlineStore}`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Literal, Optional

from feast import FeatureView, RepoConfig
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig, _quote_id, _table_id
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.utils import to_naive_utc

# Entity keys per SELECT: below SQLite's default limit of 32,766 bound parameters.
KEYS_PER_QUERY = 10_000


class NewestWinsSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """As Feast's SQLite config; only the type differs."""

    type: Literal["feature_repo.plugins.sqlite_online_store.NewestWinsSqliteOnlineStore"] = "feature_repo.plugins.sqlite_online_store.NewestWinsSqliteOnlineStore"  # type: ignore[assignment]
    """Online store type selector."""


class NewestWinsSqliteOnlineStore(SqliteOnlineStore):
    """SQLite online store that never replaces a value with an older or equally old one."""

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, Optional[datetime]]],
        progress: Optional[Callable[[int], Any]],
    ) -> None:
        version = config.entity_key_serialization_version
        keys = [serialize_entity_key(row[0], entity_key_serialization_version=version) for row in data]
        stored = self._stored_event_times(config, table, keys)
        newest: dict[bytes, datetime] = {}
        keep = []
        for key, row in zip(keys, data):
            stamp = to_naive_utc(row[2])
            latest = max(filter(None, (stored.get(key), newest.get(key))), default=None)
            if latest is not None and stamp <= latest:
                continue
            newest[key] = stamp
            keep.append(row)
        if keep:
            super().online_write_batch(config, table, keep, progress)

    def _stored_event_times(self, config: RepoConfig, table: FeatureView, keys: list[bytes]) -> dict[bytes, datetime]:
        conn = self._get_conn(config)
        name = _quote_id(_table_id(config.project, table, config.registry.enable_online_feature_view_versioning))
        stored: dict[bytes, datetime] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), KEYS_PER_QUERY):
            chunk = unique[start : start + KEYS_PER_QUERY]
            marks = ", ".join("?" * len(chunk))
            rows = conn.execute(f"SELECT entity_key, MAX(event_ts) FROM {name} WHERE entity_key IN ({marks}) GROUP BY entity_key", chunk)
            for key, stamp in rows:
                if stamp is not None:
                    stored[bytes(key)] = _naive_utc(stamp)
        return stored


def _naive_utc(stamp: Any) -> datetime:
    """Feast stores event_ts as epoch seconds (newer versions) or ISO text (older ones)."""
    if isinstance(stamp, datetime):
        return to_naive_utc(stamp)
    text = str(stamp)
    try:
        return datetime.fromtimestamp(float(text), tz=timezone.utc).replace(tzinfo=None)
    except ValueError:
        return to_naive_utc(datetime.fromisoformat(text))
