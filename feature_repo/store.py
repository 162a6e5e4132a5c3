"""The feature store as the other stages see it: open, apply, materialize, point-in-time reads.

Everything goes through the real Feast repo in `feature_repo/` (stock `feast` CLI works there too);
this module only picks the configuration, checks inputs before Feast sees them and turns Feast's
failures into `vitrine.errors`:

    open_store(data, online)                -> feast.FeatureStore  (sqlite: embedded, redis: $VITRINE_REDIS)
    apply(data, online)                     feast apply of feature_repo/definitions.py
    materialize(data, start, end, online)   feast materialize (start None: materialize-incremental)
    historical_features(data, entity_df, service)   point-in-time training frame
    online_features(store, service, entity_rows)     the same columns, from the online store
    feature_columns(data, service, join_keys)        the feature column names those two return

Column names. Features keep their contract names (full_feature_names=False) except where two views
of one service share a name: `user_stats` and `item_stats` both have views_30d, clicks_30d,
carts_30d and purchases_30d, so in a service holding both those four come out as
`user_stats__views_30d` and `item_stats__views_30d` (Feast's full-name form). The rule depends on
the service only, never on the request, so a consumer's column list is stable.

Failure modes. A missing source file, an unreachable Redis or a missing registry raise
FeatureUnavailable; wrong entity ids, a missing event_timestamp or an empty time range raise
InvalidInput. All are checked before anything is written, so the online store keeps what it had.

A killed writer. Feast rewrites its registry file in place (truncate, then write), so a process
killed in that write (`kill -9` of a materialize or of the pipeline) leaves it empty or cut off.
An empty registry lists no views, and materializing "every view" would load none and succeed; a
cut one does not parse, and every later `feast` call would fail on it. So `apply` sets a registry
that does not parse aside (`registry.db.unreadable-<time>`, kept for a post-mortem) and writes it
afresh from definitions.py, and `materialize` applies first whenever the registry lacks a view
definitions.py declares. The watermarks of `materialize-incremental` are lost with such a
registry: the next incremental run starts as a first one does, and the online store, whose rows
only newer ones replace, ends as an uninterrupted run leaves it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from vitrine.errors import FeatureUnavailable, InvalidInput
from vitrine.options import ONLINE_STORES, OnlineKind
from vitrine.paths import DATA_DIR_ENV, DataDir, environment_restored
from vitrine.quiet import quiet_dependencies
from vitrine.shop.store import utc

if TYPE_CHECKING:  # feast is imported lazily so that `vitrine --help` stays fast
    import feast


# The Feast repository: this package (definitions.py and both yaml files ship in it, in a wheel too).
REPO_DIR = Path(__file__).resolve().parent
# One configuration file per online store; both keep registry and SQLite under the data dir.
CONFIG_FILES: dict[OnlineKind, str] = {"sqlite": "feature_store.yaml", "redis": "feature_store.redis.yaml"}
assert set(CONFIG_FILES) == set(ONLINE_STORES), "one configuration per online store"
# The registry each configuration writes (must match the yaml files).
REGISTRY_FILES: dict[OnlineKind, str] = {"sqlite": "registry.db", "redis": "registry_redis.db"}
# Environment variable holding Feast's Redis connection string (host:port[,db=N][,password=..]).
REDIS_ENV = "VITRINE_REDIS"
# This machine's Redis; Feast's own default would be localhost:6379.
DEFAULT_REDIS = "127.0.0.1:6379"
# How long to wait for Redis before calling it unreachable: a down Redis should fail fast, not hang a job.
REDIS_CONNECT_TIMEOUT_S = 2.0
# Consumer name -> the feature service version it reads now (feature_repo/definitions.py).
SERVICES: dict[str, str] = {"retriever": "retriever_v1", "ranker": "ranker_v1"}
# Join key of each entity.
JOIN_KEYS: dict[str, str] = {"user": "user_id", "item": "item_id"}
TIMESTAMP = "event_timestamp"
_ROW = "__vitrine_row"


def open_store(data: DataDir, online: OnlineKind = "sqlite") -> "feast.FeatureStore":
    """A Feast store over `data` with the chosen online store.

    Args:
        data: the data dir; the registry (and the SQLite online store) live in data/feast.
        online: "sqlite" (embedded default) or "redis" (connection string from $VITRINE_REDIS,
            default 127.0.0.1:6379).

    Example:
        >>> store = open_store(DataDir.resolve("data"), online="redis")
        >>> store.get_online_features(features=store.get_feature_service("ranker_v1"), entity_rows=[...])
    """
    from feast import FeatureStore

    quiet_dependencies()  # Feast's import just put its global "once" DeprecationWarning filter in front
    _check_online(online)
    data.feast.mkdir(parents=True, exist_ok=True)
    with _environment(data):
        return FeatureStore(repo_path=str(REPO_DIR), fs_yaml_file=REPO_DIR / CONFIG_FILES[online])


def _check_online(online: str) -> None:
    if online not in CONFIG_FILES:
        raise InvalidInput(f"online store {online!r}: expected one of {sorted(CONFIG_FILES)}")


@contextlib.contextmanager
def _environment(data: DataDir) -> Iterator[None]:
    """Set what the yaml files and definitions.py read, only while Feast reads them.

    Feast substitutes ${VAR} when it loads feature_store.yaml; after that the paths are fixed, so
    the variables are restored at once and the process keeps its own $VITRINE_DATA_DIR.
    """
    with environment_restored(DATA_DIR_ENV, REDIS_ENV):
        os.environ[DATA_DIR_ENV] = str(data.root)
        os.environ.setdefault(REDIS_ENV, DEFAULT_REDIS)
        yield


def definitions(data: DataDir) -> list[Any]:
    """The Feast objects of feature_repo/definitions.py, with sources under `data`.

    The file is executed afresh on every call (not imported once) because its source paths
    depend on $VITRINE_DATA_DIR, which differs between data dirs in one process.
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    spec = importlib.util.spec_from_file_location("vitrine_feature_repo_definitions", REPO_DIR / "definitions.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with _environment(data):
        spec.loader.exec_module(module)
    kinds = (Entity, DataSource, FeatureView, FeatureService)
    return [value for value in vars(module).values() if isinstance(value, kinds)]


def apply(data: DataDir, online: OnlineKind = "sqlite") -> None:
    """`feast apply` of feature_repo/definitions.py into this data dir's registry.

    Sources need not exist yet (their schemas are declared): apply works before the first
    `features build` and without embeddings; reading a view whose source is missing fails later
    with FeatureUnavailable naming the file.

    Raises:
        FeatureUnavailable: Redis unreachable (for online="redis"), or Feast rejects the definitions.
    """
    _set_aside_unreadable_registry(data, online)
    store = open_store(data, online)
    if online == "redis":
        _check_redis(store)
    try:
        store.apply(definitions(data))
    except Exception as exc:  # Feast raises many unrelated types; the message is what matters
        raise FeatureUnavailable(f"feast apply ({CONFIG_FILES[online]}) failed: {type(exc).__name__}: {exc}") from exc


def materialize(
    data: DataDir,
    start: datetime | None,
    end: datetime,
    online: OnlineKind = "sqlite",
    views: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Load the latest value per entity in [start, end) of each view into the online store.

    Idempotent: values are keyed by entity and view, and a rerun or an overlapping range writes
    the same latest rows again. `start=None` continues from where the last run ended
    (`feast materialize-incremental`), per view.

    Args:
        data: the data dir.
        start: beginning of the range (UTC), or None for incremental.
        end: end of the range (UTC).
        online: "sqlite" or "redis".
        views: feature views to load; default all four (item_embedding requires the embeddings file).

    Returns:
        {"online", "start", "end", "views": {view: seconds}, "seconds"}.

    Raises:
        InvalidInput: start >= end, or an unknown view.
        FeatureUnavailable: a source file is missing, Redis is unreachable, or Feast fails.
    """
    _check_online(online)
    end = _utc(end)
    start = _utc(start) if start is not None else None
    if start is not None and start >= end:
        raise InvalidInput(f"materialize: empty time range [{start.isoformat()}, {end.isoformat()})")
    if not _registry_complete(data, online):
        apply(data, online)
    store = open_store(data, online)
    known = {view.name for view in store.list_feature_views()}
    chosen = list(views) if views is not None else sorted(known)
    unknown = sorted(set(chosen) - known)
    if unknown:
        raise InvalidInput(f"materialize: unknown feature views {unknown}; known: {sorted(known)}")
    for name in chosen:
        _check_source(store, name)
    if online == "redis":
        _check_redis(store)

    stats: dict[str, Any] = {"online": online, "start": start.isoformat() if start else None, "end": end.isoformat(), "views": {}}
    began = time.perf_counter()
    for name in chosen:
        view_started = time.perf_counter()
        try:
            if start is None:
                store.materialize_incremental(end_date=end, feature_views=[name])
            else:
                store.materialize(start_date=start, end_date=end, feature_views=[name])
        except Exception as exc:
            raise FeatureUnavailable(f"materialize {name} into {online}: {type(exc).__name__}: {exc}") from exc
        stats["views"][name] = round(time.perf_counter() - view_started, 3)
    stats["seconds"] = round(time.perf_counter() - began, 3)
    return stats


def _registered_views(path: Path) -> set[str] | None:
    """Names of the feature views the registry file at `path` holds; None when it is absent or does not parse."""
    from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
    from google.protobuf.message import DecodeError

    proto = RegistryProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except (OSError, DecodeError):
        return None
    return {view.spec.name for view in proto.feature_views}


def _registry_complete(data: DataDir, online: OnlineKind) -> bool:
    """The registry parses and holds every feature view definitions.py declares (see "A killed writer")."""
    from feast import FeatureView

    registered = _registered_views(data.feast / REGISTRY_FILES[online])
    declared = {d.name for d in definitions(data) if isinstance(d, FeatureView)}
    return registered is not None and declared <= registered


def _set_aside_unreadable_registry(data: DataDir, online: OnlineKind) -> None:
    """Rename a registry file that does not parse (a writer killed in it), so that Feast writes a new one."""
    path = data.feast / REGISTRY_FILES[online]
    if path.exists() and _registered_views(path) is None:
        stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S")
        path.replace(path.with_name(f"{path.name}.unreadable-{stamp}"))


def historical_features(data: DataDir, entity_df: pd.DataFrame, service: str, online: OnlineKind = "sqlite") -> pd.DataFrame:
    """Point-in-time correct features of `service` for each row of `entity_df`.

    A row at time t gets, per view, the latest snapshot with event_timestamp <= t (and within the
    view's ttl); snapshots hold only events strictly before their timestamp, so nothing at or after
    t leaks in.

    Args:
        data: the data dir.
        entity_df: `event_timestamp` (UTC; naive values are taken as UTC) and `user_id` and/or
            `item_id` (strings); other columns are passed through. Only the service's views whose
            join key is present are joined.
        service: "retriever" or "ranker" (the current version), or a versioned name ("ranker_v1").
        online: which configuration's registry to use; the offline data is the same.

    Returns:
        entity_df's columns, in its row order, followed by `feature_columns(...)`.

    Raises:
        InvalidInput: missing/ill-typed columns, or no view of the service matches the join keys.
        FeatureUnavailable: a needed source file is missing or Feast fails.

    Example:
        >>> rows = pd.DataFrame({"user_id": ["U1"], "item_id": ["I7"], "event_timestamp": [pd.Timestamp("2026-02-01", tz="UTC")]})
        >>> historical_features(DataDir.resolve("data"), rows, "ranker").columns[:4].tolist()
        ['user_id', 'item_id', 'event_timestamp', 'events_1d']
    """
    _check_online(online)
    frame = _checked_entity_df(entity_df)
    if not _registry_complete(data, online):
        apply(data, online)
    store = open_store(data, online)
    refs, names = _service_features(store, service, [k for k in JOIN_KEYS.values() if k in frame.columns])
    for view in sorted({ref.split(":", 1)[0] for ref in refs}):
        _check_source(store, view)
    frame[_ROW] = range(len(frame))
    try:
        job = store.get_historical_features(entity_df=frame, features=refs, full_feature_names=True)
        result = job.to_df()
    except Exception as exc:
        raise FeatureUnavailable(f"get_historical_features({service!r}): {type(exc).__name__}: {exc}") from exc
    result = result.sort_values(_ROW).drop(columns=[_ROW]).reset_index(drop=True)
    return result.rename(columns=names)


def online_features(store: "feast.FeatureStore", service: str, entity_rows: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """The service's features from the online store, one row per entity row, named as offline.

    Args:
        store: from `open_store`.
        service: as in `historical_features`.
        entity_rows: join key -> ids, e.g. {"item_id": [...500 ids...], "user_id": ["U1"] * 500}.

    Raises:
        InvalidInput: ids that are not strings, or lists of different lengths.
        FeatureUnavailable: the online store cannot answer (e.g. Redis down).
    """
    keys = [k for k in JOIN_KEYS.values() if k in entity_rows]
    lengths = {len(entity_rows[k]) for k in keys}
    if len(lengths) > 1:
        raise InvalidInput(f"online_features: entity lists of different lengths {({k: len(entity_rows[k]) for k in keys})}")
    for key in keys:
        _check_ids(key, pd.Series(list(entity_rows[key]), dtype=object))
    refs, names = _service_features(store, service, keys)
    try:
        response = store.get_online_features(features=refs, entity_rows={k: list(entity_rows[k]) for k in keys}, full_feature_names=True)
        frame = response.to_df()
    except Exception as exc:
        raise FeatureUnavailable(f"get_online_features({service!r}): {type(exc).__name__}: {exc}") from exc
    ordered = keys + [ref.replace(":", "__") for ref in refs]
    return frame[ordered].rename(columns=names)


def feature_columns(data: DataDir, service: str, join_keys: Iterable[str] = ("user_id", "item_id")) -> list[str]:
    """The feature column names `historical_features` / `online_features` return for these join keys."""
    store = open_store(data)
    if not _registry_complete(data, "sqlite"):
        apply(data)
    refs, names = _service_features(store, service, list(join_keys))
    return [names[ref.replace(":", "__")] for ref in refs]


def service_name(service: str) -> str:
    """The versioned feature service for a consumer name ("ranker" -> "ranker_v1"); versioned names pass through."""
    return SERVICES.get(service, service)


def _service_features(store: "feast.FeatureStore", service: str, join_keys: list[str]) -> tuple[list[str], dict[str, str]]:
    """Feature references of the service's views keyed by `join_keys`, and full name -> output name."""
    name = service_name(service)
    try:
        fs = store.get_feature_service(name)
    except Exception as exc:
        raise InvalidInput(f"feature service {service!r}: not in the registry (known: {sorted(SERVICES)}); {exc}") from exc
    views = {view.name: view for view in store.list_feature_views()}
    all_features = [(p.name, f.name) for p in fs.feature_view_projections for f in p.features]
    counts = pd.Series([feature for _, feature in all_features]).value_counts()
    refs, names = [], {}
    for projection in fs.feature_view_projections:
        view = views[projection.name]
        if not set(view.join_keys) <= set(join_keys):
            continue
        for feature in projection.features:
            refs.append(f"{projection.name}:{feature.name}")
            full = f"{projection.name}__{feature.name}"
            names[full] = full if counts[feature.name] > 1 else feature.name
    if not refs:
        raise InvalidInput(f"feature service {name!r}: none of its views is keyed by {join_keys}; pass user_id and/or item_id")
    return refs, names


def _checked_entity_df(entity_df: pd.DataFrame) -> pd.DataFrame:
    if TIMESTAMP not in entity_df.columns:
        raise InvalidInput(f"entity_df: no {TIMESTAMP!r} column (columns: {list(entity_df.columns)})")
    frame = entity_df.copy()
    stamps = frame[TIMESTAMP]
    if not pd.api.types.is_datetime64_any_dtype(stamps):
        raise InvalidInput(f"entity_df.{TIMESTAMP}: expected datetimes, got {stamps.dtype}")
    frame[TIMESTAMP] = stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
    keys = [k for k in JOIN_KEYS.values() if k in frame.columns]
    if not keys:
        raise InvalidInput(f"entity_df: needs user_id and/or item_id (columns: {list(entity_df.columns)})")
    for key in keys:
        _check_ids(key, frame[key])
    return frame


def _check_ids(key: str, ids: pd.Series) -> None:
    """Entity ids are strings (the entities' join keys are String); anything else is a caller bug."""
    bad = ids[~ids.map(lambda value: isinstance(value, str))]
    if len(bad):
        position, value = bad.index[0], bad.iloc[0]
        shown = value.item() if hasattr(value, "item") else value
        raise InvalidInput(f"entity {key}: ids must be strings; row {position} has {shown!r} ({type(value).__name__})")


def _check_source(store: "feast.FeatureStore", view_name: str) -> None:
    """The view's offline source exists and is not empty, or FeatureUnavailable naming the file."""
    view = store.get_feature_view(view_name)
    path = Path(getattr(view.batch_source, "path", ""))
    if not path.exists() or (path.is_dir() and not any(path.glob("*.parquet"))):
        hint = "run `vitrine embed`" if view_name == "item_embedding" else "run `vitrine features build`"
        raise FeatureUnavailable(f"feature view {view_name}: source {path} does not exist; {hint}")


def _check_redis(store: "feast.FeatureStore") -> None:
    """Redis answers PING within REDIS_CONNECT_TIMEOUT_S, or FeatureUnavailable naming the address."""
    import redis
    from feast.infra.online_stores.redis import RedisOnlineStore

    connection = store.config.online_store.connection_string
    nodes, params = RedisOnlineStore._parse_connection_string(connection)
    params = {k: v for k, v in params.items() if k in {"db", "password", "username", "ssl"}}
    try:
        client = redis.Redis(
            host=nodes[0]["host"],
            port=int(nodes[0]["port"]),
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_CONNECT_TIMEOUT_S,
            **params,
        )
        client.ping()
        client.close()
    except (redis.RedisError, OSError, IndexError, KeyError, ValueError) as exc:
        raise FeatureUnavailable(f"Redis at {connection!r} ({REDIS_ENV}) is unreachable: {exc}") from exc


def _utc(moment: datetime) -> datetime:
    """`moment` as an aware UTC datetime (Feast's materialize takes datetimes, not pandas stamps)."""
    return utc(moment).to_pydatetime()


__all__ = [
    "SERVICES",
    "apply",
    "feature_columns",
    "historical_features",
    "materialize",
    "online_features",
    "open_store",
    "service_name",
]
