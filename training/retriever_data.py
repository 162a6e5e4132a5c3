"""Training examples of the two-tower retriever, with the features the model saw at that moment.

An example is a positive user -> item interaction: the events of one user on one item within one
session collapse into one example, weighted by the strongest event type (a purchase teaches more
than a view). Each example carries the user's and the item's features *as of the interaction*,
read through Feast (`feature_repo.store.historical_features`, feature service `retriever`),
whose daily snapshots only hold events before the snapshot day: no label leaks into its features.

The item catalog (every item, for random negatives, the ANN index and evaluation) is read the same
way at one moment. CLIP vectors and static attributes (category, brand) describe the item, not its
history, so where the point-in-time join has none yet (an item listed after the moment) they are
filled from the item's own record: that is what a new item looks like on its first day online.

Example:
    positives = positive_interactions(read_events(data))
    features = PointInTime.for_interactions(data, positives, items, extra_days=(cutoff,))  # two Feast reads
    frame = features.join(positives)
    split = time_split(features, frame, items, test_days=7)
    spec = InputSpec.fit(split.train, content_dim(split.catalog))
    train = TrainingSet.of(split.train, split.catalog, spec)

A log too large to hold with its features (the 1M-user benchmark shop) takes the same steps without
joining first: `time_split` on the positives, `fit_spec` on a sample and `TrainingSet.read`,
which reads and encodes the features chunk by chunk (and per torchrun rank, only that rank's share).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from ranking.retriever_inputs import EncodedItems, EncodedUsers, InputSpec, encode_items, encode_users
from vitrine.errors import FeatureUnavailable, InvalidInput
from vitrine.paths import DataDir

# The Feast feature service the retriever reads (declared by the feature repo).
FEATURE_SERVICE = "retriever"
# Examples `TrainingSet.read` reads and encodes at once. Its memory is then one chunk's pandas objects
# (lists of recent items, CLIP vectors) plus arrays (about 300 bytes an example, and each chunk's
# CLIP vectors of its distinct items), where the whole log's frame of the benchmark shop (60 days,
# 18M interactions) went past 21 GB.
CHUNK_EXAMPLES = 1_000_000
# Examples `fit_spec` reads features for: categories and dense statistics need no more.
SPEC_SAMPLE = 500_000
# Most of a log that a latest time split may hold out (`choose_split_time`): training keeps the rest.
MAX_TEST_SHARE = 0.5


@dataclass(frozen=True)
class PointInTime:
    """`retriever` features of users and items by UTC day, read from Feast in one call per entity.

    Snapshots are daily (a row at day D 00:00 holds events before D), so the features as of any
    moment of day D are the features as of D 00:00: reading each distinct (entity, day) once and
    joining by day is the same point-in-time join as asking Feast per event, at a fraction of the
    cost (a demo shop's 250k interactions are ~40k user-days).
    """

    users: pd.DataFrame  # user_id, day, user features
    items: pd.DataFrame  # item_id, day, item features (static content filled)

    @classmethod
    def read(cls, data: DataDir, user_days: pd.DataFrame, item_days: pd.DataFrame, items: pd.DataFrame) -> "PointInTime":
        """Read the features of each distinct (user_id, day) and (item_id, day) (`day`: UTC midnight).

        `user_days` may be empty (only items wanted): no user is read then.
        """
        users = user_days[["user_id", "day"]].drop_duplicates().reset_index(drop=True)
        wanted = item_days[["item_id", "day"]].drop_duplicates().reset_index(drop=True)
        user_frame = _historical(data, users.rename(columns={"day": "event_timestamp"})) if len(users) else users
        item_frame = _historical(data, wanted.rename(columns={"day": "event_timestamp"}))
        return cls(
            users=user_frame.rename(columns={"event_timestamp": "day"}),
            items=_fill_static(data, item_frame.rename(columns={"event_timestamp": "day"}), items),
        )

    @classmethod
    def for_interactions(
        cls, data: DataDir, interactions: pd.DataFrame, items: pd.DataFrame, extra_days: tuple[pd.Timestamp, ...] = ()
    ) -> "PointInTime":
        """Features for every interaction's day, plus every user and item on each of `extra_days`."""
        days = interactions["timestamp"].dt.floor("D")
        user_days = pd.concat(
            [pd.DataFrame({"user_id": interactions["user_id"], "day": days}), on_days(interactions["user_id"], "user_id", extra_days)]
        )
        item_days = pd.concat(
            [pd.DataFrame({"item_id": interactions["item_id"], "day": days}), on_days(items["item_id"], "item_id", extra_days)]
        )
        return cls.read(data, user_days, item_days, items)

    def join(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`frame` (user_id and/or item_id, timestamp) with the features as of each row's moment, row order kept."""
        out = frame.assign(day=frame["timestamp"].dt.floor("D"))
        if "user_id" in out:
            out = out.merge(self.users, on=["user_id", "day"], how="left", validate="many_to_one")
        if "item_id" in out:
            out = out.merge(self.items, on=["item_id", "day"], how="left", validate="many_to_one")
        return out.drop(columns="day")

    def catalog(self, items: pd.DataFrame, at: pd.Timestamp) -> pd.DataFrame:
        """One row per item of `items` (in its order): the item features as of `at` (a day read before)."""
        frame = pd.DataFrame({"item_id": items["item_id"].astype(str).to_numpy(), "timestamp": at})
        return self.join(frame).drop(columns="timestamp")


def on_days(ids: Iterable[Any], column: str, days: Sequence[pd.Timestamp]) -> pd.DataFrame:
    """Each distinct id of `ids` on each of `days`: the `column`, `day` rows `PointInTime.read` takes."""
    unique = pd.Index(pd.Series(ids, dtype=object).unique()).astype(str).to_numpy(dtype=object)
    return pd.DataFrame({column: np.tile(unique, len(days)), "day": pd.DatetimeIndex(list(days), tz="UTC").repeat(len(unique))})


def with_features(data: DataDir, interactions: pd.DataFrame) -> pd.DataFrame:
    """`interactions` (user_id, item_id, timestamp, ...) with their users' and items' features as of each row."""
    from vitrine.shop.store import read_items

    return PointInTime.for_interactions(data, interactions, read_items(data)).join(interactions)


def _historical(data: DataDir, entity: pd.DataFrame) -> pd.DataFrame:
    """Feast's point-in-time join; entity rows without any feature row come back with nulls."""
    from feature_repo.store import historical_features

    keyed = entity.reset_index(drop=True).assign(_entity_row=np.arange(len(entity)))
    frame = historical_features(data, keyed, FEATURE_SERVICE)
    # Rows with no snapshot at all (a shop's first day) are missing from the answer: put them back, empty.
    frame = frame.set_index("_entity_row").reindex(np.arange(len(entity)))
    for column in entity.columns:
        frame[column] = entity[column].to_numpy()
    return frame.reset_index(drop=True)


def _fill_static(data: DataDir, frame: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Fill CLIP vectors and category/brand that an item has before any snapshot mentions it."""
    frame = frame.copy()
    by_id = items.assign(item_id=items["item_id"].astype(str)).drop_duplicates("item_id").set_index("item_id")
    for column in ("category", "brand"):
        if column in by_id:
            known = frame["item_id"].map(by_id[column])
            frame[column] = frame[column].where(frame[column].notna(), known) if column in frame else known
    if data.item_embeddings.exists():
        vectors = pd.read_parquet(data.item_embeddings, columns=["item_id", "embedding"])
        latest = vectors.drop_duplicates("item_id", keep="last").set_index("item_id")["embedding"]
        known = frame["item_id"].map(latest)
        if "embedding" in frame:
            frame["embedding"] = frame["embedding"].where(frame["embedding"].notna(), known)
        else:
            frame["embedding"] = known
    return frame


def content_dim(frame: pd.DataFrame) -> int:
    """Width of the CLIP vectors in `frame` (the `embedding` column)."""
    if "embedding" in frame:
        for vector in frame["embedding"]:
            if vector is not None and not (isinstance(vector, float) and np.isnan(vector)):
                return len(vector)
    raise FeatureUnavailable("item_embedding: no item has a vector; run `vitrine embed` and `vitrine features build`")


@dataclass(frozen=True)
class TrainingSet:
    """Encoded examples plus the encoded catalog, ready to cut into batches.

    `item_key` of an example and `catalog_key` of a catalog row are the same integer for the same
    item, so accidental hits among negatives can be masked.
    """

    users: EncodedUsers  # [N] user side of each example
    items: EncodedItems  # [N] positive item of each example
    weights: np.ndarray  # [N] float32 example weights
    item_key: np.ndarray  # [N] int64 catalog row of each positive
    item_prob: np.ndarray  # [N] float64 share of examples whose positive is that item (the sampling Q of in-batch negatives)
    catalog: EncodedItems  # [C] every item
    catalog_prob: np.ndarray  # [C] the same share, per catalog item
    # Catalog rows random negatives are drawn from: items with a training interaction. An item the
    # training data never shows (e.g. listed after the cut-off) must not be taught as a negative:
    # that would push exactly the cold-start items down.
    negative_pool: np.ndarray
    # (rank, world): the set holds examples rank, rank + world, ... of all `total` (one torchrun rank's
    # share); shares, pool and catalog always count every example.
    shard: tuple[int, int]
    total: int

    def __len__(self) -> int:
        return len(self.weights)

    @classmethod
    def of(cls, frame: pd.DataFrame, catalog: pd.DataFrame, spec: InputSpec) -> "TrainingSet":
        """Encode a features frame of examples and the catalog frame with `spec`."""
        key = _item_keys(frame, catalog)
        weights = frame["weight"].to_numpy(np.float32)
        return cls._assemble(encode_users(frame, spec), encode_items(frame, spec), weights, key, key, catalog, spec, (0, 1))

    @classmethod
    def read(
        cls,
        data: DataDir,
        examples: pd.DataFrame,
        catalog: pd.DataFrame,
        spec: InputSpec,
        items: pd.DataFrame,
        *,
        shard: tuple[int, int] = (0, 1),
        on_chunk: Callable[[int, int], None] | None = None,
    ) -> "TrainingSet":
        """`of(PointInTime.for_interactions(data, examples, items).join(examples), ...)`, in a fraction of the memory.

        The examples' features are read from Feast, joined and encoded chunk by chunk (whole days of
        about CHUNK_EXAMPLES examples, so a rank reads a user's day once); only the arrays are kept.
        An item's CLIP vector is the first one its chunk shows (`of`: the first in the whole log);
        the two differ only if an item is re-embedded within the training window.

        Args:
            examples: positive interactions (user_id, item_id, timestamp, weight), no features.
            catalog: catalog features frame (`PointInTime.catalog`).
            items: the shop's items (static content of items new to the snapshots).
            shard: (rank, world) to load examples rank, rank + world, ... only: each torchrun rank its share.
            on_chunk: called with (examples done, examples to do) after each chunk, for progress.
        """
        rank, world = shard
        if len(examples) < world:  # every rank sees the same count, so all of them stop here
            raise InvalidInput(f"training set: {len(examples)} examples for {world} ranks")
        key = _item_keys(examples, catalog)
        local = np.arange(rank, len(examples), world)
        mine = examples.iloc[local]
        users, positives = [], []
        for chunk in _day_chunks(mine, CHUNK_EXAMPLES):
            frame = PointInTime.for_interactions(data, chunk, items).join(chunk)
            users.append(encode_users(frame, spec))
            positives.append(encode_items(frame, spec))
            if on_chunk is not None:
                on_chunk(sum(len(u) for u in users), len(mine))
        weights = mine["weight"].to_numpy(np.float32)
        encoded_users, encoded_items = EncodedUsers.concat(users), EncodedItems.concat(positives)
        return cls._assemble(encoded_users, encoded_items, weights, key[local], key, catalog, spec, shard)

    @classmethod
    def _assemble(
        cls,
        users: EncodedUsers,
        items: EncodedItems,
        weights: np.ndarray,
        key: np.ndarray,
        all_keys: np.ndarray,
        catalog: pd.DataFrame,
        spec: InputSpec,
        shard: tuple[int, int],
    ) -> "TrainingSet":
        counts = np.bincount(all_keys, minlength=len(catalog)).astype(np.float64)
        share = counts / counts.sum()
        pool = np.flatnonzero(counts > 0)
        return cls(users, items, weights, key, share[key], encode_items(catalog, spec), share, pool, shard, len(all_keys))

    def share(self, rank: int, world: int) -> "TrainingSet":
        """Examples rank, rank + world, ... of this set (itself when it already is that share)."""
        if self.shard == (rank, world):
            return self
        if self.shard != (0, 1):
            raise InvalidInput(f"training set: holds share {self.shard} (rank, world), asked for {(rank, world)}")
        rows = np.arange(rank, len(self), world)
        return replace(
            self,
            users=self.users.take(rows),
            items=self.items.take(rows),
            weights=self.weights[rows],
            item_key=self.item_key[rows],
            item_prob=self.item_prob[rows],
            shard=(rank, world),
        )


def fit_spec(
    data: DataDir, examples: pd.DataFrame, items: pd.DataFrame, content_dim: int, *, sample: int = SPEC_SAMPLE, seed: int = 0
) -> InputSpec:
    """`InputSpec.fit` for examples without features: ids from all, categories and dense statistics from a sample.

    Reads the features of at most `sample` examples (seeded); with fewer examples, exactly
    `InputSpec.fit(PointInTime.for_interactions(...).join(examples), content_dim)`.
    """
    rows = examples
    if len(examples) > sample:
        rows = examples.iloc[np.sort(np.random.default_rng(seed).choice(len(examples), sample, replace=False))]
    frame = PointInTime.for_interactions(data, rows, items).join(rows)
    return InputSpec.fit(frame, content_dim, ids=examples)


def _item_keys(frame: pd.DataFrame, catalog: pd.DataFrame) -> np.ndarray:
    """Catalog row of each example's item."""
    item_key = frame["item_id"].map(_catalog_rows(catalog))
    if item_key.isna().any():
        unknown = frame.loc[item_key.isna(), "item_id"].iloc[0]
        raise InvalidInput(f"examples: item_id {unknown!r} is not in the catalog")
    return item_key.to_numpy(np.int64)


def _day_chunks(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    """Consecutive slices of `frame` (sorted by timestamp) of whole UTC days, each at least `size` rows but the last."""
    if frame.empty:
        return
    day = frame["timestamp"].dt.floor("D").to_numpy()
    begin = 0
    for end in [*np.flatnonzero(day[1:] != day[:-1]) + 1, len(frame)]:
        if end - begin >= size or end == len(frame):
            yield frame.iloc[begin:end]
            begin = end


@dataclass(frozen=True)
class Split:
    """A train/test split of the interactions, with everything an evaluation ranks over.

    The catalog is the whole catalog (full ranking); `history[u]` are the catalog rows user u
    interacted with in training (never ranked), `targets[u]` the held-out catalog rows, and
    `cold_items` the catalog rows without a single training interaction.
    """

    name: str  # "time" or "leave-last-out"
    train: pd.DataFrame  # training examples, with features when `examples` had them (rows of `PointInTime.join`)
    catalog: pd.DataFrame  # catalog features frame (rows of `PointInTime.catalog`)
    test_users: pd.DataFrame  # user_id + user features as of each user's test moment
    targets: list[np.ndarray]  # per test user, catalog rows to find
    history: list[np.ndarray]  # per test user, catalog rows to exclude
    cold_items: np.ndarray  # catalog rows with no training interaction
    cutoff: pd.Timestamp  # time split: T; leave-last-out: the latest test moment

    def sample_users(self, n: int, seed: int = 0) -> "Split":
        """The same split with at most `n` test users (seeded, in their original order).

        Per-epoch validation at scale: a million test users would be a million ranked lists of 500
        in memory for the metrics, while 20,000 already pin Recall@100 to about +-0.005.
        """
        if len(self.test_users) <= n:
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self.test_users), n, replace=False))
        return replace(
            self,
            test_users=self.test_users.iloc[keep].reset_index(drop=True),
            targets=[self.targets[i] for i in keep],
            history=[self.history[i] for i in keep],
        )

    def cold_targets(self) -> list[np.ndarray]:
        """`targets` restricted to cold-start items."""
        cold = set(self.cold_items.tolist())
        return [np.array([t for t in rows if t in cold], dtype=np.int64) for rows in self.targets]


def time_split(
    features: PointInTime | DataDir,
    examples: pd.DataFrame,
    items: pd.DataFrame,
    test_days: int | None = None,
    *,
    cutoff: pd.Timestamp | None = None,
    next_only: bool = False,
) -> Split:
    """Train on interactions before T = the start of the last `test_days` days; test on each user's new items after T.

    Args:
        features: holding every user and item on day T (`time_cutoff`), or the data dir to read them from.
        examples: `features.join(positive_interactions(events))` over all days, or the positive
            interactions alone (features then read per chunk by `TrainingSet.read`).
        items: the catalog (items.parquet).
        test_days: days at the end to test on; or
        cutoff: T itself, chosen by the caller (`choose_split_time`: a pipeline's latest split).
        next_only: test each user on their *next* new items only (those of their first day after T
            with one), not on everything after T: what a model trained up to T is asked at T. A
            window widened to months on a sparse shop would otherwise score the user's distant future.
    """
    if cutoff is None:
        if test_days is None:
            raise InvalidInput("time split: give test_days or the cutoff T")
        cutoff = time_cutoff(examples, test_days)
    cutoff = pd.Timestamp(cutoff)
    if isinstance(features, DataDir):
        users, catalog_days = on_days(examples["user_id"], "user_id", [cutoff]), on_days(items["item_id"], "item_id", [cutoff])
        features = PointInTime.read(features, users, catalog_days, items)
    train = examples[examples["timestamp"] < cutoff].reset_index(drop=True)
    test = examples[examples["timestamp"] >= cutoff]
    if train.empty or test.empty:
        raise InvalidInput(f"time split at {cutoff}: {len(train)} training and {len(test)} test interactions; need both")
    catalog = features.catalog(items, cutoff)
    rows = _catalog_rows(catalog)
    seen = train.groupby("user_id")["item_id"].agg(set)
    if next_only:
        test = _next_new_items(test, seen)
    wanted = test.groupby("user_id")["item_id"].agg(set)
    users, targets, history = [], [], []
    for user, found in wanted.items():
        before = seen.get(user, set())
        new = sorted(found - before)
        if not new:
            continue
        users.append(user)
        targets.append(np.array([rows[i] for i in new], dtype=np.int64))
        history.append(np.array(sorted(rows[i] for i in before), dtype=np.int64))
    test_users = features.join(pd.DataFrame({"user_id": users, "timestamp": cutoff}))
    return Split("time", train, catalog, test_users, targets, history, _cold(catalog, train), cutoff)


def _next_new_items(test: pd.DataFrame, seen: pd.Series) -> pd.DataFrame:
    """The rows of `test` on each user's first day that brings an item the user had not had before T."""
    known = pd.MultiIndex.from_tuples([(u, i) for u, found in seen.items() for i in found], names=["user_id", "item_id"])
    new = test[~pd.MultiIndex.from_frame(test[["user_id", "item_id"]]).isin(known)]
    day = new["timestamp"].dt.floor("D")
    return new[day == day.groupby(new["user_id"]).transform("min")]


def leave_last_out_split(features: PointInTime, examples: pd.DataFrame, items: pd.DataFrame) -> Split:
    """Each user's last new item (by first interaction) is the test item; everything else trains.

    Users with fewer than two distinct items have no history to predict from and are not tested
    (as in the sequential-recommendation literature). The user's features are those as of the test
    interaction; the catalog's as of the end of the log.
    """
    first = examples.drop_duplicates(["user_id", "item_id"], keep="first")
    distinct = first.groupby("user_id")["item_id"].transform("size")
    last = first[distinct >= 2].groupby("user_id").tail(1)
    held = pd.MultiIndex.from_frame(last[["user_id", "item_id"]])
    keys = pd.MultiIndex.from_frame(examples[["user_id", "item_id"]])
    train = examples[~keys.isin(held)].reset_index(drop=True)
    catalog = features.catalog(items, end_of_log(examples))
    rows = _catalog_rows(catalog)
    seen = train.groupby("user_id")["item_id"].agg(set)
    targets = [np.array([rows[i]], dtype=np.int64) for i in last["item_id"]]
    history = [np.array(sorted(rows[i] for i in seen.get(u, set())), dtype=np.int64) for u in last["user_id"]]
    test_users = features.join(last[["user_id", "timestamp"]].reset_index(drop=True))
    return Split("leave-last-out", train, catalog, test_users, targets, history, _cold(catalog, train), last["timestamp"].max())


def time_cutoff(examples: pd.DataFrame, test_days: int) -> pd.Timestamp:
    """T of the time protocol: midnight starting the last `test_days` days of the log."""
    if test_days < 1:
        raise InvalidInput(f"test_days: must be at least 1, got {test_days}")
    return examples["timestamp"].max().floor("D") - pd.Timedelta(days=test_days - 1)


def choose_split_time(
    events: pd.DataFrame,
    min_days: int,
    min_users: int,
    *,
    max_test_share: float = MAX_TEST_SHARE,
    total_events: int | None = None,
) -> pd.Timestamp:
    """T of a latest time split that holds enough users, also where the last days are sparse.

    T is a UTC midnight: the start of the last `min_days` event days (`time_cutoff`), moved back a
    day at a time until at least `min_users` users have an event at or after T. A shop with orders
    only (reviews standing for purchases) may have a handful of events on its last days, where a
    fixed 3-day window would test two users. T never moves back so far that more than
    `max_test_share` of the events fall after it (training keeps the rest), nor to the first day.

    Args:
        events: at least `user_id` and `timestamp` (UTC), e.g. the events of the last days only.
        min_days: the window holds at least this many days.
        min_users: ... and at least this many distinct users, where the log has them.
        max_test_share: most of the events that may fall at or after T.
        total_events: events in the whole log, when `events` holds only its latest part.

    Example:
        >>> events = pd.DataFrame({"user_id": ["a", "b", "c", "d"], "timestamp": pd.to_datetime(
        ...     ["2026-01-01", "2026-01-05", "2026-01-09", "2026-01-10"], utc=True)})
        >>> str(choose_split_time(events, 1, 3, max_test_share=0.75).date())
        '2026-01-05'
    """
    if events.empty:
        raise InvalidInput("split: no events")
    calendar = time_cutoff(events, min_days)
    total = len(events) if total_events is None else total_events
    day = events["timestamp"].dt.floor("D")
    # Per day, from the last one back: the events on and after it, and the users whose last event is on it.
    per_day = day.value_counts().sort_index(ascending=False)
    events_after = per_day.cumsum()
    users_after = events.assign(day=day).groupby("user_id")["day"].max().value_counts().reindex(per_day.index, fill_value=0).cumsum()
    enough = users_after.index[users_after.to_numpy() >= min_users]
    by_users = enough[0] if len(enough) else per_day.index[-1]
    allowed = events_after.index[events_after.to_numpy() <= max_test_share * total]
    # Moving T back only adds test events, so the allowed days are the latest ones.
    earliest = allowed[-1] if len(allowed) else per_day.index[0]
    cutoff = min(calendar, max(by_users, earliest))
    if len(events) >= total:  # the whole log: its first day always trains
        cutoff = max(cutoff, per_day.index[-1] + pd.Timedelta(days=1))
    return pd.Timestamp(cutoff)


def end_of_log(examples: pd.DataFrame) -> pd.Timestamp:
    """Midnight after the last interaction: the moment "now" of a model trained on everything."""
    return examples["timestamp"].max().floor("D") + pd.Timedelta(days=1)


def _catalog_rows(catalog: pd.DataFrame) -> dict[str, int]:
    return {item: row for row, item in enumerate(catalog["item_id"].astype(str))}


def _cold(catalog: pd.DataFrame, train: pd.DataFrame) -> np.ndarray:
    trained = set(train["item_id"])
    return np.array([row for row, item in enumerate(catalog["item_id"]) if item not in trained], dtype=np.int64)
