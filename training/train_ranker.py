"""`vitrine train ranker`: a LightGBM LambdaRank model over the retriever's candidates.

The task (separate from the serving wrapper `ranking.reranker.Reranker`, as TorchRec separates
`TwoTowerTrainTask` from `TwoTowerRetrieval`):

1. Time windows, all before `end` (the last event, or a split time for evaluation):
   train requests in [end - valid_days - train_days, end - valid_days), validation requests in
   [end - valid_days, end). Validation is later than training, as serving will be. Where those
   days hold fewer requests with a positive candidate than `min_train_requests` /
   `min_valid_requests` (a shop with a few orders a day), each window grows back by whole days
   until it does (`Windows.fitting`, `fitted_datasets`). A refit (`RankerRefit`) trains on the
   requests from the validation run's first day to `end`, for the rounds early stopping chose.
2. `training.ranker_dataset`: labelled requests, the retriever's candidates as of each request,
   point-in-time features through Feast's `ranker` feature service.
3. `lightgbm.train` with objective `lambdarank`, one query group per request, graded labels with
   `label_gain = LABEL_GAIN`, NDCG@10 on both sets per iteration, early stopping on validation.
4. Saved as LightGBM text + `ranker.json` (ordered feature list, gains, lineage); logged to MLflow
   (params, NDCG per iteration, gain importance as a table and a PNG) and registered as
   `vitrine-ranker`, tagged with the retriever version and feature service it was trained with.

Example:
    >>> result = train_ranker(DataDir.resolve(), RankerTrainConfig())
    >>> Reranker.load(result.model_dir).feature_names == FEATURE_NAMES
    True
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ranking.ranker_features import FEATURE_NAMES, ItemTable
from ranking.reranker import SERVING_THREADS, RankerMetadata, save_ranker
from training.ranker_dataset import (
    LABEL_GAIN,
    CandidateSource,
    DatasetConfig,
    RankerDataset,
    Requests,
    build_dataset,
    label_requests,
)
from vitrine.errors import FeatureUnavailable, InvalidInput
from vitrine.paths import DataDir

# The Feast feature service the ranker reads (declared by the feature repo).
FEATURE_SERVICE = "ranker"
# The service that holds `user_recent_items` when the ranker's does not (see `user_features_at`).
RECENT_ITEMS_SERVICE = "retriever"
# Passthrough column that keeps each feature row tied to its entity row through the join.
ENTITY_ROW = "_ranker_row"
# Local copies of trained rankers: data/models/ranker/<run id>/.
MODELS_SUBDIR = "ranker"
# Cut-off of the NDCG tracked during training and used for early stopping.
EVAL_AT = 10


@dataclass(frozen=True)
class RankerTrainConfig:
    """Model and data settings of one training run (every field is logged as an MLflow param).

    Args:
        train_days: days of training requests before the validation window.
        valid_days: days of validation requests just before `end` (early stopping, reported NDCG).
        min_train_requests, min_valid_requests: requests with a positive candidate each window is
            widened to hold (whole days back in time), where the log has them.
        dataset: candidates per request, injection and request sampling.
        learning_rate, num_leaves, min_data_in_leaf, feature_fraction, bagging_fraction, lambda_l2:
            LightGBM's; defaults are its usual ranking settings, a little more regularised for small shops.
        max_rounds: upper bound on boosting rounds; early stopping normally ends sooner.
        early_stopping_rounds: rounds without validation NDCG@10 gain before stopping.
        num_threads: training threads (serving always uses SERVING_THREADS).
        seed: LightGBM's seed.
    """

    train_days: int = 21  # three weeks: several sessions for most active users
    valid_days: int = 3  # enough requests for a stable NDCG on the default shop
    # Requests with a positive among their candidates each window holds at least, where the log has
    # them: on a shop with a few orders a day the windows grow back in time instead of failing
    # (`Windows.fitting`). A few hundred validation groups keep early stopping from following single
    # requests; training gets five times that. The demo shop's day windows hold far more.
    min_train_requests: int = 1_000
    min_valid_requests: int = 200
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 50  # leaves fit on a few hundred rows at least, not single requests
    feature_fraction: float = 0.9
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_rounds: int = 400
    early_stopping_rounds: int = 30
    num_threads: int = 2  # the machine's cores; training is the only job running
    seed: int = 0

    def params(self) -> dict[str, Any]:
        """LightGBM parameters of this config."""
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [EVAL_AT],
            "label_gain": list(LABEL_GAIN),
            "lambdarank_truncation_level": 2 * EVAL_AT,  # pairs beyond twice the screen matter little
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": self.lambda_l2,
            "num_threads": self.num_threads,
            "seed": self.seed,
            "deterministic": True,
            "force_col_wise": True,
            "verbosity": -1,
        }

    def flat(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "dataset"}
        out.update({f"dataset.{k}": v for k, v in asdict(self.dataset).items()})
        return out


@dataclass
class FitResult:
    """A trained booster and its learning curves."""

    booster: Any
    best_iteration: int
    history: dict[str, list[float]]  # "train" / "valid" -> NDCG@10 per iteration
    importance: pd.DataFrame  # feature, gain, split; sorted by gain


def fit_ranker(train: RankerDataset, valid: RankerDataset, config: RankerTrainConfig) -> FitResult:
    """LambdaRank on `train` with early stopping on `valid` (a later time window).

    Example:
        >>> fit = fit_ranker(train_set, valid_set, RankerTrainConfig(max_rounds=50))
        >>> fit.history["valid"][fit.best_iteration - 1]
    """
    import lightgbm

    for name, part in (("train", train), ("validation", valid)):
        _require_positives(name, part)
    names = list(FEATURE_NAMES)
    train_set = lightgbm.Dataset(train.features, label=train.labels, group=train.group_sizes, feature_name=names, free_raw_data=False)
    valid_set = lightgbm.Dataset(valid.features, label=valid.labels, group=valid.group_sizes, feature_name=names, reference=train_set)
    record: dict[str, Any] = {}
    booster = lightgbm.train(
        config.params(),
        train_set,
        num_boost_round=config.max_rounds,
        valid_sets=[train_set, valid_set],
        valid_names=["train", "valid"],
        callbacks=[lightgbm.early_stopping(config.early_stopping_rounds, verbose=False), lightgbm.record_evaluation(record)],
    )
    key = f"ndcg@{EVAL_AT}"
    history = {part: [float(v) for v in record[part][key]] for part in ("train", "valid")}
    best = int(booster.best_iteration) or len(history["valid"])
    importance = pd.DataFrame(
        {
            "feature": names,
            "gain": booster.feature_importance("gain", iteration=best),
            "split": booster.feature_importance("split", iteration=best),
        }
    ).sort_values("gain", ascending=False, kind="stable").reset_index(drop=True)
    return FitResult(booster, best, history, importance)


def refit_ranker(train: RankerDataset, config: RankerTrainConfig, rounds: int) -> FitResult:
    """LambdaRank on `train` for exactly `rounds` rounds: a refit with what a validation run chose.

    No validation set: the rounds were chosen by early stopping on the validation run, whose
    requests are now part of `train`. The history holds the training NDCG@10 only.
    """
    import lightgbm

    _require_positives("refit train", train)
    names = list(FEATURE_NAMES)
    train_set = lightgbm.Dataset(train.features, label=train.labels, group=train.group_sizes, feature_name=names, free_raw_data=False)
    record: dict[str, Any] = {}
    booster = lightgbm.train(config.params(), train_set, num_boost_round=max(1, rounds), valid_sets=[train_set],
                             valid_names=["train"], callbacks=[lightgbm.record_evaluation(record)])  # fmt: skip
    history = {"train": [float(v) for v in record["train"][f"ndcg@{EVAL_AT}"]], "valid": []}
    importance = pd.DataFrame(
        {"feature": names, "gain": booster.feature_importance("gain"), "split": booster.feature_importance("split")}
    ).sort_values("gain", ascending=False, kind="stable").reset_index(drop=True)
    return FitResult(booster, max(1, rounds), history, importance)


def _require_positives(name: str, part: RankerDataset) -> None:
    """A set without a single positive candidate cannot teach an order: say so, with its counts."""
    if len(part.group_sizes) == 0 or not (part.labels > 0).any():
        raise InvalidInput(
            f"ranker {name} set: no request with a positive candidate ({len(part.group_sizes)} requests, "
            f"{int(part.positives.sum())} positives, none among the retriever's candidates); the log before the "
            "split holds too few sessions with a click, cart or purchase"
        )


def positive_requests(part: RankerDataset) -> int:
    """Requests of `part` with at least one positive among their candidates: the groups LambdaRank learns from."""
    if len(part.group_sizes) == 0:
        return 0
    request = np.repeat(np.arange(len(part.group_sizes)), part.group_sizes)
    return int(np.unique(request[part.labels > 0]).size)


# --- reading the shop, the feature store and the retriever -------------------------------------


class RetrieverCandidates:
    """`ranking.retriever.Retriever` as the dataset's `CandidateSource`.

    Scores of injected items use the same user vector and item vectors as the index (inner product
    of unit vectors), so an injected row's score means what a retrieved row's score means.
    """

    def __init__(self, retriever: Any):
        self.retriever = retriever
        self.version = str(retriever.version)
        self._ids = np.asarray(retriever.item_ids, dtype=object)
        self._rows = {item: row for row, item in enumerate(self._ids)}
        self._vectors: np.ndarray | None = None

    def catalog(self) -> np.ndarray:
        return self._ids

    def candidates(self, user_rows: pd.DataFrame, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        found = self.retriever.retrieve_batch(user_rows, k)
        return [
            (np.array([c.item_id for c in row], dtype=object), np.array([c.score for c in row], dtype=np.float32))
            for row in found
        ]

    def score_items(self, user_rows: pd.DataFrame, item_ids: Sequence[np.ndarray]) -> list[np.ndarray]:
        vectors = self._item_vectors()
        users = self.retriever.user_vectors(user_rows)
        out = []
        for user, ids in zip(users, item_ids):
            rows = np.array([self._rows.get(item, -1) for item in ids], dtype=np.int64)
            scores = np.full(len(ids), np.nan, dtype=np.float32)
            scores[rows >= 0] = vectors[rows[rows >= 0]] @ user
            out.append(scores)
        return out

    def _item_vectors(self) -> np.ndarray:
        if self._vectors is None:
            index = self.retriever.index
            self._vectors = np.asarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)
        return self._vectors


def _strip_prefixes(frame: pd.DataFrame) -> pd.DataFrame:
    """Bare feature names: a one-sided read holds one `views_30d`, whatever view prefix Feast gave it."""
    renames = {c: c.split("__", 1)[1] for c in frame.columns if "__" in c and not c.startswith("__")}
    return frame.rename(columns=renames)


def user_features_at(data: DataDir, users: pd.DataFrame) -> pd.DataFrame:
    """The user side of the `ranker` service for each (user_id, timestamp) row, point in time.

    `user_recent_items` is read through the `retriever` service when the `ranker` service does not
    hold it (the feature repo's `ranker_v1` lists user_stats and item_stats only).
    """
    from feature_repo.store import historical_features

    entity = pd.DataFrame({"user_id": users["user_id"].astype(str).to_numpy(), "event_timestamp": users["timestamp"].to_numpy()})
    entity[ENTITY_ROW] = np.arange(len(entity))
    rows = _aligned(historical_features(data, entity, FEATURE_SERVICE), entity)
    if "recent_item_ids" not in rows.columns:
        recent = _aligned(historical_features(data, entity, RECENT_ITEMS_SERVICE), entity)
        rows["recent_item_ids"] = recent["recent_item_ids"] if "recent_item_ids" in recent else None
    return rows.drop(columns=[ENTITY_ROW])


def _aligned(rows: pd.DataFrame, entity: pd.DataFrame) -> pd.DataFrame:
    """One output row per entity row, in entity order; rows the join left out come back as NaN.

    Feast's offline join returns no row for an entity that has no snapshot at or before its
    time (a first-time user, an item listed later); for the ranker that is a user or item
    without history, i.e. missing features, not an error.
    """
    rows = _strip_prefixes(rows)
    if ENTITY_ROW not in rows.columns:
        raise FeatureUnavailable(f"feature store: the passthrough column {ENTITY_ROW} did not come back")
    if rows[ENTITY_ROW].duplicated().any():
        raise FeatureUnavailable("feature store: an entity row came back twice from the point-in-time join")
    features = rows.drop(columns=[c for c in entity.columns if c != ENTITY_ROW and c in rows.columns])
    return entity.merge(features, on=ENTITY_ROW, how="left").sort_values(ENTITY_ROW, kind="stable").reset_index(drop=True)


def item_features_at(data: DataDir, items: pd.DataFrame, days: Sequence[pd.Timestamp]) -> pd.DataFrame:
    """The item side of the `ranker` service for every catalog item at midnight of each day, point in time."""
    from feature_repo.store import historical_features

    item_ids = items["item_id"].astype(str).to_numpy()
    stamps = pd.DatetimeIndex(days).tz_convert("UTC") if len(days) else pd.DatetimeIndex([], tz="UTC")
    entity = pd.DataFrame({"item_id": np.tile(item_ids, len(stamps)), "event_timestamp": np.repeat(stamps, len(item_ids))})
    entity[ENTITY_ROW] = np.arange(len(entity))
    return _aligned(historical_features(data, entity, FEATURE_SERVICE), entity).drop(columns=[ENTITY_ROW])


def point_in_time_features(
    data: DataDir, requests: Requests, items: pd.DataFrame
) -> tuple[pd.DataFrame, Callable[[pd.Timestamp], ItemTable]]:
    """User features as of each request, and item tables as of each request day.

    Item snapshots are daily, so an item's values at midnight of day D are its values at any t on
    day D: one item read per (item, day) instead of one per (request, candidate).

    Returns:
        (user rows aligned with `requests.frame`, `day -> ItemTable`).
    """
    frame = requests.frame
    user_rows = user_features_at(data, frame)
    days = sorted(pd.to_datetime(frame["day"].unique(), utc=True))
    item_rows = item_features_at(data, items, days)
    stamps = pd.to_datetime(item_rows["event_timestamp"], utc=True)
    static = _static_item_columns(data, items)

    def table(day: pd.Timestamp) -> ItemTable:
        return ItemTable.from_frame(_fill_static(item_rows[stamps == day], static))

    return user_rows, table


def _static_item_columns(data: DataDir, items: pd.DataFrame) -> pd.DataFrame:
    """What describes an item rather than its history (vector, category, brand, price, band), by item id."""
    columns = [c for c in ("item_id", "category", "brand", "price", "price_band") if c in items.columns]
    static = items[columns].assign(item_id=items["item_id"].astype(str)).set_index("item_id")
    if data.item_embeddings.exists():
        vectors = pd.read_parquet(data.item_embeddings, columns=["item_id", "embedding"])
        static["embedding"] = vectors.drop_duplicates("item_id", keep="last").set_index("item_id")["embedding"]
    return static


def _fill_static(rows: pd.DataFrame, static: pd.DataFrame) -> pd.DataFrame:
    """An item listed after its last snapshot has no stats yet, but its vector, category, brand and price are known."""
    rows = rows.copy()
    for column in static.columns:
        known = rows["item_id"].map(static[column])
        if column in rows.columns:
            rows[column] = rows[column].where(rows[column].notna(), known)
        else:
            rows[column] = known
    return rows


@dataclass(frozen=True)
class Windows:
    """Request windows of one training run (UTC, [start, end)); a refit's validation window is empty."""

    train_start: pd.Timestamp
    valid_start: pd.Timestamp
    end: pd.Timestamp

    @classmethod
    def before(cls, end: pd.Timestamp, config: RankerTrainConfig) -> "Windows":
        """The calendar windows: `valid_days` before `end`, `train_days` before that."""
        valid_start = end - pd.Timedelta(days=config.valid_days)
        return cls(valid_start - pd.Timedelta(days=config.train_days), valid_start, end)

    @classmethod
    def fitting(cls, times: pd.Series, end: pd.Timestamp, config: RankerTrainConfig, scale: float = 1.0) -> "Windows":
        """The calendar windows, each widened back by whole days until it holds its minimum of requests.

        Args:
            times: the request times before `end` (any order).
            end: end of the validation window.
            config: days and minimum requests of each window.
            scale: multiplies the minima (a retry after too few requests had a positive candidate).
        """
        calendar = cls.before(end, config)
        stamps = np.sort(pd.to_datetime(times[times < end], utc=True).dt.tz_localize(None).to_numpy())  # UTC datetime64
        need_valid, need_train = math.ceil(config.min_valid_requests * scale), math.ceil(config.min_train_requests * scale)
        if len(stamps) < need_valid + need_train:
            # Fewer requests than both minima: share them in the minima's proportion, so that
            # validation never takes the whole log.
            need_valid = max(1, round(len(stamps) * need_valid / max(need_valid + need_train, 1)))
        valid_start = min(calendar.valid_start, _day_holding(stamps, need_valid, end))
        earlier = stamps[stamps < valid_start.tz_convert("UTC").tz_localize(None).to_datetime64()]
        train_start = min(valid_start - pd.Timedelta(days=config.train_days), _day_holding(earlier, need_train, valid_start))
        return cls(train_start, valid_start, end)

    def as_dict(self) -> dict[str, str]:
        return {"train_start": self.train_start.isoformat(), "valid_start": self.valid_start.isoformat(), "end": self.end.isoformat()}


def _day_holding(stamps: np.ndarray, count: int, default: pd.Timestamp) -> pd.Timestamp:
    """The latest UTC midnight from which sorted `stamps` hold at least `count` values (the first one's day if fewer)."""
    if len(stamps) == 0 or count <= 0:
        return default
    return pd.Timestamp(stamps[max(0, len(stamps) - count)], tz="UTC").floor("D")


@dataclass(frozen=True)
class RankerRefit:
    """What a refit takes from its validation run: train again through the end of the log, no early stopping.

    Args:
        rounds: boosting rounds the validation run's early stopping chose (its best iteration).
        train_start: the validation run's first training moment; the refit's requests run from here to `end`.
        of_run_id: the validation run, for lineage.
    """

    rounds: int
    train_start: pd.Timestamp
    of_run_id: str = ""


def ranker_datasets(
    data: DataDir,
    requests: Requests,
    items: pd.DataFrame,
    retriever: CandidateSource,
    windows: Windows,
    config: RankerTrainConfig,
    progress: bool = True,
) -> tuple[RankerDataset, RankerDataset | None]:
    """The training and validation sets of `windows` (validation never injects positives; None when empty).

    Args:
        requests: every labelled request before `windows.end` (`label_requests`); the windows' are kept.
    """
    inside = requests.frame["timestamp"].between(windows.train_start, windows.end, inclusive="left")
    chosen = Requests(requests.frame[inside].reset_index(drop=True), requests.labels)
    chosen = chosen.sample(config.dataset.max_requests, config.dataset.seed)
    if len(chosen) == 0:
        raise InvalidInput(f"no requests with a click, cart or purchase between {windows.train_start} and {windows.end}")
    user_rows, tables = point_in_time_features(data, chosen, items)
    is_valid = (chosen.frame["timestamp"] >= windows.valid_start).to_numpy()
    train_requests = Requests(chosen.frame[~is_valid].reset_index(drop=True), chosen.labels)
    train = build_dataset(train_requests, user_rows[~is_valid], tables, retriever, config.dataset, progress)
    if not is_valid.any():
        return train, None
    valid_requests = Requests(chosen.frame[is_valid].reset_index(drop=True), chosen.labels)
    valid_config = DatasetConfig(**{**asdict(config.dataset), "inject_positives": False})
    valid = build_dataset(valid_requests, user_rows[is_valid], tables, retriever, valid_config, progress)
    return train, valid


# Retries of `Windows.fitting` with larger minima when too few requests had a positive candidate;
# each multiplies the minima by the shortfall, so a 10% candidate hit rate is met on the second try.
MAX_WIDENINGS = 4


def fitted_datasets(
    data: DataDir,
    requests: Requests,
    items: pd.DataFrame,
    retriever: CandidateSource,
    end: pd.Timestamp,
    config: RankerTrainConfig,
    progress: bool = True,
) -> tuple[Windows, RankerDataset, RankerDataset]:
    """Windows that hold the configured minimum of requests *with a positive candidate*, and their sets.

    Request counts are known before retrieval, candidate hits only after: the windows are first
    sized by requests, then widened by the shortfall (at most MAX_WIDENINGS times) until both sets
    hold their minima, the sample cap (`dataset.max_requests`) binds, or the windows reach the
    start of the log. Raises `InvalidInput` only when a set still has no positive at all.
    """
    times = requests.frame["timestamp"]
    scale = 1.0
    for attempt in range(MAX_WIDENINGS + 1):
        windows = Windows.fitting(times, end, config, scale)
        train, valid = ranker_datasets(data, requests, items, retriever, windows, config, progress)
        if valid is None:
            raise InvalidInput(f"ranker validation set: no request between {windows.valid_start} and {end}")
        have = (positive_requests(train), positive_requests(valid))
        need = (config.min_train_requests, config.min_valid_requests)
        shortfall = max(n / max(h, 1) for n, h in zip(need, have))
        whole_log = len(times) == 0 or windows.train_start <= times.min()
        saturated = len(train.group_sizes) + len(valid.group_sizes) >= config.dataset.max_requests
        if shortfall <= 1.0 or whole_log or saturated or attempt == MAX_WIDENINGS:
            return windows, train, valid
        scale *= min(max(2.0, 1.2 * shortfall), 50.0)
    raise AssertionError("unreachable")


@dataclass
class TrainResult:
    """What `train_ranker` produced."""

    model_dir: Path
    run_id: str
    registered_version: str | None
    best_iteration: int
    # Best validation NDCG@10; None for a refit (it has no validation set).
    valid_ndcg_at_10: float | None
    train_summary: dict[str, float]
    valid_summary: dict[str, float]
    seconds: float
    windows: dict[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str | None:
        """The registered `vitrine-ranker` version (None when not registered)."""
        return self.registered_version

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model_dir"] = str(self.model_dir)
        return out


def load_retriever(data: DataDir, alias: str = "champion") -> CandidateSource:
    """The registered retriever `vitrine-retriever@alias`, as a candidate source."""
    from ranking.retriever import Retriever

    return RetrieverCandidates(Retriever.from_registry(data, alias))


def train_ranker(
    data: DataDir,
    config: RankerTrainConfig = RankerTrainConfig(),
    *,
    retriever: CandidateSource | None = None,
    end: pd.Timestamp | None = None,
    register: bool = True,
    progress: bool = True,
    refit: RankerRefit | None = None,
) -> TrainResult:
    """Train, save, log and register a ranker on the requests before `end` (default: all events).

    Args:
        data: the data dir (shop, features, Feast repo, MLflow store).
        config: model and window settings.
        retriever: candidate source; default the registered `vitrine-retriever@champion`.
        end: the end of the validation window; default just after the last event.
        register: register the model as `vitrine-ranker` (evaluation runs pass False).
        progress: progress bars.
        refit: train again on the requests from `refit.train_start` to `end` for `refit.rounds`
            rounds, without a validation window (the pipeline's refit of a promoted ranker).
    """
    import mlflow

    from vitrine.shop.store import read_events, read_items
    from vitrine.tracking import RANKER_MODEL, configure, lineage, register_model

    started = time.perf_counter()
    source = retriever or load_retriever(data)
    items = read_items(data)
    events = read_events(data)
    if events.empty:
        raise InvalidInput(f"{data.events}: no events")
    if end is None:
        end = pd.Timestamp(events["timestamp"].max()) + pd.Timedelta(seconds=1)
    requests = label_requests(events, pd.Timestamp(events["timestamp"].min()), end, items)
    del events
    valid: RankerDataset | None
    if refit is None:
        windows, train, valid = fitted_datasets(data, requests, items, source, end, config, progress)
        fit = fit_ranker(train, valid, config)
    else:
        windows = Windows(pd.Timestamp(refit.train_start), end, end)
        train, valid = ranker_datasets(data, requests, items, source, windows, config, progress)
        fit = refit_ranker(train, config, refit.rounds)

    prices = pd.to_numeric(items.get("price", pd.Series(dtype=float)), errors="coerce").dropna()
    cvr = train.features[:, FEATURE_NAMES.index("item_cvr_30d")]
    tags = {
        **lineage(data),
        "retriever_version": source.version,
        "feature_service": FEATURE_SERVICE,
        "feature_services": f"{FEATURE_SERVICE},retriever",
        "train_window": f"{windows.train_start.isoformat()}/{windows.valid_start.isoformat()}",
        "valid_window": f"{windows.valid_start.isoformat()}/{windows.end.isoformat()}",
    }
    if refit is not None:
        tags.update({"refit": "true", "refit_of.run_id": refit.of_run_id, "refit_rounds": str(fit.best_iteration)})
    configure(data)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_name="refit-ranker" if refit is not None else "train-ranker", nested=nested) as run:
        model_dir = data.models / MODELS_SUBDIR / run.info.run_id
        tags["run_id"] = run.info.run_id
        metadata = RankerMetadata(
            feature_names=FEATURE_NAMES,
            label_gain=LABEL_GAIN,
            reference_price=float(prices.median()) if len(prices) else 1.0,
            cvr_prior=float(np.nanmedian(cvr)) if np.isfinite(cvr).any() else 0.0,
            best_iteration=fit.best_iteration,
            lineage={k: str(v) for k, v in tags.items()},
        )
        save_ranker(fit.booster, model_dir, metadata)
        mlflow.set_tags(tags)
        mlflow.log_params({**config.flat(), "serving_threads": SERVING_THREADS, "n_features": len(FEATURE_NAMES)})
        for step, tr in enumerate(fit.history["train"], start=1):
            mlflow.log_metric("train_ndcg_at_10", tr, step=step)
        for step, va in enumerate(fit.history["valid"], start=1):
            mlflow.log_metric("valid_ndcg_at_10", va, step=step)
        best_valid = fit.history["valid"][fit.best_iteration - 1] if fit.history["valid"] else None
        mlflow.log_metrics({"best_iteration": fit.best_iteration, **({"valid_ndcg_at_10_best": best_valid} if best_valid is not None else {})})
        mlflow.log_metrics({f"train_{k}": v for k, v in train.summary().items()})
        if valid is not None:
            mlflow.log_metrics({f"valid_{k}": v for k, v in valid.summary().items()})
        mlflow.log_table(fit.importance, "feature_importance.json")
        with tempfile.TemporaryDirectory() as scratch:
            plot = Path(scratch) / "feature_importance.png"
            importance_plot(fit.importance, plot)
            mlflow.log_artifact(str(plot))
        mlflow.log_artifacts(str(model_dir), artifact_path="ranker")
        version = register_model(RANKER_MODEL, f"{run.info.artifact_uri.rstrip('/')}/ranker", run.info.run_id, tags) if register else None
    return TrainResult(
        model_dir=model_dir,
        run_id=run.info.run_id,
        registered_version=version,
        best_iteration=fit.best_iteration,
        valid_ndcg_at_10=float(best_valid) if best_valid is not None else None,
        train_summary=train.summary(),
        valid_summary=valid.summary() if valid is not None else {},
        seconds=time.perf_counter() - started,
        windows=windows.as_dict(),
    )


def importance_plot(importance: pd.DataFrame, path: Path, top: int = 20) -> Path:
    """A horizontal bar chart of the `top` features by gain, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = importance.head(top).iloc[::-1]
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(shown) + 1.2))
    axis.barh(shown["feature"], shown["gain"], color="#4C72B0")
    axis.set_xlabel("total gain")
    axis.set_title("vitrine-ranker: feature importance (gain)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


__all__ = [
    "FitResult",
    "RankerRefit",
    "RankerTrainConfig",
    "RetrieverCandidates",
    "TrainResult",
    "Windows",
    "fit_ranker",
    "fitted_datasets",
    "importance_plot",
    "point_in_time_features",
    "ranker_datasets",
    "refit_ranker",
    "train_ranker",
]
