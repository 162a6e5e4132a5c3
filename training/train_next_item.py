"""Fit the next-item recommender: the sequence tower, the co-visitation and popularity sources, and the reranker.

Settings are chosen on each user's own last item, then everything is trained again on all of it:

1. hold out: every user with two items or more loses their last one (the target);
2. the tower (`training.train_sequence`) trains on what is left, stopping early on the held-out
   items (or for exactly `epochs`);
3. those sources (the tower just trained, co-visitation and popularity of what is left) propose
   candidates for every held-out request (`ranking.next_item`), and LightGBM LambdaRank learns to
   put the target first, stopping early on a tenth of the requests within the serving budget of
   RANKER_ROUNDS trees (a larger learning rate is tried where the budget stopped it still gaining),
   or after exactly `rounds`;
4. refit: the tower is trained again from scratch on every item for the chosen epochs, and the
   co-visitation and popularity are counted on every item. The refit sources and the ranker are
   what is served: the newest items of each user are the best evidence of the next one, and the
   ranker's features describe the sources, not the items, so it carries over.

The public leave-last-out benchmark and the pipeline both call `fit_next_item` on the events they
may learn from; the benchmark scores the served lists on each user's next (test) item.

Example:
    fitted = fit_next_item(split.test.train, content)            # chooses epochs and rounds
    lists = ranked(fitted.sources, fitted.ranker, split.test.history(), depth=20)
    again = fit_next_item(more, content, epochs=fitted.epochs, rounds=fitted.rounds,
                          learning_rate=fitted.learning_rate)  # the pipeline's refit
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.covisitation import CoVisitation, CoVisitConfig
from feature_repo.sequences import Sequences
from ranking.next_item import FEATURE_NAMES, Candidates, CandidateSources, candidates, order_by
from ranking.sequence_retriever import SequenceRetriever
from ranking.sequence_tower import SequenceTowerConfig
from training.leave_last_out import Task
from training.train_sequence import LIST_DEPTH, SequenceTrainConfig, default_max_length, fit
from vitrine.errors import InvalidInput
from vitrine.paths import DataDir

NS_PER_DAY = 86_400 * 1_000_000_000
# Share of the ranker's training requests held out for its early stopping.
RANKER_HOLDOUT = 0.1
# LightGBM settings of the reranker, chosen on Toys' validation requests (a few thousand groups of
# ~270 rows with one positive each): slow learning (0.02), 31 leaves of at least 200 rows, patience
# 100, gave validation recall@10 0.1311 against 0.1249 for 0.05 / 63 leaves of 50 / patience 30;
# 500-row leaves and the rank_xendcg or binary objectives were no better (0.1259-0.1299).
RANKER_PARAMS: dict[str, Any] = {
    "objective": "lambdarank", "metric": "ndcg", "eval_at": [10],
    "num_leaves": 31, "min_data_in_leaf": 200, "feature_fraction": 0.9, "bagging_fraction": 0.8,
    "bagging_freq": 1, "lambdarank_truncation_level": 20, "verbose": -1, "seed": 0,
    # Same inputs, same trees: LightGBM otherwise times row- against column-wise histograms and keeps
    # the faster, and the two sum in different orders (Toys: 197 rounds in one run, 47 in the next).
    "deterministic": True, "force_col_wise": True,
}  # fmt: skip
# Most boosting rounds (the serving budget), and rounds without a gain on the held-out requests
# before stopping. A request walks its ~250 candidates through every tree (~4 us a tree at the scale
# shop): 100 trees are 0.4 ms of the 2 ms a request may take.
RANKER_ROUNDS, RANKER_PATIENCE = 100, 100
# Learning rates, tried in order while the last one still gained at the budget's last tree; the best
# on the held-out requests is kept (ties: the first). The scale shop's ranker went on to 295 trees at
# 0.02: a larger step reaches as far within the budget. Trying them on every shop instead chose 0.05
# on Gift Cards' 46 held-out requests (NDCG@10 .285 against .259) and lost on its test users (R@10
# .395 against .424): a choice that small samples cannot make is made only where the budget binds.
RANKER_RATES: tuple[float, ...] = (0.02, 0.05, 0.1)
# Fewest users with a held-out item for anything to be chosen on them.
MIN_HOLDOUT_USERS = 20


@dataclass(frozen=True)
class NextItemConfig:
    """How the system is fitted (saved with it).

    Args:
        tower: the tower's shape; None = `SequenceTowerConfig` with the window read from the data
            (`default_max_length`) and content when content vectors are given.
        train: how the tower trains.
        covisitation: how the co-visitation matrices are fitted and scored.
        threads: LightGBM's threads while training (serving uses one).
        max_holdout_users: users whose last item the epochs and the ranker are chosen on (a seeded
            sample when more have one): 50k requests of ~200 candidates are 10M ranker rows, and
            the epoch's validation pass is a [users, items] product.
        max_train_users: users whose sequences the tower trains on (a seeded sample), None = all;
            co-visitation and popularity always count everyone. For catalogs whose full log does
            not fit the time one has (the benchmark-scale shop); quality drops with it.
    """

    tower: SequenceTowerConfig | None = None
    train: SequenceTrainConfig = SequenceTrainConfig()
    covisitation: CoVisitConfig = CoVisitConfig()
    threads: int = 2
    max_holdout_users: int = 50_000
    max_train_users: int | None = None


@dataclass
class NextItemFit:
    """The served system and how it was chosen.

    Attributes:
        sources: the refit sources (tower, co-visitation, popularity over every given item).
        ranker: the LightGBM booster (features: `ranking.next_item.FEATURE_NAMES`).
        epochs: the tower's epochs (chosen on the held-out items, or given).
        rounds: the ranker's boosting rounds (chosen, or given).
        learning_rate: the ranker's (chosen among RANKER_RATES, or given).
        tower_config: the tower's shape.
        holdout: figures on the held-out items: the tower alone (its best epoch), and the ranker's
            NDCG@10 on its own early-stopping requests.
        seconds: wall time of each part.
    """

    sources: CandidateSources
    ranker: Any
    epochs: int
    rounds: int
    learning_rate: float
    tower_config: SequenceTowerConfig
    holdout: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)


def holdout_task(sequences: Sequences, max_users: int | None = None, seed: int = 0) -> Task:
    """Every user with two items or more loses their last item; up to `max_users` of them (seeded sample) are scored on it."""
    users = np.flatnonzero(sequences.lengths >= 2)
    train = sequences.truncated(1, users)
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return Task(users, train, sequences.items[sequences.offsets[1:][users] - 1])


def sample_users(sequences: Sequences, max_users: int | None, seed: int = 0) -> Sequences:
    """The sequences of up to `max_users` users (a seeded sample), all of them when None."""
    if max_users is None or len(sequences.user_ids) <= max_users:
        return sequences
    keep = np.zeros(len(sequences.user_ids), dtype=bool)
    keep[np.random.default_rng(seed).choice(len(keep), max_users, replace=False)] = True
    return sequences.truncated_from(np.where(keep, 0, sequences.lengths))


def fit_sources(sequences: Sequences, retriever: SequenceRetriever, config: CoVisitConfig = CoVisitConfig()) -> CandidateSources:
    """The tower's retriever with co-visitation, popularity and repeat shares counted on the same sequences."""
    popularity = np.bincount(sequences.items, minlength=sequences.n_items).astype(np.float32)
    return CandidateSources(retriever, CoVisitation.fit(sequences, config), popularity, sequences.repeat_share())


def elapsed_days(before: Sequences, users: np.ndarray, moments: np.ndarray) -> np.ndarray | None:
    """[len(users)] days from each user's newest item in `before` to their request at `moments` (ns); None without times."""
    if before.moments is None:
        return None
    # Whole seconds, as the online store keeps it (`user_sequence.last_item_at_s`): up to a second
    # of train/serve skew otherwise, .00001 of a day for a request just after the user's last item.
    last = before.moments[np.maximum(before.offsets[1:][users] - 1, 0)] // 1_000_000_000 * 1_000_000_000
    has = before.lengths[users] > 0
    return np.where(has, (moments - last) / NS_PER_DAY, np.nan).astype(np.float32)


def fit_next_item(
    sequences: Sequences,
    content: np.ndarray | None = None,
    config: NextItemConfig = NextItemConfig(),
    *,
    epochs: int | None = None,
    rounds: int | None = None,
    learning_rate: float | None = None,
    show_progress: bool = False,
) -> NextItemFit:
    """Choose on each user's last item, train the ranker on those requests, refit the sources on everything.

    Args:
        sequences: what the system may learn from (catalog rows; `content` row-aligned).
        content: [items, C] item content vectors (CLIP) or None.
        epochs / rounds: train the tower / the ranker exactly this long instead of choosing (the refit
            of a configuration chosen before); `learning_rate` with `rounds` (default: the first of RANKER_RATES).

    Raises:
        InvalidInput: too few users with two items to hold any out.
    """
    log = _logger(show_progress)
    task = holdout_task(sequences, config.max_holdout_users)
    if len(task.users) < MIN_HOLDOUT_USERS:
        raise InvalidInput(f"next-item recommender: {len(task.users)} users have two items or more; "
                           f"at least {MIN_HOLDOUT_USERS} are needed to choose anything on")
    tower_config = config.tower or SequenceTowerConfig(max_length=default_max_length(task.train), use_content=content is not None)
    seconds: dict[str, float] = {}

    began = time.perf_counter()
    log(f"sequence tower on {len(task.users):,} users' items but their last" + ("" if epochs else ": choosing epochs on the last"))
    trained_on = sample_users(task.train, config.max_train_users)
    chosen = fit(trained_on, content, validation=None if epochs else task, epochs=epochs, model_config=tower_config,
                 train_config=config.train, show_progress=show_progress)
    seconds["tower_holdout"] = round(time.perf_counter() - began, 1)

    began = time.perf_counter()
    held = fit_sources(task.train, retriever_of(chosen.model, trained_on), config.covisitation)
    # A held-out item's request came when the user met it.
    requests = candidates(held, task.history(), request_elapsed(sequences, task))
    log(f"reranker: LightGBM LambdaRank on {len(task.users):,} requests (the target among the candidates for "
        f"{candidate_recall(requests, task.targets):.1%})")
    ranker, rate, rates = fit_ranker([(requests, task.targets)], rounds=rounds, learning_rate=learning_rate, threads=config.threads)
    seconds["ranker"] = round(time.perf_counter() - began, 1)

    began = time.perf_counter()
    log(f"refit: the tower for {chosen.epochs} epochs on every item")
    trained_on = sample_users(sequences, config.max_train_users)
    refit = fit(trained_on, content, epochs=chosen.epochs, model_config=tower_config, train_config=config.train, show_progress=show_progress)
    sources = fit_sources(sequences, retriever_of(refit.model, trained_on, like=held.retriever), config.covisitation)
    seconds["refit"] = round(time.perf_counter() - began, 1)
    holdout = {"users": int(len(task.users)), "tower": chosen.summary()["validation"],
               "ranker_valid_ndcg@10": None if rates is None else rates[rate]["ndcg@10"],
               "ranker_rates": None if rates is None else {str(r): v for r, v in rates.items()},
               "candidate_recall": candidate_recall(requests, task.targets)}
    return NextItemFit(sources, ranker, chosen.epochs, int(ranker.num_trees()), rate, tower_config, holdout, seconds, chosen.curve)


def request_elapsed(sequences: Sequences, task: Task) -> np.ndarray | None:
    """[task users] days from each user's newest history item to the moment they met the target (`sequences` holds both)."""
    if sequences.moments is None:
        return None
    target_at = sequences.moments[sequences.offsets[1:][task.users] - 1]
    return elapsed_days(task.train, task.users, target_at)


def retriever_of(model: Any, trained_on: Sequences, like: SequenceRetriever | None = None) -> SequenceRetriever:
    """The served form of a tower fitted on `trained_on`: its item vectors (items it never trained on via the
    unknown row and content) and index; the content neighbour lists of `like`, a retriever over the same content."""
    known = np.bincount(trained_on.items, minlength=trained_on.n_items) > 0
    return SequenceRetriever.of(model, [str(i) for i in trained_on.item_ids], known,
                                content_neighbours=None if like is None else like.content_neighbours)


def ranked(sources: CandidateSources, ranker: Any, histories: Sequence[np.ndarray], depth: int = LIST_DEPTH,
           elapsed: np.ndarray | None = None, vectors: np.ndarray | None = None) -> np.ndarray:
    """[users, depth] the reranked candidates of each history (-1 padded): what serving answers, offline.

    `vectors`: the tower's user vectors of `histories`, when the caller has them already (see `candidates`).
    """
    found = candidates(sources, histories, elapsed, vectors)
    return order_by(found, -ranker.predict(found.frame(), num_threads=1), depth)


def candidate_recall(found: Candidates, targets: np.ndarray) -> float:
    """Share of requests whose target is among their candidates: the ceiling of any rerank."""
    return round(float(np.mean([(row == t).any() for row, t in zip(found.rows, targets)])), 5) if len(targets) else 0.0


def fit_ranker(requests: list[tuple[Candidates, np.ndarray]], *, rounds: int | None = None, learning_rate: float | None = None,
               threads: int = 2) -> tuple[Any, float, dict[float, dict[str, float]] | None]:
    """LightGBM LambdaRank over the candidates of requests whose target is among them (label: the target).

    Args:
        requests: (candidates, targets) per set of requests.
        rounds: train exactly this many rounds on every request at `learning_rate` (default: the first
            of RANKER_RATES); None: stop early on RANKER_HOLDOUT of the requests within RANKER_ROUNDS,
            at each of RANKER_RATES in turn while the previous one was best at its last round, and
            keep the best on them.

    Returns:
        The booster, its learning rate, and per rate tried its NDCG@10 on the early-stopping requests
        and its trees there (None when `rounds` is given).
    """
    import lightgbm as lgb

    frames, labels, groups, holdouts = [], [], [], []
    rng = np.random.default_rng(0)
    for found, targets in requests:
        label = (found.items == targets[found.users]).astype(np.int32)
        has_positive = np.bincount(found.users, weights=label, minlength=len(found.rows)) > 0
        keep = has_positive[found.users]
        frames.append(pd.DataFrame(found.matrix[keep], columns=list(FEATURE_NAMES)))
        labels.append(label[keep])
        groups.append(np.bincount(found.users[keep], minlength=len(found.rows))[has_positive])
        # Drawn for every request, positive or not, so a set of requests always splits the same way.
        holdouts.append((rng.random(len(found.rows)) < RANKER_HOLDOUT)[has_positive])
    features = pd.concat(frames, ignore_index=True)
    label, group, holdout = np.concatenate(labels), np.concatenate(groups), np.concatenate(holdouts)
    if not len(group):
        raise InvalidInput("reranker: no request has its target among the candidates; nothing to learn an order from")
    params = {**RANKER_PARAMS, "num_threads": threads}
    if rounds is not None:
        rate = RANKER_RATES[0] if learning_rate is None else learning_rate
        everything = lgb.Dataset(features, label, group=group, free_raw_data=False)
        return lgb.train({**params, "learning_rate": rate}, everything, num_boost_round=max(rounds, 1)), rate, None
    in_holdout = np.repeat(holdout, group)
    train = lgb.Dataset(features[~in_holdout], label[~in_holdout], group=group[~holdout], free_raw_data=False)
    valid = lgb.Dataset(features[in_holdout], label[in_holdout], group=group[holdout], free_raw_data=False)
    tried: dict[float, dict[str, float]] = {}
    chosen: tuple[Any, float] | None = None
    for rate in RANKER_RATES:
        booster = lgb.train({**params, "learning_rate": rate}, train, num_boost_round=RANKER_ROUNDS, valid_sets=[valid],
                            callbacks=[lgb.early_stopping(RANKER_PATIENCE, verbose=False)])
        ndcg = round(float(booster.best_score.get("valid_0", {}).get("ndcg@10", float("nan"))), 5)
        tried[rate] = {"ndcg@10": ndcg, "trees": int(booster.best_iteration)}
        if chosen is None or ndcg > tried[chosen[1]]["ndcg@10"]:
            chosen = (booster, rate)
        if booster.best_iteration < RANKER_ROUNDS:
            break  # it stopped gaining inside the budget: a larger step has nothing further to reach
    assert chosen is not None
    return chosen[0], chosen[1], tried


def _logger(show: bool) -> Any:
    def log(message: str) -> None:
        if show:
            print(message, file=sys.stderr, flush=True)

    return log


# Where `vitrine train next-item` writes its model dirs, under data/models/.
MODEL_SUBDIR = "next_item"
RETRIEVER_DIR, RANKER_DIR = "retriever", "ranker"
# MLflow experiment of the next-item runs.
EXPERIMENT = "vitrine-next-item"


@dataclass
class NextItemRun:
    """What `train_next_item` produced: the fit, where it is saved, its MLflow run and registered versions."""

    fitted: NextItemFit
    model_dir: Path
    run_id: str
    versions: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "model_dir": str(self.model_dir), "versions": self.versions, "epochs": self.fitted.epochs,
                "rounds": self.fitted.rounds, "learning_rate": self.fitted.learning_rate, "tower": self.fitted.tower_config.to_json(), "holdout": self.fitted.holdout,
                "seconds": self.fitted.seconds}


def content_vectors(data: DataDir, item_ids: Sequence[str] | np.ndarray) -> np.ndarray | None:
    """[items, C] the item vectors of `vitrine embed`, row-aligned with `item_ids` (zeros where an item has none); None without them."""
    if not data.item_embeddings.exists():
        return None
    frame = pd.read_parquet(data.item_embeddings, columns=["item_id", "embedding"])
    if frame.empty:
        return None
    vectors = np.stack(frame["embedding"].to_numpy()).astype(np.float32)
    rows = pd.Index(frame["item_id"].astype(str)).get_indexer([str(i) for i in item_ids])
    out = np.zeros((len(item_ids), vectors.shape[1]), dtype=np.float32)
    out[rows >= 0] = vectors[rows[rows >= 0]]
    return out


def save_next_item(fitted: NextItemFit, directory: Path, lineage: dict[str, str]) -> tuple[Path, Path]:
    """The retriever dir (`ranking.sequence_retriever`) and the ranker dir (`ranking.reranker`) of a fit, under `directory`."""
    from ranking.reranker import NEXT_ITEM, RankerMetadata, save_ranker
    from ranking.sequence_retriever import save_sequence_retriever

    retriever_dir = save_sequence_retriever(directory / RETRIEVER_DIR, fitted.sources.retriever,
                                            lineage={**lineage, "epochs": str(fitted.epochs)},
                                            covisitation=asdict(fitted.sources.covisitation.config))
    metadata = RankerMetadata(feature_names=FEATURE_NAMES, label_gain=(0.0, 1.0), best_iteration=fitted.rounds,
                              lineage={**lineage, "rounds": str(fitted.rounds), "learning_rate": str(fitted.learning_rate)}, kind=NEXT_ITEM)
    ranker_dir = save_ranker(fitted.ranker, directory / RANKER_DIR, metadata)
    return retriever_dir, ranker_dir


def train_next_item(
    data: DataDir,
    config: NextItemConfig = NextItemConfig(),
    *,
    end: pd.Timestamp | None = None,
    epochs: int | None = None,
    rounds: int | None = None,
    learning_rate: float | None = None,
    register: bool = True,
    show_progress: bool = True,
) -> NextItemRun:
    """Fit on the shop's events before `end` (all of them by default), save, log to MLflow and register both models.

    Args:
        end: learn only from events before this moment (the pipeline's challenger stops at its split).
        epochs / rounds / learning_rate: the refit of a configuration chosen before (see `fit_next_item`).
        register: new versions of `vitrine-retriever` and `vitrine-ranker` (False: only the run).
    """
    import mlflow

    from feature_repo.snapshots.build import read_sequences
    from vitrine.tracking import RANKER_MODEL, RETRIEVER_MODEL, configure, lineage, register_model

    sequences = read_sequences(data, end=end)
    content = content_vectors(data, sequences.item_ids)
    fitted = fit_next_item(sequences, content, config, epochs=epochs, rounds=rounds, learning_rate=learning_rate,
                           show_progress=show_progress)
    configure(data, EXPERIMENT)
    tags = {**lineage(data), "events_before": "all" if end is None else pd.Timestamp(end).isoformat(),
            "content": "item_embeddings" if content is not None else "none"}
    with mlflow.start_run(run_name="next-item") as run:
        mlflow.set_tags(tags)
        mlflow.log_params({**{f"tower.{k}": v for k, v in fitted.tower_config.to_json().items()},
                           **{f"train.{k}": v for k, v in config.train.__dict__.items()},
                           "epochs": fitted.epochs, "rounds": fitted.rounds, "learning_rate": fitted.learning_rate,
                           "users": len(sequences.user_ids), "items": sequences.n_items})
        tower = fitted.holdout.get("tower") or {}
        mlflow.log_metrics({f"holdout.tower.{k.replace('@', '_at_')}": float(v) for k, v in tower.items() if isinstance(v, (int, float))})
        if fitted.holdout.get("ranker_valid_ndcg@10") is not None:
            mlflow.log_metric("holdout.ranker.ndcg_at_10", float(fitted.holdout["ranker_valid_ndcg@10"]))
        mlflow.log_metric("holdout.candidate_recall", float(fitted.holdout["candidate_recall"]))
        for point in fitted.curve:
            mlflow.log_metric("holdout.tower.recall_at_10", float(point["recall@10"]), step=int(point["epoch"]))
        model_dir = data.models / MODEL_SUBDIR / run.info.run_id
        save_next_item(fitted, model_dir, {**tags, "run_id": run.info.run_id})
        mlflow.log_artifacts(str(model_dir / RETRIEVER_DIR), artifact_path=RETRIEVER_DIR)
        mlflow.log_artifacts(str(model_dir / RANKER_DIR), artifact_path=RANKER_DIR)
        versions: dict[str, str] = {}
        if register:
            base = run.info.artifact_uri.rstrip("/")
            version_tags = {**tags, "kind": "next-item", "epochs": str(fitted.epochs), "rounds": str(fitted.rounds),
                            "learning_rate": str(fitted.learning_rate)}
            versions[RETRIEVER_MODEL] = register_model(RETRIEVER_MODEL, f"{base}/{RETRIEVER_DIR}", run.info.run_id, version_tags)
            versions[RANKER_MODEL] = register_model(RANKER_MODEL, f"{base}/{RANKER_DIR}", run.info.run_id, version_tags)
    return NextItemRun(fitted, model_dir, run.info.run_id, versions)
