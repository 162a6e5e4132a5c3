"""Champion and challenger, measured on the same latest time split: the input of `promotion.decide`.

A model's own training run reports figures on *its* split; yesterday's champion reported on
yesterday's. Those do not compare. Here both registered pairs (retriever + ranker, by alias) are
scored on one split, today's, with the stages' own code:

- retriever: `training.retriever_data.time_split` (test users' features as of T, their new items
  after T, training history excluded), full ranking over the catalog, `ranking_metrics` (ranx):
  `retriever.recall_at_20/100/500`, `retriever.ndcg_at_10`;
- ranker: the requests after T (`label_requests`), each pair's own retriever candidates (no injected
  positives, as at serving), ordered by the pair's ranker, `evaluate_orders`: `ranker.ndcg_at_10`,
  `ranker.recall_at_10`, `ranker.purchases_at_10`, `ranker.revenue_at_10` (end to end: a retriever
  that misses the positives scores 0 for that request whatever the ranker does).

Plus a recall@K curve (PNG) of both retrievers, logged by the pipeline's evaluate step.

Example:
    split = LatestSplit.of(data, latest_split_time(data, min_days=3))
    figures = evaluate_pair(split, "challenger")   # {"retriever.recall_at_100": 0.41, ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.sequences import Sequences
from vitrine.paths import DataDir

# Cut-offs of the recall@K curve plot.
CURVE_KS = (10, 20, 50, 100, 200, 500)


# Users the latest split must hold at least (where the shop has them): Recall@100 over 200 users
# moves in steps of 0.005 per user, the promotion rule's smallest gain; fewer and one user's hit
# would decide a promotion.
DEFAULT_MIN_TEST_USERS = 200
# The pipeline's test window. Three days: enough sessions on the demo shop for stable Recall@100
# and NDCG@10 differences, while the models still train on 95% of a 60-day history. Sparse shops
# widen it by users (`latest_split_time`).
DEFAULT_EVAL_DAYS = 3


def latest_split_time(data: DataDir, min_days: int, min_users: int = DEFAULT_MIN_TEST_USERS) -> pd.Timestamp:
    """T of the pipeline's latest split (`training.retriever_data.choose_split_time`) over the stored shop.

    Reads only the events of the last days, doubling the days read until they hold `min_users`
    users (or the whole log): a dense shop's 3 days settle it in one read of 3 partitions.
    """
    import pyarrow.dataset as ds

    from training.retriever_data import choose_split_time
    from vitrine.errors import InvalidInput
    from vitrine.shop.store import event_days, read_events

    days = event_days(data)
    if not days:
        raise InvalidInput(f"{data.events}: no events to split")
    first, last = pd.Timestamp(days[0], tz="UTC"), pd.Timestamp(days[-1], tz="UTC")
    total = ds.dataset(str(data.events), format="parquet", partitioning="hive").count_rows()
    span = max(min_days, 1)
    while True:
        start = max(first, last - pd.Timedelta(days=span - 1))
        events = read_events(data, start=start.to_pydatetime(), columns=["user_id"])
        if start <= first or events["user_id"].nunique() >= min_users:
            break
        span *= 2
    return choose_split_time(events, min_days, min_users, total_events=total)


@dataclass
class LatestSplit:
    """Everything both pairs are scored on, read once.

    Both halves test what a model trained up to T is asked at T: each user's next interaction
    after T, i.e. the retriever's targets are the user's next new items (`time_split(...,
    next_only=True)`) and the ranker's requests the user's first session after T.
    """

    data: DataDir
    split: Any  # training.retriever_data.Split (time protocol)
    requests: Any  # training.ranker_dataset.Requests after T
    user_rows: pd.DataFrame  # ranker user features as of each request
    item_tables: Any  # day -> ItemTable
    max_requests: int

    @classmethod
    def of(cls, data: DataDir, cutoff: pd.Timestamp, max_requests: int | None = None) -> "LatestSplit":
        """Read the shop and features for the split at T = `cutoff` (`latest_split_time`)."""
        from feature_repo.sequences import positive_interactions
        from training.ranker_dataset import DEFAULT_MAX_REQUESTS, label_requests
        from training.retriever_data import time_split, with_features
        from training.train_ranker import point_in_time_features
        from vitrine.shop.store import read_events, read_items

        items = read_items(data)
        events = read_events(data)
        examples = with_features(data, positive_interactions(events))
        split = time_split(data, examples, items, cutoff=cutoff, next_only=True)
        end = pd.Timestamp(events["timestamp"].max()) + pd.Timedelta(seconds=1)
        limit = max_requests or DEFAULT_MAX_REQUESTS
        requests = label_requests(events, split.cutoff, end, items).first_per_user().sample(limit, seed=0)
        user_rows, tables = point_in_time_features(data, requests, items)
        return cls(data, split, requests, user_rows, tables, limit)

    @property
    def cutoff(self) -> pd.Timestamp:
        return pd.Timestamp(self.split.cutoff)


def retriever_top(split: Any, retriever: Any, k: int) -> np.ndarray:
    """[users, k] split-catalog rows of `retriever`'s exact top-k per test user (history excluded).

    The retriever ranks its own item table (the catalog it was trained with); its rows are mapped to
    the split's catalog rows, and items the split does not know come out as -1 (never a hit).
    """
    from training.retrieval_metrics import top_k_by_vectors

    index = retriever.index
    vectors = np.asarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)
    own_rows = {item: row for row, item in enumerate(retriever.item_ids)}
    split_ids = split.catalog["item_id"].astype(str).to_numpy()
    to_split = np.full(len(vectors), -1, dtype=np.int64)
    for split_row, item in enumerate(split_ids):
        if item in own_rows:
            to_split[own_rows[item]] = split_row
    exclude = [np.array([own_rows[split_ids[r]] for r in rows if split_ids[r] in own_rows], dtype=np.int64)
               for rows in split.history]
    users = retriever.user_vectors(split.test_users)
    top = top_k_by_vectors(users, vectors, exclude, k=min(k, len(vectors)))
    return to_split[top]


def recall_curve(top: np.ndarray, targets: list[np.ndarray], ks: tuple[int, ...] = CURVE_KS) -> dict[int, float]:
    """Mean recall@K over users with targets, for each K (the plot's points)."""
    scored = [(row, set(t.tolist())) for row, t in zip(top, targets) if len(t)]
    curve = {}
    for k in ks:
        hits = [len(want.intersection(row[:k].tolist())) / len(want) for row, want in scored]
        curve[k] = float(np.mean(hits)) if hits else 0.0
    return curve


def evaluate_pair(latest: LatestSplit, alias: str) -> tuple[dict[str, float], dict[int, float]]:
    """Metrics of `vitrine-retriever@alias` + `vitrine-ranker@alias` on the split, and the recall curve.

    Raises:
        ModelUnavailable: the alias does not exist or a model does not load.
    """
    from ranking.reranker import Reranker
    from ranking.retriever import Retriever
    from training.evaluate_ranker import evaluate_orders
    from training.ranker_dataset import DatasetConfig, build_dataset
    from training.retrieval_metrics import MAX_K, ranking_metrics
    from training.train_ranker import RetrieverCandidates

    retriever = Retriever.from_registry(latest.data, alias)
    reranker = Reranker.from_registry(latest.data, alias)
    split = latest.split
    top = retriever_top(split, retriever, MAX_K)
    figures = {f"retriever.{name.replace('@', '_at_')}": value
               for name, value in ranking_metrics(top, split.targets, len(split.catalog)).items()}
    dataset = build_dataset(latest.requests, latest.user_rows, latest.item_tables, RetrieverCandidates(retriever),
                            DatasetConfig(inject_positives=False, max_requests=latest.max_requests), progress=False)
    orders = evaluate_orders(dataset, {"reranked": reranker.score(dataset.features)})
    figures.update({f"ranker.{name}": value for name, value in orders["reranked"].items()})
    return figures, recall_curve(top, split.targets)


def plot_recall_curves(curves: dict[str, dict[int, float]], path: Path, cutoff: pd.Timestamp) -> Path:
    """Recall@K of each named retriever on one split, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ks = sorted(curve)
        axis.plot(ks, [curve[k] for k in ks], marker="o", label=name)
    axis.set_xscale("log")
    axis.set_xlabel("K (log scale)")
    axis.set_ylabel("recall@K")
    axis.set_title(f"vitrine-retriever recall@K, test after {cutoff:%Y-%m-%d}")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


@dataclass
class NextItemSplit:
    """The latest split as the next-item recommender sees it: each user's sequence before T and their next item after it.

    Attributes:
        before: every user's sequence of the events before T (catalog rows; what a model served at T knows).
        users: rows of `before`'s users with a history and a new item after T.
        targets: [len(users)] each such user's first new item after T.
    """

    before: Sequences
    users: np.ndarray
    targets: np.ndarray
    cutoff: pd.Timestamp
    target_at: np.ndarray  # [len(users)] ns: when each user met their target (their request)

    @classmethod
    def of(cls, data: DataDir, cutoff: pd.Timestamp) -> "NextItemSplit":
        from feature_repo.snapshots.build import read_sequences

        everything = read_sequences(data)
        assert everything.moments is not None
        starts, lengths = everything.offsets[:-1], everything.lengths
        # Per user, how many items came before T (each sequence is in time order, so they come first).
        owner = np.repeat(np.arange(len(lengths)), lengths)
        before_count = np.bincount(owner[everything.moments < pd.Timestamp(cutoff).value], minlength=len(lengths))
        users = np.flatnonzero((before_count > 0) & (before_count < lengths))
        targets = everything.items[starts[users] + before_count[users]]
        target_at = everything.moments[starts[users] + before_count[users]]
        before = everything.truncated_to(before_count)
        return cls(before, users, targets, pd.Timestamp(cutoff), target_at)

    def histories(self) -> list[np.ndarray]:
        return [self.before.user(int(u)) for u in self.users]

    def elapsed(self) -> np.ndarray | None:
        """[len(users)] days from each user's newest item before T to their target."""
        from training.train_next_item import elapsed_days

        return elapsed_days(self.before, self.users, self.target_at)


def evaluate_next_item_pair(data: DataDir, split: NextItemSplit, alias: str) -> tuple[dict[str, float], dict[int, float]]:
    """Metrics of the next-item pair `@alias` served as it would have been at T, and the tower's recall curve.

    The pair's tower and ranker come from the registry; co-visitation and popularity are counted
    on the events before T (what the daily feature step would have served at T). Figures use the
    names the promotion rules read: `retriever.recall_at_20/100/500`, `retriever.ndcg_at_10` (the
    tower's list alone), `ranker.ndcg_at_10`, `ranker.recall_at_10/20` (the served list).

    Raises:
        ModelUnavailable: the alias does not exist, a model does not load, or they are not a next-item pair.
    """
    from ranking.next_item import tower_top
    from ranking.reranker import NEXT_ITEM, Reranker
    from ranking.retriever import retriever_from_registry
    from ranking.sequence_retriever import SequenceRetriever
    from training.leave_last_out import evaluate_lists
    from training.retrieval_metrics import MAX_K, ranking_metrics
    from training.train_next_item import fit_sources, ranked
    from vitrine.errors import ModelUnavailable

    retriever = retriever_from_registry(data, alias)
    reranker = Reranker.from_registry(data, alias)
    if not isinstance(retriever, SequenceRetriever) or reranker.kind != NEXT_ITEM:
        raise ModelUnavailable(f"@{alias}: a {retriever.kind} retriever and a {reranker.kind} ranker, not a next-item pair")
    before = split.before.remapped(retriever.item_ids)
    to_own = pd.Index(retriever.item_ids).get_indexer(split.before.item_ids[split.targets].astype(str))
    sources = fit_sources(before, retriever)
    histories = [before.user(int(u)) for u in split.users]
    tower = tower_top(retriever, histories, retriever.vectors_of(histories), min(MAX_K, len(retriever.item_ids)))
    targets = [np.array([t]) if t >= 0 else np.zeros(0, dtype=np.int64) for t in to_own]
    figures = {f"retriever.{name.replace('@', '_at_')}": value for name, value in ranking_metrics(tower, targets, len(retriever.item_ids)).items()}
    served = ranked(sources, reranker.booster, histories, elapsed=split.elapsed())
    for name, value in evaluate_lists(served, to_own, len(retriever.item_ids)).items():
        if name.startswith(("recall@", "ndcg@")):
            figures[f"ranker.{name.replace('@', '_at_')}"] = value
    return figures, recall_curve(tower, targets)
