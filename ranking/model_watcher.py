"""Keeps the serving bundle current: new `@champion` models and new materializations, without a restart.

A background thread polls, every `POLL_INTERVAL_S`, three cheap facts: the registry versions behind
`vitrine-retriever@champion` and `vitrine-ranker@champion`, and the item views' materialization
watermark (`ranking.item_table.materialization_version`). When one changes it builds the new bundle
off the request path (reusing the parts that did not change), checks that the parts fit together
(`ranking.recommender.check_bundle`), then swaps it in with one assignment. Requests in flight keep
the bundle they started with.

A candidate that fails to load (truncated file, wrong dimension, feature list mismatch, missing
artifact) is refused: the old bundle keeps serving and `ServingState.last_error` (shown by `/readyz`)
names the version and the reason. The same broken version is not retried until the registry moves again.
A candidate whose files are not what Vitrine's savers wrote (a pickle, a file changed since its
manifest, a strange config, weights or model text: `ranking.artifact_check`) is refused before any
of it is loaded, and logged as an error: someone or something wrote into the model registry.

Each poll also reads every served view's watermark (`ranking.recommender.read_freshness`) into
`ServingState.freshness` and the live recommender, which is how requests, `/readyz` and `/metrics`
know, without a store read, that a view is older than its ttl at the state's `as_of` (or now).
A change in what is stale is logged as a warning.

Example:
    >>> watcher = ModelWatcher(data, store, state)
    >>> watcher.poll_once()      # what the thread does every POLL_INTERVAL_S
    >>> watcher.start(); ...; watcher.stop()
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from ranking.item_table import materialization_version
from ranking.online_features import Freshness, StaleView, open_reader, stale_reason
from ranking.recommender import SERVED_VIEWS, USER_VIEWS, ModelBundle, Purchases, Recommender, check_bundle, load_items, read_freshness
from vitrine.errors import UntrustedArtifact, VitrineError
from vitrine.options import OnlineKind
from vitrine.paths import DataDir
from vitrine.tracking import CHAMPION_ALIAS, RANKER_MODEL, RETRIEVER_MODEL

log = logging.getLogger(__name__)

# How often the registry and the feature registry are polled. Both queries are a few ms; 30 s picks up
# a promotion or a nightly materialization within half a minute without loading the tracking DB.
POLL_INTERVAL_S = 30.0
# Joining the thread on shutdown waits at most this long; a load in progress is abandoned after it.
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Probe:
    """What the registries say should be serving now."""

    retriever: str  # registry version of vitrine-retriever@alias ("" when none)
    ranker: str  # registry version of vitrine-ranker@alias ("" when none)
    items: str  # materialization watermark of the item views


@dataclass
class ServingState:
    """What the service serves and why: the recommender (None until a first bundle loads) and problems.

    Attributes:
        recommender: the live recommender, or None while nothing could be loaded.
        loaded: the probe the live bundle was built from.
        last_error: why the latest candidate was refused (None when the latest load worked).
        refused: the probe that failed, so that it is not retried until the registry moves.
        checked_at: when the registries were last polled.
        as_of: the moment feature age is judged at (`--as-of`); None: the wall clock.
        freshness: the served views' materialization watermarks, as of the last poll.
    """

    recommender: Recommender | None = None
    loaded: Probe | None = None
    last_error: str | None = None
    refused: Probe | None = None
    checked_at: datetime | None = None
    as_of: datetime | None = None
    freshness: Freshness = field(default_factory=Freshness)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def moment(self) -> datetime:
        """The moment feature age is judged at now: `as_of`, else the wall clock."""
        return self.as_of or datetime.now(timezone.utc)

    def stale_views(self) -> tuple[StaleView, ...]:
        """Served views older than their ttl at `moment()`, by the last poll's watermarks."""
        return self.freshness.stale(self.moment())


def registry_version(name: str, alias: str) -> str:
    """The version number behind `name@alias`, "" when the alias does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return ""


class ModelWatcher:
    """Polls the registries and swaps in new bundles (see the module docstring).

    Args:
        data: the data dir (MLflow store, shop for the catalog and purchases).
        store: the opened Feast store.
        state: the serving state to update; its `as_of` is the moment features are judged at.
        online: which online store the readers use.
        alias: registry alias to follow.
        interval_s: seconds between polls.
    """

    def __init__(
        self,
        data: DataDir,
        store: Any,
        state: ServingState,
        *,
        online: OnlineKind = "sqlite",
        alias: str = CHAMPION_ALIAS,
        interval_s: float = POLL_INTERVAL_S,
        on_change: Callable[[ServingState], None] | None = None,
    ) -> None:
        self.data = data
        self.store = store
        self.state = state
        self.online = online
        self.alias = alias
        self.interval_s = interval_s
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def probe(self) -> Probe:
        from vitrine.tracking import configure

        configure(self.data)
        return Probe(
            retriever=registry_version(RETRIEVER_MODEL, self.alias),
            ranker=registry_version(RANKER_MODEL, self.alias),
            items=materialization_version(self.store),
        )

    def poll_once(self) -> bool:
        """Check the registries once; load and swap when something changed. True when a swap happened."""
        try:
            probe = self.probe()
            live = self.state.recommender.bundle if self.state.recommender else None
            # The views of the bundle in service (all served views before the first one loads).
            freshness = read_freshness(self.store, live.views if live else SERVED_VIEWS)
        except Exception as exc:  # the tracking DB itself is unreachable: keep serving, say why
            self._refuse(None, f"cannot read the model registry: {exc}")
            return False
        self.state.checked_at = datetime.now(timezone.utc)
        self._observe(freshness)
        if probe == self.state.loaded:
            if self.state.last_error is not None:  # the registry is readable again, or its alias moved back to what serves
                self._clear()
            return False
        if probe == self.state.refused:
            return False
        try:
            bundle = self._build(probe)
        except UntrustedArtifact as exc:
            self._refuse(probe, str(exc), level=logging.ERROR)
            return False
        except VitrineError as exc:
            self._refuse(probe, str(exc))
            return False
        except Exception as exc:  # anything a broken artifact makes torch/faiss/lightgbm raise
            self._refuse(probe, f"{type(exc).__name__}: {exc}")
            return False
        self._install(bundle, probe)
        if live is None or live.views != bundle.views:
            self._observe(read_freshness(self.store, bundle.views))  # the new bundle reads other views
        return True

    def _build(self, probe: Probe) -> ModelBundle:
        """The bundle for `probe`, reusing the live parts whose versions did not change."""
        from ranking.reranker import Reranker
        from ranking.retriever import retriever_from_registry

        if not probe.retriever or not probe.ranker:
            missing = [name for name, v in ((RETRIEVER_MODEL, probe.retriever), (RANKER_MODEL, probe.ranker)) if not v]
            raise VitrineError(f"model registry: no {' or '.join(missing)}@{self.alias}; train and promote a model")
        live = self.state.recommender.bundle if self.state.recommender else None
        loaded = self.state.loaded
        same = live is not None and loaded is not None
        retriever = live.retriever if same and loaded.retriever == probe.retriever else retriever_from_registry(self.data, alias=self.alias)  # type: ignore[union-attr]
        reranker = live.reranker if same and loaded.ranker == probe.ranker else Reranker.from_registry(self.data, alias=self.alias)  # type: ignore[union-attr]
        items = live.items if same and loaded.items == probe.items else load_items(self.data, self.store, online=self.online, as_of=self.state.as_of)  # type: ignore[union-attr]
        return check_bundle(ModelBundle(retriever, reranker, items))

    def _observe(self, freshness: Freshness) -> None:
        """Take the poll's watermarks; warn when the set of stale views changes."""
        state = self.state
        before = {view.view for view in state.stale_views()}
        state.freshness = freshness
        if state.recommender is not None:
            state.recommender.freshness = freshness
        stale = state.stale_views()
        if {view.view for view in stale} != before:
            if stale:
                log.warning("every answer is degraded: %s", stale_reason(stale))
            else:
                log.info("served features are fresh again")

    def _install(self, bundle: ModelBundle, probe: Probe) -> None:
        with self.state.lock:
            recommender = self.state.recommender
            if recommender is None:
                users = open_reader(self.store, "user_id", USER_VIEWS, online=self.online)
                self.state.recommender = Recommender(
                    bundle, users, Purchases.from_shop(self.data), as_of=self.state.as_of, freshness=self.state.freshness
                )
            else:
                if self.state.loaded is not None and self.state.loaded.items != probe.items:
                    recommender.purchases = Purchases.from_shop(self.data)  # new events came with the materialization
                recommender.swap(bundle)
            self.state.loaded = probe
            self.state.last_error = None
            self.state.refused = None
        log.info("serving %s", bundle.versions)
        if self.on_change:
            self.on_change(self.state)

    def _clear(self) -> None:
        with self.state.lock:
            self.state.last_error = None
            self.state.refused = None
        log.info("model watcher: the registry names what serves again")
        if self.on_change:
            self.on_change(self.state)

    def _refuse(self, probe: Probe | None, reason: str, level: int = logging.WARNING) -> None:
        with self.state.lock:
            if probe is not None:
                reason = f"refused {RETRIEVER_MODEL} v{probe.retriever} + {RANKER_MODEL} v{probe.ranker}: {reason}"
            self.state.last_error = reason
            self.state.refused = probe
        log.log(level, "model watcher: %s", reason)
        if self.on_change:
            self.on_change(self.state)

    def start(self) -> None:
        """Poll in a daemon thread until `stop()`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="vitrine-model-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S)
            self._thread = None
