"""The HTTP service: recommendations, search and similar items over FastAPI, with health and metrics.

    GET /recommend/{user_id}?k=20&category=...&exclude_purchased=true   ranked items for a user
    GET /search?q=...&k=20                                             items matching a text query
    GET /similar/{item_id}?k=20                                        items like an item
    POST /events                                                       one event or a list (202; appended to the spool)
    GET /healthz                                                       the process is alive (and which features are stale)
    GET /readyz                                                        models loaded? (503 until then; says why)
    GET /metrics                                                       Prometheus text format
    GET /openapi.json, /docs                                           the published API (a read-only console: GET only)

Errors are mapped in ONE place (`error_response`): the `vitrine.errors` tree gives the status
(InvalidInput 422, NotFound 404, NotAuthorized 401, PayloadTooLarge 413, FeatureUnavailable /
ModelUnavailable / StorageUnavailable 503), FastAPI's own validation errors stay 422, and anything
unexpected is a 500 whose body never carries a stack trace (it goes to the server log). Ids are checked
against a strict pattern (`ranking.recommender.ID_PATTERN`) before anything else sees them, so no
caller-controlled bytes reach a Redis key or a file path.

A feature store that is down or slow does NOT make a request fail: the recommender answers with a
non-personalised list flagged `degraded` (and /metrics counts it).

Feature age is judged at `ServiceConfig.as_of` (`vitrine serve --as-of`, `VITRINE_AS_OF`) or the
wall clock. A served view materialized longer than its ttl before that moment is named, with its
age, by /readyz and /healthz (both stay 200: the models serve, and a restart would not help), is
exported as `vitrine_feature_age_seconds{view}` beside `vitrine_feature_ttl_seconds{view}`, and
makes every answer `degraded` with a `reason`.

Posted events (`ranking.event_spool`) are checked against the data contract and appended, fsynced,
to the data dir's spool (`live/events/events-YYYY-MM-DD-<pid>.csv`) before the 202; `vitrine ingest`
in append mode reads that folder. A spool that cannot be written (read-only, full) answers 503
naming the path and the reason, and counts in `vitrine_event_spool_failures_total`; every other
endpoint keeps serving.

Access: with `VITRINE_API_KEY` set, every endpoint but the probes (/healthz, /readyz) needs
`Authorization: Bearer <key>` or `X-API-Key: <key>` (401 otherwise), /metrics and the console
included; unset, the API is open and start-up logs a warning. CORS is closed unless
`VITRINE_CORS_ORIGINS` names exact origins. Bodies over MAX_BODY_BYTES are refused (413) unread.

Example:
    >>> app = create_app(ServiceConfig(data_dir=Path("data")))
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)   or: vitrine serve
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Literal

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from ranking.event_spool import MAX_EVENT_BATCH, EventIn, EventSpool, parse_events
from ranking.model_watcher import POLL_INTERVAL_S, ModelWatcher, ServingState
from ranking.recommender import (
    CATEGORY_PATTERN,
    ID_PATTERN,
    MAX_CATEGORY_LENGTH,
    MAX_ID_LENGTH,
    MAX_K,
    STAGES,
    RecommendationList,
    check_id,
)
from vitrine.as_of import AS_OF_ENV, as_of_from_environment
from vitrine.errors import (
    FeatureUnavailable,
    InvalidInput,
    ModelUnavailable,
    NotAuthorized,
    PayloadTooLarge,
    StorageUnavailable,
    VitrineError,
)
from vitrine.options import OnlineKind
from vitrine.paths import DataDir

log = logging.getLogger(__name__)

# Default list length when a caller gives no k: one page of a shop's recommendation shelf.
DEFAULT_K = 20
# Longest search query accepted: a sentence or two; longer text is not a query but a document.
MAX_QUERY_LENGTH = 500
# Latency buckets (seconds): the budget is 25 ms at p99, so resolution is finest below 50 ms.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 1.0)
# Idle keep-alive connections are kept this long. It must exceed the idle timeout of whatever sits in
# front (load balancers typically use 60 s) or of a pooling client: a server that closes first races
# with a request sent on the closing connection, which the client sees as a read error.
KEEP_ALIVE_S = 65
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.1)
# Largest request body read. A full batch of MAX_EVENT_BATCH events is ~75 kB; 1 MiB leaves room for
# long ids and pretty-printed JSON while a caller cannot make the service buffer megabytes per request.
MAX_BODY_BYTES = 1 << 20
# The API key, when set: every endpoint but PROBE_PATHS needs it.
API_KEY_ENV = "VITRINE_API_KEY"
# Exact origins (comma-separated, e.g. https://shop.example.com) whose pages may call the API; unset = none.
CORS_ORIGINS_ENV = "VITRINE_CORS_ORIGINS"
# Open without a key: an orchestrator's liveness and readiness probes cannot be given secrets easily,
# and they say nothing about the shop. /metrics is NOT here: Prometheus scrapers send bearer tokens,
# and the metrics name model versions and traffic.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# How `serve` hands ServiceConfig.event_spool to its uvicorn workers.
EVENT_SPOOL_ENV = "VITRINE_SERVE_EVENT_SPOOL"


@dataclass(frozen=True)
class ServiceConfig:
    """How `create_app` builds the service (fields mirror `vitrine serve` options)."""

    data_dir: Path | None = None  # the data dir; None = $VITRINE_DATA_DIR or ./data
    online: OnlineKind = "sqlite"  # online store for user and item features: "sqlite" (embedded) or "redis"
    alias: str = "champion"  # registry alias of vitrine-retriever / vitrine-ranker to serve
    poll_interval_s: float = POLL_INTERVAL_S  # how often to look for a new champion or materialization
    watch: bool = True  # poll in the background; False = load once at start-up (tests, batch)
    as_of: datetime | None = None  # the moment feature age is judged at (aware; replays a past day); None = the wall clock
    event_spool: Path | None = None  # where POST /events appends; None = the data dir's live/events (`DataDir.live_events`)
    api_key: str | None = field(default=None, repr=False)  # None = $VITRINE_API_KEY; neither = an open API (warned at start-up)
    cors_origins: tuple[str, ...] | None = None  # exact origins allowed by CORS; None = $VITRINE_CORS_ORIGINS; empty = closed


class ReasonOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feature: str
    value: float | None
    contribution: float


class ItemOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str
    title: str
    score: float
    retriever_score: float | None
    source: Literal["ranked", "popular"]
    sources: list[str] = []  # the candidate sources that proposed a ranked item (tower, covisitation, popular, retriever)
    reasons: list[ReasonOut]


class RecommendOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str
    k: int
    cold_start: bool
    degraded: bool
    reason: str | None = None  # why the answer is degraded (stale features, feature store down); null when it is not
    versions: dict[str, str]
    items: list[ItemOut]


class SearchHit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str
    score: float
    title: str | None = None


class SearchOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str
    items: list[SearchHit]


class ErrorOut(BaseModel):
    error: str
    detail: str


class EventsOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accepted: int  # events written and fsynced to the spool


# POST /events takes one event or a list of them. The body is read by the endpoint itself (it is
# bounded by MAX_BODY_BYTES first, and one bad event must be named by its index), so its schema is
# declared here rather than inferred from a parameter.
_EVENT_SCHEMA = EventIn.model_json_schema()
EVENTS_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    _EVENT_SCHEMA,
                    {"type": "array", "items": _EVENT_SCHEMA, "minItems": 1, "maxItems": MAX_EVENT_BATCH, "title": "Events"},
                ]
            }
        }
    },
}


def recommend_payload(result: RecommendationList, k: int) -> dict[str, Any]:
    """The JSON body of one recommendation list (also what `vitrine recommend --json` prints)."""
    return {
        "user_id": result.user_id,
        "k": k,
        "cold_start": result.cold_start,
        "degraded": result.degraded,
        "reason": result.reason,
        "versions": result.versions,
        "items": [
            {
                "item_id": r.item_id,
                "title": r.title,
                "score": _score(r.score),
                "retriever_score": None if r.retriever_score is None else _score(r.retriever_score),
                "source": r.source,
                "sources": list(r.sources),
                "reasons": [
                    {"feature": why.feature, "value": why.value, "contribution": _score(why.contribution)} for why in r.reasons
                ],
            }
            for r in result
        ],
    }


def _score(value: float) -> float:
    """A number the API's float fields can carry: JSON has no NaN or inf, and a list must stay sortable (0.0)."""
    return float(value) if math.isfinite(value) else 0.0


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app, so tests can build many)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        # Importing Feast turns on prometheus_client's multiprocess mode for the whole process (feast/metrics.py
        # sets PROMETHEUS_MULTIPROC_DIR before it imports prometheus_client), which keeps every value in a file
        # per pid and metric name: two apps in one process would add up each other's counts, and `clear()`
        # would clear nothing. Each worker is scraped on its own, so the values stay in process.
        values.ValueClass = values.MutexValue
        self.registry = CollectorRegistry()
        self.requests = Counter("vitrine_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("vitrine_request_latency_seconds", "HTTP request latency by endpoint", ["endpoint"], buckets=REQUEST_BUCKETS, registry=self.registry)
        self.stages = Histogram("vitrine_stage_latency_seconds", "recommend() latency per stage", ["stage"], buckets=STAGE_BUCKETS, registry=self.registry)
        self.fallbacks = Counter("vitrine_fallbacks_total", "answers that were not fully personalised, by reason", ["reason"], registry=self.registry)
        self.model = Gauge("vitrine_model_info", "the serving model versions (value 1)", ["retriever", "ranker", "items"], registry=self.registry)
        self.ready = Gauge("vitrine_ready", "1 when models are loaded and serving", registry=self.registry)
        self.load_failures = Counter("vitrine_model_load_failures_total", "candidate bundles refused by the model watcher", registry=self.registry)
        self.feature_age = Gauge(
            "vitrine_feature_age_seconds",
            "seconds from a served view's materialization watermark to the serving time (as-of or now); +Inf: never materialized",
            ["view"],
            registry=self.registry,
        )
        self.feature_ttl = Gauge("vitrine_feature_ttl_seconds", "a served view's ttl (0: never stale); age above it means stale", ["view"], registry=self.registry)
        self.events = Counter("vitrine_events_accepted_total", "posted events written and fsynced to the spool", registry=self.registry)
        self.spool_failures = Counter(
            "vitrine_event_spool_failures_total", "posts refused because the spool could not be written, by errno name", ["reason"], registry=self.registry
        )
        for reason in ("cold_start", "degraded", "padded"):
            self.fallbacks.labels(reason)
        for stage in STAGES:
            self.stages.labels(stage)

    def observe_result(self, result: RecommendationList) -> None:
        for stage, ms in result.timings_ms.items():
            self.stages.labels(stage).observe(ms / 1000.0)
        if result.degraded:
            self.fallbacks.labels("degraded").inc()
        elif result.cold_start:
            self.fallbacks.labels("cold_start").inc()
        elif any(r.source == "popular" for r in result):
            self.fallbacks.labels("padded").inc()

    def on_state(self, state: ServingState) -> None:
        self.model.clear()
        if state.recommender is not None:
            versions = state.recommender.bundle.versions
            self.model.labels(versions["retriever"], versions["ranker"], versions["items"]).set(1)
        self.ready.set(1 if state.recommender is not None else 0)
        if state.last_error is not None:
            self.load_failures.inc()

    def observe_freshness(self, state: ServingState) -> None:
        """Feature age per served view at this moment (called at each scrape: age grows between polls)."""
        ages = state.freshness.ages(state.moment())
        self.feature_age.clear()  # a view no longer served must not keep its last age
        self.feature_ttl.clear()
        for watermark in state.freshness.watermarks:
            self.feature_age.labels(watermark.view).set(ages[watermark.view])
            self.feature_ttl.labels(watermark.view).set(watermark.ttl_s)


def freshness_body(state: ServingState) -> dict[str, Any]:
    """What /readyz and /healthz say about feature age: the judging moment and the stale views."""
    return {
        "as_of": state.as_of.isoformat() if state.as_of else None,
        "stale_features": [view.to_dict() for view in state.stale_views()],
    }


def error_response(exc: Exception) -> JSONResponse:
    """The one mapping from exceptions to HTTP answers (see the module docstring)."""
    if isinstance(exc, VitrineError):
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=exc.http_status)
    if isinstance(exc, RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p not in ('path', 'query'))}: {e.get('msg')}" for e in exc.errors()]
        return JSONResponse({"error": "InvalidInput", "detail": "; ".join(problems)}, status_code=422)
    log.exception("unexpected error", exc_info=exc)
    return JSONResponse({"error": "InternalError", "detail": "internal error; see the server log"}, status_code=500)


class RequestMetrics:
    """Pure ASGI middleware: request count and latency per endpoint and status.

    Not `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs every request through an extra
    task and memory streams, time a 25 ms p99 budget cannot spare. An exception that escapes the
    app before an answer started is answered here through `error_response` (never a stack trace).
    """

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_and_note(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            if status:  # the answer is already on its way: nothing else can be sent
                raise
            response = error_response(exc)
            status = response.status_code
            await response(scope, receive, send)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def _header(scope: Any, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


class BodyLimit:
    """Pure ASGI middleware: a request body over `limit` bytes is refused with 413 before anything parses it.

    A declared Content-Length over the limit is answered at once, unread; a chunked body is counted
    as it arrives, and the read that crosses the limit raises PayloadTooLarge to the endpoint
    reading it (mapped by `error_response`).
    """

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await error_response(PayloadTooLarge(f"body: {int(declared)} bytes; at most {self.limit}"))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise PayloadTooLarge(f"body: more than {self.limit} bytes")
            return message

        await self.app(scope, counted, send)


class ApiKeyGate:
    """Pure ASGI middleware: every request but the probes must carry the API key.

    The key comes as `Authorization: Bearer <key>` or `X-API-Key: <key>` and is compared in constant
    time (`hmac.compare_digest`), so answer times do not tell how much of a guess was right.
    """

    def __init__(self, app: Any, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        given = self._given(scope)
        if given is not None and hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        problem = "no API key" if given is None else "a wrong API key"
        response = error_response(NotAuthorized(f"{problem}: send Authorization: Bearer <key> or X-API-Key: <key>"))
        response.headers["WWW-Authenticate"] = 'Bearer realm="vitrine"'
        await response(scope, receive, send)

    @staticmethod
    def _given(scope: Any) -> bytes | None:
        authorization = _header(scope, b"authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
        return _header(scope, b"x-api-key")


def access_settings(config: ServiceConfig) -> tuple[str | None, tuple[str, ...]]:
    """The API key (None: open) and the CORS origins, from `config` or else the environment.

    Raises:
        InvalidInput: an origin that is not exact (`*`, a path, no scheme).
    """
    key = config.api_key if config.api_key is not None else os.environ.get(API_KEY_ENV)
    if config.cors_origins is not None:
        origins = config.cors_origins
    else:
        origins = tuple(o.strip() for o in os.environ.get(CORS_ORIGINS_ENV, "").split(",") if o.strip())
    for origin in origins:
        scheme, _, rest = origin.partition("://")
        if scheme not in ("http", "https") or not rest or "/" in rest or "*" in rest:
            raise InvalidInput(f"{CORS_ORIGINS_ENV}: {origin!r} is not an exact origin like https://shop.example.com")
    return key or None, origins


def _declare_api_key(app: FastAPI) -> None:
    """Make the published schema say that every operation but the probes needs the key (401 without it)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = app.openapi_schema
        if schema is None:
            schema = build()  # FastAPI keeps it as app.openapi_schema: changed once, in place
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": f"the service's {API_KEY_ENV}"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": f"the service's {API_KEY_ENV}"},
            }
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    if path in PROBE_PATHS:
                        operation["security"] = []
                    else:
                        operation.setdefault("responses", {})["401"] = {
                            "description": "no API key, or a wrong one",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
                        }
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class Search:
    """The embeddings stage's text and similar-item search, loaded on first use."""

    def __init__(self, data: DataDir, engine: Any = None) -> None:
        self.data = data
        self._engine: Any = engine
        self._lock = threading.Lock()

    def engine(self) -> Any:
        with self._lock:
            if self._engine is None:
                try:
                    from embeddings.search import ProductSearch
                except ImportError as exc:
                    raise ModelUnavailable(f"search is not available: {exc}") from exc
                try:
                    self._engine = ProductSearch.load(self.data)
                except VitrineError:
                    raise
                except Exception as exc:
                    raise ModelUnavailable(f"{self.data.embeddings}: search index does not load ({exc})") from exc
            return self._engine


def _hits(found: Any, state: ServingState) -> list[dict[str, Any]]:
    """Search results as dicts (engine tuples or objects), with titles from the serving item table."""
    out = []
    for hit in found:
        if isinstance(hit, dict):
            out.append({"item_id": str(hit["item_id"]), "score": float(hit["score"]), "title": hit.get("title")})
        elif isinstance(hit, tuple):
            out.append({"item_id": str(hit[0]), "score": float(hit[1]), "title": None})
        else:
            out.append({"item_id": str(hit.item_id), "score": float(hit.score), "title": getattr(hit, "title", None)})
    live = state.recommender
    if live is not None:
        items = live.bundle.items
        for hit in out:
            row = items.table.rows.get(str(hit["item_id"]))
            if hit["title"] is None and row is not None:
                hit["title"] = str(items.titles[row])
    return out


def create_app(
    config: ServiceConfig = ServiceConfig(),
    state: ServingState | None = None,
    watcher_factory: Callable[..., ModelWatcher] | None = None,
    search_engine: Any = None,
) -> FastAPI:
    """The FastAPI app. Models load at start-up (lifespan); until they do, /readyz is 503 and says why.

    Args:
        config: where the data is, which online store, which alias, how often to poll.
        state: an already loaded serving state (tests, `vitrine recommend`); None loads from `config`
            (a given state keeps its own `as_of`).
        watcher_factory: builds the model watcher (default `ModelWatcher`).
        search_engine: an object with `search(text, k)` / `similar(item_id, k)` (default: the embeddings
            stage's `ProductSearch`, loaded on first use).
    """
    from ranking.recommender import serving_threads

    serving_threads()
    data = DataDir.resolve(config.data_dir)
    api_key, cors_origins = access_settings(config)
    if api_key is None:
        log.warning("%s is not set: the API is open to anyone who can reach it", API_KEY_ENV)
    spool = EventSpool(config.event_spool or data.live_events)
    metrics = Metrics()
    serving = state or ServingState(as_of=config.as_of)
    search = Search(data, search_engine)
    holder: dict[str, ModelWatcher] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state is None:
            try:
                from ranking.recommender import open_feature_store

                store = open_feature_store(data, config.online)
                watcher = (watcher_factory or ModelWatcher)(
                    data, store, serving, online=config.online, alias=config.alias, interval_s=config.poll_interval_s, on_change=metrics.on_state
                )
                watcher.poll_once()
                if config.watch:
                    watcher.start()
                holder["watcher"] = watcher
            except VitrineError as exc:
                serving.last_error = str(exc)
        if "watcher" not in holder:  # the watcher's first poll already reported through on_change
            metrics.on_state(serving)
        yield
        if "watcher" in holder:
            holder["watcher"].stop()

    app = FastAPI(
        title="Vitrine",
        version="0.1.0",
        description="Multimodal recommendations for online shops: retrieval, reranking, search.",
        lifespan=lifespan,
        # The console (/docs) is read-only: it runs GET requests only, never a POST of events.
        swagger_ui_parameters={"supportedSubmitMethods": ["get"]},
    )
    app.state.serving = serving
    app.state.metrics = metrics

    @app.exception_handler(VitrineError)
    async def _vitrine_error(request: Request, exc: VitrineError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _any_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    # Outermost last: metrics see every answer (401 and 413 too); CORS answers preflights before the
    # key is asked for (a browser sends none with them); the body limit sits closest to the endpoints.
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    if api_key is not None:
        app.add_middleware(ApiKeyGate, key=api_key)
        _declare_api_key(app)
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(RequestMetrics, metrics=metrics)

    def recommender() -> Any:
        live = serving.recommender
        if live is None:
            raise ModelUnavailable(f"no models loaded yet: {serving.last_error or 'starting'}")
        return live

    responses: dict[int | str, dict[str, Any]] = {422: {"model": ErrorOut}, 503: {"model": ErrorOut}}

    # `async def` on purpose: the work is a few ms of CPU, so it runs on the event loop, requests in
    # arrival order. As a sync endpoint each request would hop to a pool thread, and the threads of
    # concurrent requests would share the GIL, so every one of them finished late. Its only I/O is
    # the online-store read, bounded by the store's timeouts and circuit breaker.
    # OpenAPI links say which answer feeds which call (an item listed -> items like it; an event posted ->
    # that user's list): clients can follow them, and schemathesis's stateful phase chains calls by them.
    similar_link = {"operationId": "similar", "parameters": {"item_id": "$response.body#/items/0/item_id"}}
    listed = {"description": "The items", "links": {"SimilarToFirst": similar_link}}

    @app.get("/recommend/{user_id}", response_model=RecommendOut, responses={**responses, 200: listed},
             summary="Top-k items for a user", operation_id="recommend")  # fmt: skip
    async def recommend_endpoint(
        user_id: str = PathParam(..., min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN.pattern, description="The user's id"),
        k: int = Query(DEFAULT_K, ge=1, le=MAX_K, description="How many items"),
        category: str | None = Query(None, min_length=1, max_length=MAX_CATEGORY_LENGTH, pattern=CATEGORY_PATTERN.pattern,
                                     description="Only items of this category (no control characters)"),
        exclude_purchased: bool = Query(True, description="Drop items the user already bought"),
        explain: bool = Query(True, description="Attach the top feature contributions (path attributions of the ranker's trees)"),
    ) -> dict[str, Any]:
        result = recommender().recommend(
            check_id(user_id), k, exclude_purchased=exclude_purchased, category=category, explain=explain
        )
        metrics.observe_result(result)
        return recommend_payload(result, k)

    @app.get("/recommend/", include_in_schema=False)
    @app.get("/recommend", include_in_schema=False)
    def recommend_without_user() -> None:
        raise InvalidInput("user_id: must be a non-empty id, e.g. /recommend/U000042")

    @app.get("/search", response_model=SearchOut, responses={**responses, 200: listed}, summary="Items matching a text query",
             operation_id="search")  # fmt: skip
    def search_endpoint(
        q: str = Query(..., min_length=1, max_length=MAX_QUERY_LENGTH, description="Free text, e.g. 'red floral dress'"),
        k: int = Query(DEFAULT_K, ge=1, le=MAX_K),
    ) -> dict[str, Any]:
        if not q.strip():
            raise InvalidInput("q: must contain some text")
        return {"query": q, "items": _hits(search.engine().search(q, k), serving)}

    @app.get("/similar/{item_id}", response_model=SearchOut, responses={**responses, 200: listed, 404: {"model": ErrorOut}},
             summary="Items like an item", operation_id="similar")  # fmt: skip
    def similar_endpoint(
        item_id: str = PathParam(..., min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN.pattern),
        k: int = Query(DEFAULT_K, ge=1, le=MAX_K),
    ) -> dict[str, Any]:
        check_id(item_id, "item_id")
        return {"query": item_id, "items": _hits(search.engine().similar(item_id, k), serving)}

    @app.post(
        "/events",
        status_code=202,
        response_model=EventsOut,
        responses={**responses, 413: {"model": ErrorOut}, 202: {"description": "Stored", "links": {"RecommendForPoster": {
            "operationId": "recommend", "parameters": {"user_id": "$request.body#/user_id"}}}}},
        operation_id="post_events",
        summary=f"Record shop events: one, or a list of at most {MAX_EVENT_BATCH}",
        description=(
            "Each event is checked against the data contract (ids, event_type, timestamp with a time zone or absent = now, "
            "quantity >= 1, price > 0); one bad event refuses the post (422, naming its index and field). Accepted events "
            "are on disk (fsynced) in the data dir's spool before the 202. 503: the spool cannot be written; nothing was stored."
        ),
        openapi_extra={"requestBody": EVENTS_BODY},
    )
    async def events_endpoint(request: Request) -> dict[str, Any]:
        now = datetime.now(timezone.utc)
        events = parse_events(await request.body(), now)
        try:
            # Off the event loop: an fsync takes milliseconds, and recommendations must not wait behind it.
            await run_in_threadpool(spool.append, events, now)
        except StorageUnavailable as exc:
            metrics.spool_failures.labels(exc.reason).inc()
            log.error("event post refused: %s", exc)
            raise
        metrics.events.inc(len(events))
        return {"accepted": len(events)}

    @app.get("/healthz", summary="The process is alive; names served feature views older than their ttl")
    def healthz() -> dict[str, Any]:
        body = freshness_body(serving)
        return {"status": "degraded" if body["stale_features"] else "ok", **body}

    @app.get("/readyz", summary="Models are loaded and serving (503 until then)")
    def readyz() -> JSONResponse:
        live = serving.recommender
        body: dict[str, Any] = {
            "ready": live is not None,
            "versions": live.bundle.versions if live is not None else {},
            "last_error": serving.last_error,
            "checked_at": serving.checked_at.isoformat() if serving.checked_at else None,
            **freshness_body(serving),
        }
        # Stale features do not make the service unready: its answers are flagged, and every replica
        # sees the same store, so taking them out of rotation would only turn degraded into down.
        return JSONResponse(body, status_code=200 if live is not None else 503)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def metrics_endpoint() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics.observe_freshness(serving)
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(host: str, port: int, workers: int, config: ServiceConfig) -> None:
    """Run the app under uvicorn (`vitrine serve`). Several workers each load their own models."""
    import uvicorn

    if workers > 1:
        # uvicorn's multi-process mode imports the app by name; the config travels in the environment.
        os.environ["VITRINE_SERVE_ONLINE"] = config.online
        os.environ["VITRINE_SERVE_ALIAS"] = config.alias
        os.environ["VITRINE_SERVE_POLL_S"] = repr(config.poll_interval_s)
        os.environ["VITRINE_SERVE_WATCH"] = "1" if config.watch else "0"
        if config.as_of is not None:
            os.environ[AS_OF_ENV] = config.as_of.isoformat()
        else:
            os.environ.pop(AS_OF_ENV, None)
        if config.data_dir is not None:
            os.environ["VITRINE_DATA_DIR"] = str(DataDir.resolve(config.data_dir).root)
        if config.event_spool is not None:
            os.environ[EVENT_SPOOL_ENV] = str(config.event_spool.resolve())
        if config.api_key is not None:
            os.environ[API_KEY_ENV] = config.api_key
        if config.cors_origins is not None:
            os.environ[CORS_ORIGINS_ENV] = ",".join(config.cors_origins)
        uvicorn.run(
            "ranking.service:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    else:
        uvicorn.run(create_app(config), host=host, port=port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S)


def app_from_environment() -> FastAPI:
    """The app configured from `VITRINE_*` variables (uvicorn `--factory`, multi-worker serving).

    `serve` sets VITRINE_SERVE_ONLINE, VITRINE_SERVE_ALIAS, VITRINE_SERVE_POLL_S, VITRINE_SERVE_WATCH,
    VITRINE_AS_OF, VITRINE_DATA_DIR and VITRINE_SERVE_EVENT_SPOOL from its `ServiceConfig` (and
    VITRINE_API_KEY, VITRINE_CORS_ORIGINS when it has them), so every worker serves what one worker would.

    Raises:
        InvalidInput: an unknown online store, a poll interval that is not a positive number, or a
            VITRINE_AS_OF that is not ISO 8601.
    """
    online = os.environ.get("VITRINE_SERVE_ONLINE", "sqlite")
    if online not in ("sqlite", "redis"):
        raise InvalidInput(f"VITRINE_SERVE_ONLINE: {online!r} is not sqlite or redis")
    poll = os.environ.get("VITRINE_SERVE_POLL_S", repr(POLL_INTERVAL_S))
    try:
        poll_interval_s = float(poll)
    except ValueError:
        poll_interval_s = math.nan
    if not math.isfinite(poll_interval_s) or poll_interval_s <= 0:
        raise InvalidInput(f"VITRINE_SERVE_POLL_S: {poll!r} is not a positive number of seconds")
    config = ServiceConfig(
        online=online,  # type: ignore[arg-type]
        alias=os.environ.get("VITRINE_SERVE_ALIAS", "champion"),
        poll_interval_s=poll_interval_s,
        watch=os.environ.get("VITRINE_SERVE_WATCH", "1") != "0",
        as_of=as_of_from_environment(),
        event_spool=Path(os.environ[EVENT_SPOOL_ENV]) if os.environ.get(EVENT_SPOOL_ENV) else None,
    )
    return create_app(config)


__all__ = ["ServiceConfig", "create_app", "error_response", "serve", "app_from_environment", "FeatureUnavailable"]
