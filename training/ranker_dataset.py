"""The reranker's training set: requests, their candidates, point-in-time features and graded labels.

A **request** is a user at a moment t: the first event of one of their sessions (by `session_id`,
or by UTC day when a shop logs no sessions, as in the Amazon import). Its **labels** are what the
user did in that session, graded by the strongest interaction with each item:

    grade  event         gain   why this gain
    0      none / view   0      a view is where a session starts, not evidence the user liked the item
    1      click         1      the unit
    2      add_to_cart   3      a cart is worth a few clicks: it is a stated intent to buy
    3      purchase      10     the shop's goal; about three carts' worth (typical cart-to-order rates)

The gains are LightGBM's `label_gain`, so NDCG during training counts a purchase ten times a click.
Requests whose session holds no click, cart or purchase carry no ranking signal and are dropped.

**Candidates** are the retriever's top `candidates` items for the user's features as of t: the
list serving hands the ranker, and nothing else by default. `inject_positives` adds the session's
positives the retriever missed, with their true retriever scores, plus as many random items from
outside the list. It is off because it teaches a shortcut: the injected group is half positives
against about 1% inside the list, so "sits past the list" (retriever_rank >= candidates) predicts
the label. On the demo shop the ranker put 78% of its split gain on retriever_rank, at 199.5
(200 candidates), and out of sample it was no better than training on real lists (NDCG@10 0.1308
vs 0.1314, `vitrine evaluate ranker --inject-positives` / `--no-inject-positives`).

**Features** come through Feast's `ranker` feature service with point-in-time joins: the user's
`user_stats` / `user_recent_items` as of t, the items' `item_stats` / `item_embedding` as of the
request's day (daily snapshots hold only events before their day, so nothing at or after t leaks).
They are turned into the model matrix by `ranking.ranker_features.build_features`, the same
function the online path calls.

Example:
    >>> requests = label_requests(events, start, end)
    >>> dataset = build_dataset(requests, user_rows, item_tables, retriever, DatasetConfig())
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from rich.progress import Progress

from ranking.ranker_features import FEATURE_NAMES, ItemTable, UserContext, build_features
from vitrine.errors import InvalidInput
from vitrine.options import bar_shown

# Label grade of each event type; the contract's funnel order (vitrine.shop.contract.EVENT_TYPES).
LABEL_GRADES: Mapping[str, int] = {"view": 0, "click": 1, "add_to_cart": 2, "purchase": 3}
# Gain per grade (index = grade), passed to LightGBM as `label_gain`; see the module docstring.
LABEL_GAIN: tuple[float, ...] = (0.0, 1.0, 3.0, 10.0)
PURCHASE = LABEL_GRADES["purchase"]

# Retriever candidates per request; the online path reranks the same number.
DEFAULT_CANDIDATES = 200
# Cap on training requests: ~20k requests x 200 candidates = 4M rows trains in about a minute on 2 cores.
DEFAULT_MAX_REQUESTS = 20_000


@dataclass(frozen=True)
class DatasetConfig:
    """How requests become rows.

    Args:
        candidates: retriever top-N per request.
        inject_positives: add the session's positives the retriever missed (training only; never in evaluation).
        negatives_per_injected: random out-of-list items injected per injected positive.
        max_requests: sample at most this many requests (the most recent are not favoured: uniform, seeded).
        seed: sampling seed.
    """

    candidates: int = DEFAULT_CANDIDATES
    inject_positives: bool = False  # see the module docstring
    negatives_per_injected: int = 1
    max_requests: int = DEFAULT_MAX_REQUESTS
    seed: int = 0


class CandidateSource(Protocol):
    """What the dataset needs from the retriever (adapted from `ranking.retriever.Retriever`).

    `candidates` returns, for each user-feature row, the top-k item ids and scores as of that row's
    time; `score_items` scores given items for each row with the same model (for injected items).
    """

    version: str

    def candidates(self, user_rows: pd.DataFrame, k: int) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def score_items(self, user_rows: pd.DataFrame, item_ids: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def catalog(self) -> np.ndarray: ...


@dataclass(frozen=True)
class Requests:
    """Labelled requests.

    Args:
        frame: one row per request: request_id (int), user_id, timestamp (UTC), day (UTC midnight).
        labels: one row per (request_id, item_id) with grade >= 1, and revenue (purchase value, else 0).
    """

    frame: pd.DataFrame
    labels: pd.DataFrame

    def __len__(self) -> int:
        return len(self.frame)

    def first_per_user(self) -> "Requests":
        """Each user's first request only: their next session after the window's start."""
        keep = self.frame.drop_duplicates("user_id", keep="first").reset_index(drop=True)
        return Requests(keep, self.labels[self.labels["request_id"].isin(keep["request_id"])].reset_index(drop=True))

    def sample(self, max_requests: int, seed: int) -> "Requests":
        """A uniform, seeded sample of at most `max_requests` requests (all when fewer)."""
        if len(self.frame) <= max_requests:
            return self
        keep = self.frame.sample(n=max_requests, random_state=seed).sort_values("timestamp", kind="stable")
        return Requests(keep.reset_index(drop=True), self.labels[self.labels["request_id"].isin(keep["request_id"])])


def label_requests(events: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, items: pd.DataFrame | None = None) -> Requests:
    """Requests whose session starts in [start, end), with graded labels from that session.

    Args:
        events: contract events (user_id, item_id, event_type, timestamp; optional session_id, price, quantity).
        start, end: UTC bounds on the request time.
        items: catalog (item_id, price) to value purchases logged without a price.

    Example:
        >>> requests = label_requests(read_events(data), pd.Timestamp("2026-01-20", tz="UTC"), pd.Timestamp("2026-02-01", tz="UTC"))
    """
    missing = {"user_id", "item_id", "event_type", "timestamp"} - set(events.columns)
    if missing:
        raise InvalidInput(f"events: columns {sorted(missing)} missing")
    frame = events[["user_id", "item_id", "event_type", "timestamp"]].copy()
    has_sessions = "session_id" in events.columns and events["session_id"].notna().any()
    day = frame["timestamp"].dt.floor("D")
    if has_sessions:
        # Events without a session id fall back to (user, day), as in a shop without sessions.
        session = events["session_id"].astype(object).where(events["session_id"].notna(), None)
        frame["session"] = np.where(session.isna(), frame["user_id"].astype(str) + "@" + day.astype(str), session.astype(str))
    else:
        frame["session"] = frame["user_id"].astype(str) + "@" + day.astype(str)
    frame["grade"] = frame["event_type"].map(LABEL_GRADES).fillna(0).astype(np.int8)
    price = events["price"] if "price" in events.columns else pd.Series(np.nan, index=events.index)
    if items is not None and "price" in items.columns:
        price = price.fillna(frame["item_id"].map(items.set_index("item_id")["price"]))
    quantity = events["quantity"].fillna(1.0) if "quantity" in events.columns else 1.0
    frame["revenue"] = np.where(frame["grade"] == PURCHASE, (price * quantity).fillna(0.0), 0.0)

    starts = frame.groupby(["user_id", "session"], sort=False)["timestamp"].min().rename("timestamp").reset_index()
    starts = starts[(starts["timestamp"] >= start) & (starts["timestamp"] < end)]
    positives = frame[frame["grade"] > 0].groupby(["session", "item_id"], sort=False).agg(
        grade=("grade", "max"), revenue=("revenue", "sum")
    ).reset_index()
    starts = starts[starts["session"].isin(positives["session"])]
    starts = starts.sort_values(["timestamp", "user_id"], kind="stable").reset_index(drop=True)
    starts["request_id"] = np.arange(len(starts), dtype=np.int64)
    starts["day"] = starts["timestamp"].dt.floor("D")
    labels = positives.merge(starts[["session", "request_id"]], on="session")[["request_id", "item_id", "grade", "revenue"]]
    return Requests(starts[["request_id", "user_id", "timestamp", "day"]], labels.reset_index(drop=True))


@dataclass
class RankerDataset:
    """Rows of (request, candidate): the model matrix and what evaluation needs beside it.

    Args:
        features: float32 (rows, len(FEATURE_NAMES)).
        labels: int (rows,) grades.
        revenue: float (rows,) purchase value of the row's item in the request's session.
        group_sizes: int (requests,) rows per request, in row order (LightGBM's query groups).
        request_ids: int (requests,).
        request_times: UTC timestamps (requests,).
        item_ids: object (rows,).
        from_retriever: bool (rows,) False for injected rows.
        positives: int (requests,) the request's number of positive items in its session (for recall).
    """

    features: np.ndarray
    labels: np.ndarray
    revenue: np.ndarray
    group_sizes: np.ndarray
    request_ids: np.ndarray
    request_times: np.ndarray
    item_ids: np.ndarray
    from_retriever: np.ndarray
    positives: np.ndarray

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.group_sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, keep: np.ndarray) -> "RankerDataset":
        """The requests where `keep` (bool, per request) is true."""
        offsets = self.offsets
        rows = np.zeros(len(self.labels), dtype=bool)
        for index in np.flatnonzero(keep):
            rows[offsets[index] : offsets[index + 1]] = True
        return RankerDataset(
            features=self.features[rows],
            labels=self.labels[rows],
            revenue=self.revenue[rows],
            group_sizes=self.group_sizes[keep],
            request_ids=self.request_ids[keep],
            request_times=self.request_times[keep],
            item_ids=self.item_ids[rows],
            from_retriever=self.from_retriever[rows],
            positives=self.positives[keep],
        )

    def summary(self) -> dict[str, float]:
        return {
            "requests": float(len(self.group_sizes)),
            "rows": float(len(self.labels)),
            "positive_rows": float((self.labels > 0).sum()),
            "purchase_rows": float((self.labels == PURCHASE).sum()),
            "injected_rows": float((~self.from_retriever).sum()),
        }


def build_dataset(
    requests: Requests,
    user_rows: pd.DataFrame,
    item_tables: Callable[[pd.Timestamp], ItemTable],
    retriever: CandidateSource,
    config: DatasetConfig,
    progress: bool = True,
) -> RankerDataset:
    """Candidates, features and labels for every request.

    Args:
        requests: from `label_requests`.
        user_rows: user features as of each request, aligned row for row with `requests.frame`
            (Feast feature names; the point-in-time join's output).
        item_tables: the item table as of a request day (`day -> ItemTable`).
        retriever: candidate source.
        config: candidates per request, injection.
        progress: show a progress bar.
    """
    if len(user_rows) != len(requests.frame):
        raise InvalidInput(f"user features: {len(user_rows)} rows for {len(requests.frame)} requests")
    rng = np.random.default_rng(config.seed)
    frame = requests.frame.reset_index(drop=True)
    user_rows = user_rows.reset_index(drop=True)
    labels_by_request = {rid: group for rid, group in requests.labels.groupby("request_id", sort=False)}
    catalog = retriever.catalog()

    retrieved = retriever.candidates(user_rows, config.candidates)
    ids_per_request: list[np.ndarray] = []
    scores_per_request: list[np.ndarray] = []
    flags_per_request: list[np.ndarray] = []
    injected_ids: list[np.ndarray] = []
    for index, (ids, scores) in enumerate(retrieved):
        ids = np.asarray(ids, dtype=object)
        extra = np.empty(0, dtype=object)
        if config.inject_positives:
            positive = labels_by_request.get(int(frame.at[index, "request_id"]))
            wanted = np.asarray([] if positive is None else positive["item_id"].to_numpy(dtype=object), dtype=object)
            # Only items the retriever could ever return: serving never sees the others as candidates.
            missed = wanted[~np.isin(wanted, ids) & np.isin(wanted, catalog)]
            if len(missed) and config.negatives_per_injected > 0:
                pool = catalog[~np.isin(catalog, ids) & ~np.isin(catalog, wanted)]
                size = min(len(pool), len(missed) * config.negatives_per_injected)
                negatives = rng.choice(pool, size=size, replace=False) if size else np.empty(0, dtype=object)
                extra = np.concatenate([missed, negatives]).astype(object)
            else:
                extra = missed.astype(object)
        ids_per_request.append(ids)
        scores_per_request.append(np.asarray(scores, dtype=np.float32))
        injected_ids.append(extra)
    extra_scores = retriever.score_items(user_rows, injected_ids) if any(len(e) for e in injected_ids) else [np.empty(0, np.float32)] * len(injected_ids)
    for index, extra in enumerate(injected_ids):
        ids_per_request[index] = np.concatenate([ids_per_request[index], extra]).astype(object)
        scores_per_request[index] = np.concatenate([scores_per_request[index], np.asarray(extra_scores[index], dtype=np.float32)])
        flags_per_request.append(np.concatenate([np.ones(len(ids_per_request[index]) - len(extra), bool), np.zeros(len(extra), bool)]))

    blocks: list[np.ndarray] = []
    grades: list[np.ndarray] = []
    revenue: list[np.ndarray] = []
    positives = np.zeros(len(frame), dtype=np.int64)
    records = user_rows.to_dict(orient="records")
    tables: dict[pd.Timestamp, ItemTable] = {}
    with Progress(disable=not bar_shown(progress), transient=True) as bar:
        task = bar.add_task("ranker features", total=len(frame))
        for index in range(len(frame)):
            day = pd.Timestamp(frame.at[index, "day"])
            if day not in tables:
                tables.clear()  # requests are sorted by time: one day's table at a time
                tables[day] = item_tables(day)
            ids = ids_per_request[index]
            blocks.append(build_features(tables[day], UserContext.from_features(records[index]), ids, scores_per_request[index]))
            positive = labels_by_request.get(int(frame.at[index, "request_id"]))
            grade = np.zeros(len(ids), dtype=np.int64)
            value = np.zeros(len(ids), dtype=np.float64)
            if positive is not None:
                lookup = positive.set_index("item_id")
                matched = pd.Index(lookup.index).get_indexer(ids)
                hit = matched >= 0
                grade[hit] = lookup["grade"].to_numpy()[matched[hit]]
                value[hit] = lookup["revenue"].to_numpy()[matched[hit]]
                positives[index] = len(positive)
            grades.append(grade)
            revenue.append(value)
            bar.advance(task)

    sizes = np.array([len(ids) for ids in ids_per_request], dtype=np.int64)
    empty = np.empty((0, len(FEATURE_NAMES)), dtype=np.float32)
    return RankerDataset(
        features=np.concatenate(blocks) if blocks else empty,
        labels=np.concatenate(grades) if grades else np.empty(0, np.int64),
        revenue=np.concatenate(revenue) if revenue else np.empty(0),
        group_sizes=sizes,
        request_ids=frame["request_id"].to_numpy(dtype=np.int64),
        request_times=frame["timestamp"].to_numpy(),
        item_ids=np.concatenate(ids_per_request) if ids_per_request else np.empty(0, dtype=object),
        from_retriever=np.concatenate(flags_per_request) if flags_per_request else np.empty(0, bool),
        positives=positives,
    )
