"""Entity features read from the Feast online store, with bounded time and max-age checks.

Two readers behind one contract (`OnlineFeatureReader`):

- `SdkOnlineReader` calls Feast's own `FeatureStore.get_online_features` (the default SQLite online
  store: about 0.4 ms for one entity; the SDK is the reference for what the values are).
- `RedisOnlineReader` reads Feast's Redis layout directly, in ONE pipelined HMGET per call: Feast keeps
  every feature view of an entity in one Redis hash whose key is the serialized entity key plus the project
  name and whose fields are murmur3 hashes of `view:feature` plus a `_ts:view` timestamp field. The key and
  field encodings and the value decoding are Feast's own functions, so the result equals
  `get_online_features` (tests/ranking/test_online_features.py proves it). Going direct buys what the SDK
  does not give: finite socket timeouts, a circuit breaker while Redis is down, and reconnects without a
  restart.

Both apply each view's `ttl` as a maximum age: Feast writes it into the view but does not check it on
online reads, so a user whose features stopped being materialized would otherwise be scored on stale
values. A stale view reads as missing; an entity with no fresh view at all reads as `None` (unknown).

Age is measured at a moment: the wall clock by default, or an explicit `as_of` (`--as-of`,
`VITRINE_AS_OF`) that replays a past day: `read(ids, now=as_of)`. `Freshness` holds
each served view's materialization watermark, so that serving can say, without reading the store,
that a whole view is older than its ttl (everyone would silently get the cold-start list).

Example:
    >>> reader = open_reader(store, "user_id", ("user_stats", "user_recent_items"), online="redis")
    >>> reader.read(["U000001"])[0]["events_30d"]
    12
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

from vitrine.as_of import AS_OF_ENV
from vitrine.errors import FeatureUnavailable
from vitrine.options import OnlineKind

if TYPE_CHECKING:
    from feast import FeatureStore

# A loopback HMGET for one user takes ~0.2 ms. 50 ms is 100x that, so a GC pause or CPU contention on
# either side does not flip healthy requests to degraded (20 ms did, on a loaded 2-core box), while a
# stalled Redis costs one request at most 50 ms: the breaker answers the following ones at once.
REDIS_SOCKET_TIMEOUT_S = 0.05
# A fresh TCP connect to a live Redis on the LAN is < 1 ms; 50 ms bounds the wait on a dead host (SYN
# dropped) without mistaking a briefly busy server for a dead one.
REDIS_CONNECT_TIMEOUT_S = 0.05
# After a failure, requests skip Redis for this long instead of each paying the timeout again; one second
# is short enough that recovery is noticed almost at once and long enough to shed load while Redis is down.
REDIS_RETRY_AFTER_S = 1.0
# Bulk reads (the item table, batch recommendations) are split into pipelines of this many entities so
# that one reply stays a few MB and one slow chunk does not hold the whole refresh hostage.
BULK_CHUNK = 2_000
# A bulk read may legitimately take longer per command than a single user read (big replies).
REDIS_BULK_SOCKET_TIMEOUT_S = 2.0
# What a person can do about stale features; ends every staleness message.
STALE_HINT = f"run `vitrine features materialize`, or pass --as-of ({AS_OF_ENV}) to replay the day the features are from"
DAY_S = 86_400.0


def judging_moment(now: datetime | None = None) -> datetime:
    """`now` if given, else the wall clock (UTC)."""
    return now or datetime.now(timezone.utc)


@dataclass(frozen=True)
class StaleView:
    """A served view whose newest materialized values are older than its ttl at the judging moment."""

    view: str
    materialized_to: datetime | None  # end of its latest materialization; None: never materialized
    age_s: float | None  # judging moment minus `materialized_to`; None: never materialized
    ttl_s: float  # the view's maximum age

    def to_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "materialized_to": self.materialized_to.isoformat() if self.materialized_to else None,
            "age_s": None if self.age_s is None else round(self.age_s, 3),
            "ttl_s": self.ttl_s,
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> "StaleView":
        """The inverse of `to_dict` (batch shards report their stale views as dicts)."""
        end = body["materialized_to"]
        return cls(body["view"], None if end is None else datetime.fromisoformat(end), body["age_s"], float(body["ttl_s"]))


@dataclass(frozen=True)
class ViewWatermark:
    """How far one served view has been materialized, and how old its values may get."""

    view: str
    materialized_to: datetime | None  # end of the latest materialization (aware); None: never materialized
    ttl_s: float  # the view's maximum age in seconds; 0: its values never go stale


@dataclass(frozen=True)
class Freshness:
    """The served views' materialization watermarks: whether a moment finds any view entirely stale.

    A view's values are at most as new as its watermark, so once the judging moment is more than a
    ttl past it, every entity reads as missing in that view. Judging costs a comparison per view
    and no store read; the watermarks themselves are read from the registry by whoever polls it
    (`ranking.model_watcher`), or once at load.

    Example:
        >>> freshness.stale(datetime.now(timezone.utc))
        (StaleView(view='user_stats', materialized_to=..., age_s=23328000.0, ttl_s=2592000.0),)
    """

    watermarks: tuple[ViewWatermark, ...] = ()
    # Epoch seconds up to which no view is stale: the fast path of `stale`.
    _fresh_until_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        limits = [
            -math.inf if w.materialized_to is None else w.materialized_to.timestamp() + w.ttl_s
            for w in self.watermarks
            if w.materialized_to is None or w.ttl_s > 0
        ]
        object.__setattr__(self, "_fresh_until_s", min(limits, default=math.inf))

    def ages(self, now: datetime) -> dict[str, float]:
        """Seconds from each view's watermark to `now` (inf for a view never materialized)."""
        now_s = now.timestamp()
        return {w.view: math.inf if w.materialized_to is None else now_s - w.materialized_to.timestamp() for w in self.watermarks}

    def stale(self, now: datetime) -> tuple[StaleView, ...]:
        """The views that are never materialized or whose watermark is more than their ttl before `now`."""
        now_s = now.timestamp()
        if now_s <= self._fresh_until_s:
            return ()
        out = []
        for w in self.watermarks:
            if w.materialized_to is None:
                out.append(StaleView(w.view, None, None, w.ttl_s))
                continue
            age = now_s - w.materialized_to.timestamp()
            if w.ttl_s > 0 and age > w.ttl_s:
                out.append(StaleView(w.view, w.materialized_to, age, w.ttl_s))
        return tuple(out)

    def ahead_of(self, now: datetime) -> tuple[str, ...]:
        """Views that age (ttl > 0) materialized past `now`: replaying `now`, their values may hold later events."""
        return tuple(w.view for w in self.watermarks if w.ttl_s > 0 and w.materialized_to is not None and w.materialized_to > now)


def stale_reason(stale: Sequence[StaleView]) -> str | None:
    """The one sentence that names stale views and says what to do; None when there are none.

    Views with the same watermark and ttl (usually all of them: one materialization) share a clause.
    """
    if not stale:
        return None
    groups: dict[tuple[datetime | None, float | None, float], list[StaleView]] = {}
    for view in stale:
        groups.setdefault((view.materialized_to, view.age_s, view.ttl_s), []).append(view)
    clauses = [_describe([view.view for view in group], group[0]) for group in groups.values()]
    return "stale features: " + "; ".join(clauses) + f"; {STALE_HINT}"


def _describe(names: Sequence[str], view: StaleView) -> str:
    """`names` (views sharing `view`'s watermark and ttl) in words: how old, against which ttl."""
    subject = ", ".join(names) + (" is" if len(names) == 1 else " are")
    if view.materialized_to is None or view.age_s is None:
        return f"{subject} never materialized"
    return (
        f"{subject} materialized to {view.materialized_to.isoformat()}, "
        f"{view.age_s / DAY_S:.1f} days before the serving time (ttl {view.ttl_s / DAY_S:g} days)"
    )


@dataclass(frozen=True)
class ViewSpec:
    """What a reader needs to know about one feature view."""

    name: str  # the feature view's name in the registry, e.g. "user_stats"
    storage_name: str  # its name inside the online store (differs when Feast view versioning is on)
    features: tuple[str, ...]  # feature names, in declaration order
    value_types: tuple[Any, ...]  # feast ValueType of each feature, for decoding ValueProto
    ttl_s: float  # maximum age in seconds; 0 means the view declares no maximum age


def view_specs(store: "FeatureStore", view_names: Sequence[str]) -> tuple[ViewSpec, ...]:
    """The `ViewSpec` of each named view, read from the store's registry.

    Raises:
        FeatureUnavailable: a view is not in the registry (run `vitrine features apply`).
    """
    from feast.infra.online_stores.helpers import compute_versioned_name

    versioning = bool(getattr(store.config.registry, "enable_online_feature_view_versioning", False))
    specs = []
    for name in view_names:
        try:
            view = store.get_feature_view(name)
        except Exception as exc:  # Feast raises its own FeatureViewNotFoundException
            raise FeatureUnavailable(f"feature view {name!r} is not in the Feast registry at {store.repo_path}: {exc}") from exc
        ttl = view.ttl.total_seconds() if view.ttl else 0.0
        specs.append(
            ViewSpec(
                name=name,
                storage_name=compute_versioned_name(view, versioning),
                features=tuple(f.name for f in view.features),
                value_types=tuple(f.dtype.to_value_type() for f in view.features),
                ttl_s=ttl,
            )
        )
    return tuple(specs)


class OnlineFeatureReader(ABC):
    """Reads the latest features of entities of one kind (users or items) from the online store.

    Contract:
        - `read(ids, now)` returns one entry per id, in order: a dict feature name -> python value (None
          where the value is null or its view is missing or older than the view's ttl at `now`), or None
          when the entity has no fresh row in any of the views (an unknown or long-inactive entity).
          `now` defaults to the wall clock.
        - Values are what Feast's `get_online_features(...).to_dict()` returns for the same features.
        - Failure of the store raises `FeatureUnavailable` within a bounded time; it never hangs.
    """

    def __init__(self, join_key: str, views: tuple[ViewSpec, ...]) -> None:
        self.join_key = join_key
        self.views = views
        self._subsets: dict[tuple[str, ...] | None, tuple[ViewSpec, ...]] = {None: views}

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(name for view in self.views for name in view.features)

    @abstractmethod
    def read(self, ids: Sequence[str], now: datetime | None = None, views: Sequence[str] | None = None) -> list[dict[str, Any] | None]:
        """Features of each id (see the class contract); `views`: only these of the reader's views (default all)."""

    def close(self) -> None:
        """Release connections; the reader must not be used afterwards."""

    def specs(self, views: Sequence[str] | None) -> tuple[ViewSpec, ...]:
        """The reader's views named in `views` (all when None), in the reader's order.

        Raises:
            FeatureUnavailable: a name the reader was not opened with.
        """
        key = None if views is None else tuple(views)
        if key not in self._subsets:
            unknown = set(key or ()) - {view.name for view in self.views}
            if unknown:
                raise FeatureUnavailable(f"views {sorted(unknown)} are not read by this {self.join_key} reader "
                                         f"(it reads {[view.name for view in self.views]})")
            self._subsets[key] = tuple(view for view in self.views if view.name in set(key or ()))
        return self._subsets[key]

    def _assemble(
        self, per_view: Sequence[tuple[Sequence[Any], float | None]], now_s: float, specs: tuple[ViewSpec, ...] | None = None
    ) -> dict[str, Any] | None:
        """One entity's dict from (values, event time in epoch seconds) per view of `specs` (default all), applying max age."""
        row: dict[str, Any] = {}
        fresh = False
        for view, (values, event_s) in zip(specs or self.views, per_view):
            present = event_s is not None and event_s > 0
            stale = present and view.ttl_s > 0 and now_s - float(event_s) > view.ttl_s  # type: ignore[arg-type]
            if present and not stale:
                fresh = True
                row.update(zip(view.features, values))
            else:
                row.update(dict.fromkeys(view.features))
        return row if fresh else None


class SdkOnlineReader(OnlineFeatureReader):
    """Reads through `FeatureStore.get_online_features` (any online store Feast supports)."""

    def __init__(self, store: "FeatureStore", join_key: str, views: tuple[ViewSpec, ...]) -> None:
        super().__init__(join_key, views)
        self.store = store
        # The SQLite connection Feast opens is bound to its thread unless told otherwise; a lock keeps
        # concurrent server threads from interleaving on it.
        self._lock = threading.Lock()

    def read(self, ids: Sequence[str], now: datetime | None = None, views: Sequence[str] | None = None) -> list[dict[str, Any] | None]:
        if not ids:
            return []
        specs = self.specs(views)
        now_s = judging_moment(now).timestamp()
        try:
            with self._lock:
                response = self.store.get_online_features(
                    features=[f"{view.name}:{name}" for view in specs for name in view.features],
                    entity_rows=[{self.join_key: i} for i in ids],
                ).to_dict(include_event_timestamps=True)
        except Exception as exc:
            raise FeatureUnavailable(f"Feast online read of {len(ids)} {self.join_key} failed: {exc}") from exc
        out = []
        for n in range(len(ids)):
            per_view = []
            for view in specs:
                values = [response[name][n] for name in view.features]
                # Every feature of a view shares the view's event timestamp; 0 means no row.
                event_s = response[f"{view.features[0]}__ts"][n] if view.features else None
                per_view.append((values, float(event_s) if event_s else None))
            out.append(self._assemble(per_view, now_s, specs))
        return out


class RedisOnlineReader(OnlineFeatureReader):
    """One pipelined HMGET per call against Feast's Redis layout, with bounded timeouts and a breaker.

    Args:
        client: a `redis.Redis` (built by `redis_client`) on the database Feast materializes into.
        project: the Feast project name (the key suffix).
        key_version: the store's `entity_key_serialization_version`.
    """

    def __init__(self, client: Any, project: str, key_version: int, join_key: str, views: tuple[ViewSpec, ...]) -> None:
        super().__init__(join_key, views)
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.helpers import _mmh3
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type
        from google.protobuf.timestamp_pb2 import Timestamp

        # Feast's encoders and decoders, bound once: the request path calls them per entity and per value.
        self._serialize = serialize_entity_key
        self._entity_key, self._value, self._timestamp = EntityKey, Value, Timestamp
        self._to_python = feast_value_type_to_python_type
        self.client = client
        self._project = project.encode("utf-8")
        self._key_version = key_version
        self._mmh3 = _mmh3
        self._field_lists: dict[tuple[ViewSpec, ...], list[bytes]] = {}
        self._down_until = 0.0

    def _fields(self, specs: tuple[ViewSpec, ...]) -> list[bytes]:
        """Field list of the one HMGET per entity: every feature of every view in `specs`, then each one's timestamp."""
        if specs not in self._field_lists:
            fields = [self._mmh3(f"{v.storage_name}:{name}") for v in specs for name in v.features]
            self._field_lists[specs] = fields + [f"_ts:{v.storage_name}".encode() for v in specs]
        return self._field_lists[specs]

    def _key(self, entity_id: str) -> bytes:
        key = self._entity_key(join_keys=[self.join_key], entity_values=[self._value(string_val=entity_id)])
        return self._serialize(key, entity_key_serialization_version=self._key_version) + self._project

    def read(self, ids: Sequence[str], now: datetime | None = None, views: Sequence[str] | None = None) -> list[dict[str, Any] | None]:
        import redis

        if not ids:
            return []
        specs = self.specs(views)
        fields = self._fields(specs)
        if time.monotonic() < self._down_until:
            raise FeatureUnavailable("Redis online store is unreachable (retrying shortly)")
        now_s = judging_moment(now).timestamp()
        replies: list[list[bytes | None]] = []
        try:
            for start in range(0, len(ids), BULK_CHUNK):
                with self.client.pipeline(transaction=False) as pipe:
                    for entity_id in ids[start : start + BULK_CHUNK]:
                        pipe.hmget(self._key(entity_id), fields)
                    replies.extend(pipe.execute())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            self._down_until = time.monotonic() + REDIS_RETRY_AFTER_S
            raise FeatureUnavailable(f"Redis online store failed: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            # Redis answered with an error (WRONGTYPE, NOAUTH, a read-only replica...): the server is up,
            # so no breaker, but the caller still gets the contract's FeatureUnavailable, not a crash.
            raise FeatureUnavailable(f"Redis online store refused the read: {exc}") from exc
        return [self._decode(reply, now_s, specs) for reply in replies]

    def _decode(self, reply: list[bytes | None], now_s: float, specs: tuple[ViewSpec, ...]) -> dict[str, Any] | None:
        n_features = len(reply) - len(specs)
        per_view = []
        offset = 0
        for index, view in enumerate(specs):
            raw_ts = reply[n_features + index]
            event_s: float | None = None
            if raw_ts:
                stamp = self._timestamp()
                stamp.ParseFromString(raw_ts)
                event_s = stamp.seconds + stamp.nanos / 1e9
            values = []
            for raw, value_type in zip(reply[offset : offset + len(view.features)], view.value_types):
                proto = self._value()
                if raw:
                    proto.ParseFromString(raw)
                values.append(self._to_python(proto, value_type))
            offset += len(view.features)
            per_view.append((values, event_s))
        return self._assemble(per_view, now_s, specs)

    def close(self) -> None:
        self.client.close()


def redis_client(connection_string: str, *, bulk: bool = False) -> Any:
    """A `redis.Redis` for a Feast-style connection string (`host:port[,db=N][,password=...]`).

    Timeouts are always finite (see the module constants); health checks and retries are off because a
    slow answer is worse than a fast degraded one on the request path.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    host_port, *params = [part.strip() for part in connection_string.split(",") if part.strip()]
    host, _, port = host_port.rpartition(":")
    options: dict[str, Any] = {}
    for param in params:
        name, _, value = param.partition("=")
        if name == "db":
            options["db"] = int(value)
        elif name == "password":
            options["password"] = value
        elif name == "ssl":
            options["ssl"] = value.lower() == "true"
    return redis.Redis(
        host=host or "localhost",
        port=int(port or 6379),
        socket_timeout=REDIS_BULK_SOCKET_TIMEOUT_S if bulk else REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        # redis-py retries failed commands with backoff by default (seconds in all); the breaker above
        # decides when to try again instead, and the next command reconnects on its own.
        retry=Retry(NoBackoff(), 0),
        **options,
    )


def open_reader(
    store: "FeatureStore", join_key: str, view_names: Sequence[str], *, online: OnlineKind | None = None, bulk: bool = False
) -> OnlineFeatureReader:
    """The reader for `store`'s online store: direct Redis when it is Redis, else Feast's SDK.

    Args:
        store: an opened Feast store whose registry holds `view_names`.
        join_key: the entity's join key, "user_id" or "item_id".
        view_names: feature views keyed by that entity.
        online: force "sqlite" (SDK) or "redis"; default follows the store's configuration.
        bulk: for whole-table reads (longer per-command timeout).
    """
    views = view_specs(store, view_names)
    config = store.config.online_store
    # Feast's own Redis store or a subclass of it (a custom `type:` path whose config keeps the connection string).
    is_redis = "redis" in str(getattr(config, "type", "")).lower() and hasattr(config, "connection_string")
    if (online or ("redis" if is_redis else "sqlite")) == "redis":
        if not is_redis:
            raise FeatureUnavailable(f"the Feast store at {store.repo_path} is not configured for Redis")
        client = redis_client(config.connection_string, bulk=bulk)
        version = int(store.config.entity_key_serialization_version)
        return RedisOnlineReader(client, store.project, version, join_key, views)
    return SdkOnlineReader(store, join_key, views)
