"""`recommend(user_id)`: the online path from a user id to k ranked, explained items.

Per request, in this order (each stage is timed; the service exports the timings per stage):

1. `features`   one online read of the user's Feast features (`ranking.online_features`);
2. `retrieve`   the candidates. A next-item bundle (a sequence retriever and a next-item ranker,
                what the pipeline trains) asks four sources about the user's sequence: the sequence
                tower + FAISS, co-visitation neighbours of the last items, the popular items and
                the content neighbours of the last items (`ranking.next_item`); a two-tower bundle runs its user tower + FAISS for
                `CANDIDATES` items (`ranking.retriever.Retriever`);
3. `rank_features` the ranker's features: for next-item candidates `ranking.next_item.candidate_features`
                (the function training used); for two-tower candidates item-side features indexed
                from the in-process item table (`ranking.item_table`), user-side from the online row
                (`ranking.ranker_features`);
4. `score`      LightGBM (`ranking.reranker.Reranker`, one thread);
5. `filter`     business rules: drop purchased items, keep the requested category, pad from the
                cold-start list so that k items come back whenever the catalog has k eligible ones.

A user the feature store does not know (new, or whose features are older than the views' ttl) gets
the cold-start list (popular and trending items) flagged `cold_start`. When the online store is down
or slow the answer is the same cold-start list flagged `degraded`: never an error, never a hang.

Feature age is judged at the recommender's `as_of` (a past moment, to replay a day) or the wall
clock. When a served view's newest materialization is older than its ttl at that moment (the shop's
data is late, or it is a replay served without `as_of`), every answer is flagged `degraded` with a
`reason` that names the views and says what to do: no user would be personalised otherwise, and
nothing else would say why. This check compares the materialization watermarks (`Freshness`, read
at load and refreshed by the model watcher) with the moment: no store read per request.

`recommend_batch` runs the same stages for many users at once (one online read, one tower pass,
one FAISS search, one LightGBM call), for e-mail campaigns and offline evaluation.

The models, item table and versions live in one immutable `ModelBundle`; a request takes the
bundle once at its start, so a swap (`Recommender.swap`, done by `ranking.model_watcher`) never
mixes two versions inside one answer and never fails a request in flight.

Example:
    >>> recommender = Recommender.from_data(DataDir.resolve())
    >>> for rec in recommender.recommend("U000042", k=5):
    ...     print(rec.item_id, rec.score, rec.reasons[0].feature)
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from feature_repo.columns import names
from ranking.item_table import ABSENT, ITEM_VIEWS, ServingItems, load_serving_items, materialization_ends
from ranking.next_item import FEATURE_NAMES as NEXT_ITEM_FEATURES
from ranking.next_item import SOURCES, CandidateSources
from ranking.next_item import candidates as sources_candidates
from ranking.online_features import (
    Freshness,
    OnlineFeatureReader,
    StaleView,
    ViewWatermark,
    open_reader,
    stale_reason,
    view_specs,
)
from ranking.ranker_features import UserContext, build_features
from vitrine.as_of import as_of_from_environment
from vitrine.errors import FeatureUnavailable, InvalidInput, ModelUnavailable
from vitrine.options import OnlineKind
from vitrine.paths import DataDir

if TYPE_CHECKING:
    from ranking.reranker import Reranker
    from ranking.retriever import Retriever
    from ranking.sequence_retriever import SequenceRetriever

# Candidates the retriever hands to the ranker: enough that the ranker's reordering matters and the
# business filters rarely run short, few enough that features + LightGBM stay ~1 ms per request.
CANDIDATES = 200
# Largest k a caller may ask for: a page of results, not a catalog dump (also bounds the work).
MAX_K = 200
# Reasons (the largest LightGBM feature contributions) attached to each recommendation.
REASONS_PER_ITEM = 3
# Ids are short opaque tokens: letters, digits and `_ - . :`. Anything else (spaces, slashes, control
# characters) is refused before it can reach a Redis key or a file path.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
# Same limit as ID_PATTERN's length, named for messages.
MAX_ID_LENGTH = 64
# Longest category name a filter may name: catalog category paths are tens of characters; 200 leaves room
# for long localized names while bounding what a caller can make the service hash and cache.
MAX_CATEGORY_LENGTH = 200
# What `check_category` accepts (and the API schema declares): no control characters.
CATEGORY_PATTERN = re.compile(r"^[^\x00-\x1f]+$")
# The ANN search widens by the user's purchase count (so that dropping bought items still leaves about
# CANDIDATES), but by at most this much: a user with thousands of purchases must not turn one request into
# a catalog scan (and HNSW's efSearch, raised to the widest k ever asked, would stay high for everyone).
MAX_PURCHASE_SLACK = CANDIDATES
# Feature views keyed by user that the retrievers and the rankers read.
USER_VIEWS: tuple[str, ...] = ("user_stats", "user_recent_items", "user_sequence")
# Every view an answer may depend on (whose staleness degrades answers), and those of each kind of bundle:
# next-item answers read the sequence and the neighbours (item_stats orders the cold-start list), two-tower
# answers the stats, the recent items and the item vectors.
SERVED_VIEWS: tuple[str, ...] = USER_VIEWS + ITEM_VIEWS
NEXT_ITEM_VIEWS: tuple[str, ...] = ("user_sequence", "item_covisitation", "item_stats")
TWO_TOWER_VIEWS: tuple[str, ...] = ("user_stats", "user_recent_items", "item_stats", "item_embedding")
# A two-tower user is known when one of its views has a fresh value for them.
TWO_TOWER_USER_FEATURES: frozenset[str] = frozenset((*names("user_stats"), *names("user_recent_items")))
STAGES: tuple[str, ...] = ("features", "retrieve", "rank_features", "score", "filter")


@dataclass(frozen=True)
class Reason:
    """One feature that pushed an item up (or down): its value and its LightGBM contribution."""

    feature: str
    value: float | None
    contribution: float


@dataclass(frozen=True)
class Recommendation:
    """One recommended item.

    Args:
        item_id: the catalog id.
        title: the catalog title.
        score: the ranker's score (higher is better); for cold-start items the list position as
            a decreasing score, so a list is always sorted by `score`.
        retriever_score: the two-tower cosine score, None for items that did not come from retrieval.
        source: "ranked" (retrieved and reranked) or "popular" (cold start or padding).
        reasons: the top `REASONS_PER_ITEM` feature contributions, empty for popular items.
        sources: the candidate sources that proposed a ranked item ("tower", "covisitation",
            "popular" for next-item bundles, "retriever" for two-tower ones).
    """

    item_id: str
    title: str
    score: float
    retriever_score: float | None
    source: str
    reasons: tuple[Reason, ...] = ()
    sources: tuple[str, ...] = ()


class RecommendationList(list[Recommendation]):
    """A `list[Recommendation]` plus how it was made.

    Attributes:
        user_id: who it is for.
        cold_start: True when the user has no usable features (new, unknown or stale): popular items.
        degraded: True when the answer is worse than the models can give: the feature store failed
            (a non-personalised list was served instead), or a served view is older than its ttl.
        reason: why it is degraded, in words (None when it is not).
        versions: retriever, ranker and item-table versions that produced it.
        timings_ms: milliseconds per stage (see STAGES), for this call.
    """

    def __init__(
        self,
        items: Iterable[Recommendation] = (),
        *,
        user_id: str = "",
        cold_start: bool = False,
        degraded: bool = False,
        reason: str | None = None,
        versions: Mapping[str, str] | None = None,
        timings_ms: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(items)
        self.user_id = user_id
        self.cold_start = cold_start
        self.degraded = degraded
        self.reason = reason
        self.versions = dict(versions or {})
        self.timings_ms = dict(timings_ms or {})


@dataclass(frozen=True)
class ModelBundle:
    """Everything one answer is computed from, swapped as one unit.

    Args:
        retriever: the user tower + ANN index: a sequence tower (`ranking.sequence_retriever`) or a
            two-tower one (`ranking.retriever.Retriever`).
        reranker: the LightGBM ranker (`ranking.reranker.Reranker`) of the same kind.
        items: the in-process item table at one materialization.

    Attributes:
        index_ids: (n_index,) the item id of each ANN index row, as an array for fancy indexing.
        index_rows: (n_index,) the item-table row of each ANN index row, -1 for items no longer in the
            catalog; computed once per bundle so that a request maps candidates with numpy only.
        sources: the next-item sources in the sequence retriever's rows (co-visitation and
            popularity rebuilt from the item table's `item_covisitation` values); None for two-tower.
    """

    retriever: "Retriever | SequenceRetriever"
    reranker: "Reranker"
    items: ServingItems
    index_ids: np.ndarray = field(init=False, repr=False)
    index_rows: np.ndarray = field(init=False, repr=False)
    sources: CandidateSources | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        ids = np.asarray(self.retriever.item_ids, dtype=object)
        object.__setattr__(self, "index_ids", ids)
        object.__setattr__(self, "index_rows", self.items.table.positions(ids))
        if self.retriever.kind == "sequence":
            object.__setattr__(self, "sources", next_item_sources(self.retriever, self.items, self.index_rows))  # type: ignore[arg-type]

    @property
    def views(self) -> tuple[str, ...]:
        """The feature views this bundle's answers read."""
        return NEXT_ITEM_VIEWS if self.sources is not None else TWO_TOWER_VIEWS

    @property
    def user_views(self) -> tuple[str, ...]:
        """The user-keyed views of `views`: what a request reads of the user (a next-item request reads
        the sequence alone, 0.15 of the 0.29 ms that all three cost on Redis at benchmark scale)."""
        return tuple(view for view in USER_VIEWS if view in self.views)

    @property
    def versions(self) -> dict[str, str]:
        return {
            "retriever": str(self.retriever.version),
            "ranker": str(self.reranker.version),
            "items": self.items.version,
        }


def next_item_sources(retriever: "SequenceRetriever", items: ServingItems, table_rows: np.ndarray) -> CandidateSources:
    """The next-item sources in the retriever's rows: its tower and index, plus co-visitation and
    popularity from the online store's `item_covisitation` values (`feature_repo.covisitation.CoVisitation.from_neighbours`).

    The co-visitation source reads them with the settings the model was trained with (`served_config`).

    Raises:
        ModelUnavailable: the view is not materialized (the sources cannot be served), or the model's
            co-visitation matrices were fitted with other settings than the view's.
    """
    from feature_repo.covisitation import CoVisitation, served_config

    if items.neighbours is None:
        raise ModelUnavailable("the item_covisitation view is not materialized: run `vitrine features build` and "
                               "`vitrine features materialize` (the next-item sources read it)")
    found = items.neighbours.at(table_rows)
    covisitation = CoVisitation.from_neighbours(retriever.item_ids, (found.cooc_ids, found.cooc_scores), (found.next_ids, found.next_scores),
                                                served_config(retriever.config.get("covisitation")))
    return CandidateSources(retriever, covisitation, found.sequence_users.astype(np.float32), found.repeat_share)


def serving_threads() -> None:
    """One thread each for torch, FAISS, OpenMP and numpy's BLAS, in this process.

    A request's work is tiny and serving (and batch) workers already use every core. numpy's
    OpenBLAS otherwise starts a thread per core for the ranker features' small matmuls, and its
    threads spin while they wait: under a loaded 2-worker server they took the CPU the other
    worker needed (sequential HTTP p50 16 -> 6 ms on the demo shop).
    """
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    threadpool_limits(1)


def check_id(value: str, field_name: str = "user_id") -> str:
    """`value` if it is a well-formed id, else InvalidInput naming the field and the problem.

    Example:
        >>> check_id("U000042")
        'U000042'
    """
    if not isinstance(value, str) or value == "":
        raise InvalidInput(f"{field_name}: must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"{field_name}: {len(value)} characters, at most {MAX_ID_LENGTH} allowed")
    if not ID_PATTERN.fullmatch(value):
        raise InvalidInput(
            f"{field_name}: {value[:MAX_ID_LENGTH]!r} is malformed; ids are letters, digits and _ - . : "
            "and start with a letter or digit"
        )
    return value


def check_k(k: int) -> int:
    """`k` as an int when it is an integer from 1 to MAX_K, else InvalidInput."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
        raise InvalidInput(f"k: must be an integer from 1 to {MAX_K}, got {k!r}")
    return int(k)


class Purchases:
    """Items each user bought, as item ids: what `exclude_purchased` removes.

    Built from the shop's purchase events when the service starts and with each item-table refresh.
    The feature store has no purchase-history view yet (see the report): a `user_purchases` view
    would make this an online read instead.
    """

    def __init__(self, bought: Mapping[str, frozenset[str]]) -> None:
        self._bought = bought

    @classmethod
    def from_shop(cls, data: DataDir) -> "Purchases":
        import pyarrow.dataset as ds

        if not data.events.exists():
            return cls({})
        table = ds.dataset(str(data.events), format="parquet", partitioning="hive").to_table(
            columns=["user_id", "item_id"], filter=ds.field("event_type") == "purchase"
        )
        frame = table.to_pandas()
        grouped = frame.groupby("user_id", sort=False)["item_id"].agg(frozenset)
        return cls(grouped.to_dict())

    def of(self, user_id: str) -> frozenset[str]:
        return self._bought.get(user_id, frozenset())


@dataclass
class _Timer:
    """Milliseconds per stage for one call."""

    spent: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.spent[stage] = self.spent.get(stage, 0.0) + (now - self._last) * 1000.0
        self._last = now


class Recommender:
    """One object holding the current model bundle and the online readers.

    Args:
        bundle: the models and item table to serve (replace with `swap`).
        users: the online reader of user features; None serves everyone the cold-start list.
        purchases: what each user bought (for `exclude_purchased`).
        candidates: how many candidates the retriever hands to the ranker.
        as_of: the moment feature age is judged at (aware); None: the wall clock at each request.
        freshness: the served views' materialization watermarks (`read_freshness`); the model watcher
            replaces it as it polls. Empty: nothing is known, nothing is flagged.

    Example:
        >>> recommender = Recommender.from_data(DataDir.resolve(), online="redis")
        >>> recommender.recommend("U000042", k=10, category="toys")
        >>> Recommender.from_data(DataDir.resolve(), as_of=parse_as_of("2026-03-02")).recommend("U000042")
    """

    def __init__(
        self,
        bundle: ModelBundle,
        users: OnlineFeatureReader | None,
        purchases: Purchases | None = None,
        candidates: int = CANDIDATES,
        *,
        as_of: datetime | None = None,
        freshness: Freshness = Freshness(),
    ) -> None:
        self._bundle = bundle
        self.users = users
        self.purchases = purchases or Purchases({})
        self.candidates = candidates
        self.as_of = as_of
        self.freshness = freshness

    def moment(self) -> datetime:
        """The moment feature age is judged at now: `as_of`, else the wall clock."""
        return self.as_of or datetime.now(timezone.utc)

    def stale_views(self) -> tuple[StaleView, ...]:
        """The served views older than their ttl at `moment()` (see `Freshness.stale`)."""
        return self.freshness.stale(self.moment())

    @property
    def bundle(self) -> ModelBundle:
        return self._bundle

    def swap(self, bundle: ModelBundle) -> None:
        """Serve `bundle` from the next request on; requests in flight finish with the old one.

        An attribute assignment is atomic in CPython, and each request reads `self._bundle` once.
        """
        self._bundle = bundle

    @classmethod
    def from_data(
        cls,
        data: DataDir,
        *,
        online: OnlineKind = "sqlite",
        alias: str = "champion",
        candidates: int = CANDIDATES,
        as_of: datetime | None = None,
    ) -> "Recommender":
        """Load `vitrine-retriever@alias`, `vitrine-ranker@alias`, the item table and the readers.

        `as_of` judges feature age at that moment instead of the wall clock, for the item table read
        here and for every request (see `vitrine.as_of.parse_as_of`).

        Raises:
            ModelUnavailable: a model is not registered or does not load.
            FeatureUnavailable: the feature store is not set up (`vitrine features apply/materialize`).
        """
        store = open_feature_store(data, online)
        bundle = load_bundle(data, store, alias=alias, online=online, as_of=as_of)
        users = open_reader(store, "user_id", USER_VIEWS, online=online)
        return cls(bundle, users, Purchases.from_shop(data), candidates=candidates, as_of=as_of, freshness=read_freshness(store, bundle.views))

    def recommend(
        self, user_id: str, k: int = 20, *, exclude_purchased: bool = True, category: str | None = None, explain: bool = True
    ) -> RecommendationList:
        """The top `k` items for `user_id`, best first (see the module docstring for the stages).

        Args:
            user_id: the user (strict id pattern, see `check_id`).
            k: how many items, 1..MAX_K.
            exclude_purchased: drop items the user already bought.
            category: only items of this category.
            explain: attach the top feature contributions (`reasons`) to ranked items.

        Raises:
            InvalidInput: a malformed id or k out of range.
        """
        return self.recommend_batch([user_id], k, exclude_purchased=exclude_purchased, category=category, explain=explain)[0]

    def recommend_batch(
        self,
        user_ids: Sequence[str],
        k: int = 20,
        *,
        exclude_purchased: bool = True,
        category: str | None = None,
        explain: bool = False,
    ) -> list[RecommendationList]:
        """`recommend` for many users through the same stages, each done once for the whole batch."""
        k = check_k(k)
        ids = [check_id(u) for u in user_ids]
        if category is not None:
            check_category(category)
        bundle = self._bundle  # one read: the whole batch uses one version of everything
        timer = _Timer()
        now = self.moment()
        problems = [stale_reason(self.freshness.stale(now))]
        rows: list[dict[str, Any] | None]
        if self.users is None:
            rows = [None] * len(ids)
        else:
            try:
                rows = self.users.read(ids, now=now, views=bundle.user_views)
            except FeatureUnavailable as exc:
                rows = [None] * len(ids)
                problems.append(f"feature store unavailable, non-personalised list served: {exc}")
        reason = "; ".join(p for p in problems if p) or None
        timer.lap("features")

        bought = [self.purchases.of(u) if exclude_purchased else frozenset() for u in ids]
        if bundle.sources is not None:
            candidates, matrices = next_item_candidates(bundle.sources, bundle, rows, timer, now)
            cold = [n not in candidates for n in range(len(ids))]  # no sequence: nothing to go on
        else:
            candidates, matrices = two_tower_candidates(bundle, rows, ids, bought, self.candidates, timer)
            cold = [n not in candidates for n in range(len(ids))]
        scores, leaves = score_requests(bundle.reranker, matrices)
        timer.lap("score")

        allowed = bundle.items.category_mask(category)
        results = []
        for n, user_id in enumerate(ids):
            picked = self._pick(bundle, candidates.get(n), scores.get(n), matrices.get(n), leaves.get(n), k, bought[n], allowed,
                                category, explain)
            results.append(
                RecommendationList(
                    picked, user_id=user_id, cold_start=cold[n], degraded=reason is not None, reason=reason, versions=bundle.versions
                )
            )
        timer.lap("filter")
        for result in results:
            result.timings_ms = timer.spent
        return results

    def _pick(
        self,
        bundle: ModelBundle,
        candidates: "Found | None",
        scores: np.ndarray | None,
        matrix: np.ndarray | None,
        leaves: np.ndarray | None,
        k: int,
        bought: frozenset[str],
        allowed: np.ndarray | None,
        category: str | None,
        explain: bool,
    ) -> list[Recommendation]:
        """Filter and order one user's candidates; pad from the cold-start list up to k."""
        items = bundle.items
        out: list[Recommendation] = []
        taken: set[str] = set()
        if candidates is not None and scores is not None and matrix is not None and len(scores):
            ids, retriever_scores, positions, tags = candidates
            names = SOURCES if tags.shape[1] == len(SOURCES) else ("retriever",)
            keep = positions >= 0  # items that left the catalog since the index was built
            if allowed is not None:
                keep &= allowed[np.where(keep, positions, 0)]
            if bought:  # older purchases than the served sequence holds (two-tower lists are already without them)
                keep &= np.fromiter((i not in bought for i in ids), dtype=bool, count=len(ids))
            ranked = np.argsort(-scores, kind="stable")
            order = ranked[keep[ranked]][:k].tolist()
            reasons = (explain_rows(bundle.reranker, matrix[order], None if leaves is None else leaves[order])
                       if explain and order else [()] * len(order))
            for o, why in zip(order, reasons):
                taken.add(ids[o])
                out.append(
                    Recommendation(
                        item_id=str(ids[o]),
                        title=str(items.titles[positions[o]]),
                        score=float(scores[o]),
                        retriever_score=float(retriever_scores[o]),
                        source="ranked",
                        reasons=why,
                        sources=sources_of(tags[o], names),
                    )
                )
        if len(out) < k:
            floor = min((r.score for r in out), default=0.0)
            for row in items.cold_start_rows(category):
                item_id = str(items.table.item_ids[row])
                if item_id in taken or item_id in bought:
                    continue
                floor -= 1.0  # keeps the list sorted by score: padding always ranks below ranked items
                out.append(Recommendation(item_id, str(items.titles[row]), floor, None, "popular"))
                taken.add(item_id)
                if len(out) == k:
                    break
        return out


# One user's candidates: item ids, retriever scores, item-table rows, and [n, sources] which proposed each.
Found = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def sources_of(proposed: np.ndarray, names: Sequence[str]) -> tuple[str, ...]:
    """The names of the sources whose flag is set."""
    return tuple(name for name, on in zip(names, proposed) if on)


def next_item_candidates(
    sources: CandidateSources, bundle: ModelBundle, rows: Sequence[Mapping[str, Any] | None], timer: "_Timer", now: datetime
) -> tuple[dict[int, Found], dict[int, np.ndarray]]:
    """Candidates and ranker matrices of the users with a sequence, by user position (`ranking.next_item`).

    The sources, union and features are the functions training used, run on the users of this call
    (one user or a batch: a user's numbers do not depend on the others, tested).
    """
    retriever = sources.retriever
    histories_of = retriever.histories([None if row is None else row.get("sequence_item_ids") for row in rows])
    users = [n for n, history in enumerate(histories_of) if len(history)]
    if not users:
        timer.lap("retrieve")
        timer.lap("rank_features")
        return {}, {}
    histories = [histories_of[n] for n in users]
    newest = np.array([(rows[n] or {}).get("last_item_at_s") or np.nan for n in users], dtype=np.float64)
    elapsed = ((now.timestamp() - newest) / 86_400.0).astype(np.float32)
    found = sources_candidates(sources, histories, elapsed, lap=timer.lap)  # the tower's user vectors come with them
    proposed = found.proposed_by()
    tower = found.matrix[:, NEXT_ITEM_FEATURES.index("tower_score")]
    bounds = np.searchsorted(found.users, np.arange(len(users) + 1))  # feature rows are user-major
    candidates: dict[int, Found] = {}
    matrices: dict[int, np.ndarray] = {}
    for i, n in enumerate(users):
        mine = slice(bounds[i], bounds[i + 1])
        items = found.items[mine]
        candidates[n] = (bundle.index_ids[items], tower[mine], bundle.index_rows[items], proposed[mine])
        matrices[n] = found.matrix[mine]
    timer.lap("rank_features")
    return candidates, matrices


def two_tower_candidates(
    bundle: ModelBundle, rows: Sequence[Mapping[str, Any] | None], ids: Sequence[str], bought: Sequence[frozenset[str]], n: int, timer: "_Timer"
) -> tuple[dict[int, Found], dict[int, np.ndarray]]:
    """The two-tower retriever's shortlist of `n` candidates per known user and their session-ranker matrices."""
    known = [u for u, row in enumerate(rows) if row is not None and any(row.get(f) is not None for f in TWO_TOWER_USER_FEATURES)]
    candidates: dict[int, Found] = {}
    if known:
        # Plain dicts, not a DataFrame: building one costs more than the user tower (see `encode_users`).
        frame = [{**rows[u], "user_id": ids[u]} for u in known]  # type: ignore[dict-item]
        slack = min(max(len(bought[u]) for u in known), MAX_PURCHASE_SLACK)
        found = retrieve(bundle, frame, n, slack)
        for i, u in enumerate(known):
            shortlisted = shortlist(*found[i], bought[u], n)
            candidates[u] = (*shortlisted, np.ones((len(shortlisted[0]), 1), dtype=bool))
    timer.lap("retrieve")
    matrices = {u: build_features(bundle.items.table, UserContext.from_features(rows[u] or {}), *c[:3]) for u, c in candidates.items()}
    timer.lap("rank_features")
    return candidates, matrices


def retrieve(
    bundle: ModelBundle, frame: Sequence[Mapping[str, Any]] | pd.DataFrame, n: int, slack: int = 0
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(item ids, retriever scores, item-table rows) of the best `n` index items per row of `frame`, best first.

    The retriever's own user tower and index (`Retriever.user_vectors` + `ranking.ann.search`), with
    ids taken from the bundle's id array: no per-candidate Python objects on the hot path. `slack`
    widens the search so that filtering out bought items still leaves about `n`.
    Items no longer in the catalog are dropped here; FAISS's -1 padding never leaves `ann.search`.
    """
    from ranking.ann import search
    from ranking.retriever import Retriever

    assert isinstance(bundle.retriever, Retriever), "two-tower candidates need a two-tower retriever"
    vectors = bundle.retriever.user_vectors(frame)
    found_rows, found_scores = search(bundle.retriever.index, vectors, n + slack)
    out = []
    for rows, scores in zip(found_rows, found_scores):
        table_rows = bundle.index_rows[rows]
        live = table_rows >= 0
        out.append((bundle.index_ids[rows[live]], scores[live].astype(np.float32), table_rows[live]))
    return out


def shortlist(
    ids: np.ndarray, scores: np.ndarray, rows: np.ndarray, bought: frozenset[str], n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `n` retrieved items the user did not buy: exactly the list the ranker was trained on.

    The search is widened by the purchase slack so that `n` survive the filter; what is left over
    must not reach the ranker: its `retriever_rank` never exceeded n - 1 in training, and a ranker
    trained with `inject_positives` learned that ranks past the list are half positives.
    """
    keep = np.fromiter((i not in bought for i in ids), dtype=bool, count=len(ids)) if bought else np.ones(len(ids), dtype=bool)
    chosen = np.flatnonzero(keep)[:n]
    return ids[chosen], scores[chosen], rows[chosen]


def check_category(category: str) -> str:
    """`category` if it is 1..MAX_CATEGORY_LENGTH characters without control characters, else InvalidInput."""
    if len(category) > MAX_CATEGORY_LENGTH or not CATEGORY_PATTERN.fullmatch(category):
        raise InvalidInput(f"category: {category[:MAX_CATEGORY_LENGTH]!r} must be 1..{MAX_CATEGORY_LENGTH} printable characters")
    return category


def score_requests(reranker: "Reranker", matrices: Mapping[int, np.ndarray]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Ranker scores per request, and the leaves each row reached where the walk was compiled (the reasons read them).

    The engagement blend is the LambdaRank score row by row, so rows of many requests are scored in
    one call; the revenue blend normalises over one request's candidates, so it goes per request.
    """
    if not matrices:
        return {}, {}
    if reranker.blend.objective != "engagement":
        return {n: reranker.score(matrix) for n, matrix in matrices.items()}, {}
    keys = list(matrices)
    relevance, leaves = reranker.relevance_and_leaves(np.vstack([matrices[n] for n in keys]))
    bounds = np.cumsum([0] + [len(matrices[n]) for n in keys])
    parts = [slice(bounds[i], bounds[i + 1]) for i in range(len(keys))]
    return ({n: relevance[part] for n, part in zip(keys, parts)},
            {} if leaves is None else {n: leaves[part] for n, part in zip(keys, parts)})


def explain_rows(reranker: "Reranker", matrix: np.ndarray, leaves: np.ndarray | None = None) -> list[tuple[Reason, ...]]:
    """The `REASONS_PER_ITEM` largest contributions of each row to its relevance (`Reranker.contributions`).

    `leaves`: the rows' leaves from scoring (`score_requests`), so they are not walked again.
    """
    if len(matrix) == 0:
        return []
    contributions = reranker.contributions(matrix, leaves)
    names = reranker.feature_names
    # One sort for all rows, then plain Python floats: per-element numpy scalars cost more than the sort.
    top = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :REASONS_PER_ITEM]
    values = np.take_along_axis(matrix, top, axis=1).tolist()
    pushes = np.take_along_axis(contributions, top, axis=1).tolist()
    return [
        tuple(Reason(names[j], None if math.isnan(v) else v, c) for j, v, c in zip(columns, row_values, row_pushes) if c != 0)
        for columns, row_values, row_pushes in zip(top.tolist(), values, pushes)
    ]


def open_feature_store(data: DataDir, online: OnlineKind = "sqlite") -> Any:
    """The project's Feast store (`feature_repo.store.open_store`), as a FeatureUnavailable on failure."""
    try:
        from feature_repo.store import open_store
    except ImportError as exc:  # the feature-store stage is not installed
        raise FeatureUnavailable(f"the feature store module is unavailable: {exc}") from exc
    try:
        return open_store(data, online=online)
    except (FeatureUnavailable, InvalidInput):
        raise
    except Exception as exc:
        raise FeatureUnavailable(f"{data.feast}: cannot open the Feast store ({exc})") from exc


def load_bundle(
    data: DataDir, store: Any, *, alias: str = "champion", online: OnlineKind | None = None, as_of: datetime | None = None
) -> ModelBundle:
    """Retriever and ranker `@alias` from the registry, plus the item table at the current materialization.

    The item table's features are judged fresh or stale at `as_of` (None: the wall clock).
    """
    from ranking.reranker import Reranker
    from ranking.retriever import retriever_from_registry

    retriever = retriever_from_registry(data, alias=alias)
    reranker = Reranker.from_registry(data, alias=alias)
    return check_bundle(ModelBundle(retriever, reranker, load_items(data, store, online=online, as_of=as_of)))


def load_items(data: DataDir, store: Any, *, online: OnlineKind | None = None, as_of: datetime | None = None) -> ServingItems:
    """The shop's catalog with its item features from the online store, judged fresh at `as_of`."""
    from vitrine.shop.store import read_items

    return load_serving_items(store, read_items(data), online=online, as_of=as_of)


def read_freshness(store: Any, views: Sequence[str] = SERVED_VIEWS) -> Freshness:
    """The materialization watermark and ttl of each view in `views` that the registry holds.

    One uncached registry read per view (`ranking.item_table.materialization_ends`): for load time
    and the model watcher's poll, never for a request.
    """
    ends = materialization_ends(store, views)
    present = [name for name in views if ends[name] != ABSENT]
    ttls = {spec.name: spec.ttl_s for spec in view_specs(store, present)}
    watermarks = []
    for name in present:
        end = None if ends[name] == "never" else datetime.fromisoformat(ends[name])
        if end is not None and end.tzinfo is None:  # Feast stores UTC; an old registry may hold naive stamps
            end = end.replace(tzinfo=timezone.utc)
        watermarks.append(ViewWatermark(name, end, ttls[name]))
    return Freshness(tuple(watermarks))


def check_bundle(bundle: ModelBundle) -> ModelBundle:
    """Refuse a bundle whose parts do not fit together (before it replaces a working one).

    Raises:
        ModelUnavailable: the retriever's index does not match its item ids, its vectors have another
            dimension than its user tower, the ranker ranks another kind of candidates, its features
            differ from what this code builds, or a next-item ranker comes from another fit than the retriever.
    """
    from ranking.reranker import FEATURES_OF, NEXT_ITEM, SESSION, feature_list_difference
    from ranking.retriever import Retriever

    retriever = bundle.retriever
    index_dim = int(retriever.index.d)
    if retriever.index.ntotal != len(retriever.item_ids):
        raise ModelUnavailable(f"retriever {retriever.version}: {retriever.index.ntotal} index rows for {len(retriever.item_ids)} item ids")
    if isinstance(retriever, Retriever):
        probe = retriever.user_vectors(pd.DataFrame({"user_id": ["__probe__"]}))
    else:
        probe = retriever.vectors_of([np.zeros(1, dtype=np.int64)])
    if probe.shape[1] != index_dim:
        raise ModelUnavailable(
            f"retriever {retriever.version}: user tower gives {probe.shape[1]}-d vectors, index holds {index_dim}-d"
        )
    wanted = NEXT_ITEM if retriever.kind == "sequence" else SESSION
    if bundle.reranker.kind != wanted:
        raise ModelUnavailable(f"ranker {bundle.reranker.version} ranks {bundle.reranker.kind} candidates; "
                               f"a {retriever.kind} retriever needs a {wanted} ranker")
    difference = feature_list_difference(tuple(bundle.reranker.feature_names), FEATURES_OF[wanted])
    if difference is not None:
        raise ModelUnavailable(f"ranker {bundle.reranker.version}: {difference}")
    # A next-item ranker learned from its own fit's tower and co-visitation; with another fit's it would
    # serve, quietly worse. The aliases move one model at a time, so a poll between the two moves sees
    # two fits: refusing that bundle keeps the old pair serving until both aliases name one fit.
    ranker_fit = bundle.reranker.metadata.lineage.get("run_id")
    retriever_fit = retriever.config.get("lineage", {}).get("run_id") if retriever.kind == "sequence" else None
    if ranker_fit and retriever_fit and ranker_fit != retriever_fit:
        raise ModelUnavailable(f"ranker {bundle.reranker.version} was fitted with the retriever of run {ranker_fit}, not with "
                               f"retriever {retriever.version} (run {retriever_fit}): waiting for both aliases to name one fit")
    known = bundle.items.table.positions(retriever.item_ids[: min(len(retriever.item_ids), 1000)])
    if len(known) and (known < 0).all():
        raise ModelUnavailable(f"retriever {retriever.version}: none of its items is in the current catalog")
    return bundle


_default: Recommender | None = None
_default_lock = threading.Lock()


def default_recommender() -> Recommender:
    """The process-wide `Recommender` over `$VITRINE_DATA_DIR` (SQLite online store), created on first use.

    Feature age is judged at `$VITRINE_AS_OF` when it is set (see `vitrine.as_of.parse_as_of`).
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = Recommender.from_data(DataDir.resolve(), as_of=as_of_from_environment())
        return _default


def recommend(
    user_id: str, k: int = 20, *, exclude_purchased: bool = True, category: str | None = None
) -> RecommendationList:
    """`Recommender.recommend` on the default instance (see `default_recommender`).

    Example:
        >>> import ranking
        >>> [r.item_id for r in ranking.recommend("U000042", k=3)]
        ['I000120', 'I000007', 'I000981']
    """
    return default_recommender().recommend(user_id, k, exclude_purchased=exclude_purchased, category=category)
