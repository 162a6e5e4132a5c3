"""Co-visitation candidates and ranker features: what was bought together with, and next after, the user's last items.

Two item x item sparse matrices are fitted from every user's sequence of distinct items (the
co-visitation matrices of the winning OTTO solutions), each pruned to its top `neighbours` per row:

- co-occurrence (symmetric): items i and j at most `window` positions apart in a user's sequence add
  `distance ** -decay`; the sum is divided by `sqrt(n_i * n_j)` (n = how many users have the item),
  the cosine of item-kNN, so that an item bought by everyone is not everyone's neighbour. With
  `window=None` and `decay=0` the matrix IS the item-kNN cosine over whole histories, so one
  matrix with a configurable window covers both.
- transition (directed i -> j): j comes at most `transition_window` positions AFTER i, weighted
  the same way, divided by `n_i ** (1 - popularity_damping) * n_j ** popularity_damping`. This is
  the asymmetric cosine of Aiolli (2013, winner of the Million Song Dataset challenge): damping 0
  is the conditional "share of i's buyers who bought j soon after" (normalised by i's out-degree
  only), 0.5 the cosine. The default is 0, chosen on validation (see `CoVisitConfig`): the cosine
  co-occurrence already pushes niche items, the undamped share adds the popular follow-ups.

A user's candidates are the items not in their history with the largest summed neighbour scores
of their `recent` last items, the last item weighing most (`recency ** position`, 0 = last). The
ranker features are the unweighted sums over the last 1 / 3 / 10 items of each matrix and the
position of the nearest history item related to the candidate by either matrix.

The single-user calls (serving) run the batch code on a batch of one, and every sum is accumulated
in a fixed order that does not depend on the other users of the batch (`np.bincount`), so serving
and offline training get the same numbers (no train/serve skew).

Fitting builds the pairs with numpy from the CSR offsets, one block of items at a time (a block's
rows are complete, so they are normalised and pruned before the next block): memory is bounded by
`PAIRS_PER_BLOCK` and the pruned matrices, never by items x items.

Example:
    >>> model = CoVisitation.fit(split.test.train, CoVisitConfig(window=None, decay=0))  # item-kNN
    >>> rows, scores = model.candidates(history, n=200)              # catalog rows, best first
    >>> features = model.features(history, rows)                     # {"covisit_cooc_last1": ..., ...}
    >>> top, top_scores = model.candidates_batch(histories, n=200)   # [users, 200], -1 padded
    >>> model.save(Path("models/covisitation")); CoVisitation.load(Path("models/covisitation"))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from feature_repo.sequences import Sequences
from vitrine.arrays import unique_first
from vitrine.errors import InvalidInput, ModelUnavailable

# Window sizes of the summed ranker features (last 1 / 3 / 10 history items): the last item says
# what the shopper wants now, 3 the current session's theme, 10 the longer taste.
FEATURE_DEPTHS: tuple[int, ...] = (1, 3, 10)
# The ordered feature list that `features` returns (append only: a ranker stores the list it used).
FEATURE_NAMES: tuple[str, ...] = (
    *(f"covisit_cooc_last{k}" for k in FEATURE_DEPTHS),
    *(f"covisit_next_last{k}" for k in FEATURE_DEPTHS),
    "covisit_nearest_position",  # 0 = the last item; NaN when no read history item is related
    "covisit_score",  # the candidate score of `candidates` (recency-weighted, both matrices); 0 when unrelated
)
# Item pairs materialised at once while fitting (~120 bytes each with their weights, indices and
# the CSR built from them, measured): ~0.5 GB peak per block, whatever the catalog.
PAIRS_PER_BLOCK = 4_000_000
# Neighbour entries gathered at once when scoring a batch of users (~110 bytes each over the
# temporaries, measured): ~0.2 GB per chunk, and ~250 full users a chunk, so that numpy's per-call
# cost stays negligible.
ENTRIES_PER_CHUNK = 2_000_000
ARTIFACT_ARRAYS = "covisitation.npz"
ARTIFACT_META = "covisitation.json"
# Bumped when the stored layout changes, so an old artifact fails loudly instead of loading wrong.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CoVisitConfig:
    """How the two matrices are fitted and how a user's candidates are scored (stored with the model).

    Args:
        window: largest position distance within a user's sequence that counts as co-occurring;
            None = the whole history (with `decay=0`: item-kNN cosine). 20 scores as the whole
            history on validation (Amazon Toys hit@500 0.335 vs 0.338, top-10 equal) but bounds
            the pairs by 2 x 20 per interaction, where the whole history costs length**2 per user
            (one 5,000-item account alone would make 25M pairs). 1-3 lose (hit@500 0.27-0.28).
        decay: a pair `d` positions apart weighs `d ** -decay` in both matrices. 0.5 won on
            validation over 0 (all pairs equal), 1 (1/distance) and 2: nearer purchases say more,
            but the third-next purchase still says a lot when timestamps are only days.
        transition_window: how many positions after i still count as "j followed i". 10 beat 1, 3
            and 5 on validation (hit@500 0.335 vs 0.304-0.332); 20 adds nothing.
        popularity_damping: exponent of n_j in the transition denominator: 0 = the share of i's
            buyers who bought j soon after, 0.5 = cosine. 0 won on validation (NDCG@10 0.0694 vs
            0.0661 at 0.5, 0.0619 at 0.75): the cosine co-occurrence already favours niche items,
            and the undamped share brings back the popular follow-ups it misses.
        neighbours: entries kept per row of each matrix; bounds memory (2 x items x neighbours x
            8 bytes: 0.3 GB at 100k items) and the work per request (recent x neighbours). 200
            over 100 lifts the validation hit@500 0.325 -> 0.335; 300 adds 0.006.
        transition_weight: weight of the transition score against the co-occurrence score in the
            candidate score; 0.5 and 2 were no better on validation than 1 (0 loses 0.007 hit@10).
        recency: a history item `p` positions before the last weighs `recency ** p` in the
            candidate score: the last purchase is the best guide to the next one. 0.7 beat 0.5,
            0.85 and 1 (no recency: hit@10 0.090 vs 0.101) on validation.
        recent: how many of the user's last items are read, for candidates and the nearest-position
            feature; it bounds the entries a request reads (2 x recent x neighbours). 10 scores as 20
            on validation (0.7 ** 10 = 0.03: older items hardly count): co-visitation alone, R@10 /
            NDCG@10 / hit@100, Amazon Toys .1114 / .0724 / .2243 at 10 and .1114 / .0724 / .2244 at 20,
            the default synthetic shop .1615 / .0885 / .4499 and .1615 / .0883 / .4495; at 100k items
            it halves the request's co-visitation read.
    """

    window: int | None = 20
    decay: float = 0.5
    transition_window: int = 10
    popularity_damping: float = 0.0
    neighbours: int = 200
    transition_weight: float = 1.0
    recency: float = 0.7
    recent: int = 10

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 1:
            raise InvalidInput(f"CoVisitConfig.window: {self.window!r} must be >= 1 or None (whole history)")
        if self.transition_window < 1:
            raise InvalidInput(f"CoVisitConfig.transition_window: {self.transition_window!r} must be >= 1")
        if self.neighbours < 1 or self.recent < 1:
            raise InvalidInput(f"CoVisitConfig: neighbours ({self.neighbours}) and recent ({self.recent}) must be >= 1")
        if not 0.0 < self.recency <= 1.0:
            raise InvalidInput(f"CoVisitConfig.recency: {self.recency!r} must be in (0, 1]")
        if not 0.0 <= self.popularity_damping <= 1.0:
            raise InvalidInput(f"CoVisitConfig.popularity_damping: {self.popularity_damping!r} must be in [0, 1]")
        if self.decay < 0 or self.transition_weight < 0:
            raise InvalidInput("CoVisitConfig: decay and transition_weight must be >= 0")


# The settings that make the matrices themselves; the others decide how a request reads them. The
# daily feature step fits the `item_covisitation` view with the defaults, so a served model must
# have been fitted with these at their defaults too (`served_config`).
MATRIX_SETTINGS: tuple[str, ...] = ("window", "decay", "transition_window", "popularity_damping", "neighbours")


def served_config(saved: dict[str, Any] | None, view: CoVisitConfig = CoVisitConfig()) -> CoVisitConfig:
    """The settings a served model reads the view's matrices with: the ones it was trained with (`saved`;
    None: a model saved before they were recorded, the defaults).

    Raises:
        ModelUnavailable: unknown settings, or matrix settings other than the view's (its candidates
            and features would not be the ones the reranker learned from).
    """
    if saved is None:
        return view
    unknown = set(saved) - {f.name for f in fields(CoVisitConfig)}
    if unknown:
        raise ModelUnavailable(f"co-visitation settings of the model: unknown {sorted(unknown)}")
    config = CoVisitConfig(**saved)
    differ = {name: (getattr(config, name), getattr(view, name)) for name in MATRIX_SETTINGS
              if getattr(config, name) != getattr(view, name)}
    if differ:
        raise ModelUnavailable("the model's co-visitation matrices were fitted with settings the item_covisitation view "
                               f"is not (model, view): {differ}; train it with the default matrix settings")
    return config


@dataclass(frozen=True)
class CoVisitation:
    """The fitted co-occurrence and transition matrices, and the candidates and features read from them.

    Args:
        config: the settings it was fitted (and scores) with.
        cooc: [items, items] CSR, float32, symmetric before pruning, top `neighbours` per row.
        transition: [items, items] CSR, float32, row i -> the items that followed i.
        item_ids: [items] catalog ids of the rows (lineage: rows mean nothing without them).

    Example:
        >>> model = CoVisitation.fit(sequences)
        >>> rows, scores = model.candidates(np.array([12, 7, 301]), n=200)
    """

    config: CoVisitConfig
    cooc: sp.csr_matrix
    transition: sp.csr_matrix
    item_ids: np.ndarray

    @property
    def n_items(self) -> int:
        return int(self.cooc.shape[0])

    @classmethod
    def fit(cls, sequences: Sequences, config: CoVisitConfig = CoVisitConfig()) -> "CoVisitation":
        """Both matrices from every user's sequence (`training.leave_last_out.Sequences`).

        Args:
            sequences: users' distinct items in time order, as catalog rows (CSR offsets).
            config: windows, decay, damping and pruning.

        Example:
            >>> model = CoVisitation.fit(split.validation.train, CoVisitConfig(window=None, decay=0))
        """
        offsets = np.asarray(sequences.offsets, dtype=np.int64)
        items = np.asarray(sequences.items, dtype=np.int64)
        n_items = int(sequences.n_items)
        counts = np.bincount(items, minlength=n_items).astype(np.float64)
        cooc = _fit_matrix(offsets, items, n_items, counts, before=config.window, after=config.window,
                           decay=config.decay, source_power=0.5, target_power=0.5, keep=config.neighbours)
        damping = config.popularity_damping
        transition = _fit_matrix(offsets, items, n_items, counts, before=0, after=config.transition_window,
                                 decay=config.decay, source_power=1.0 - damping, target_power=damping,
                                 keep=config.neighbours)
        return cls(config, cooc, transition, np.asarray([str(i) for i in sequences.item_ids]))

    @classmethod
    def from_neighbours(
        cls,
        item_ids: Sequence[str] | np.ndarray,
        cooc: tuple[Sequence[Any], Sequence[Any]],
        transition: tuple[Sequence[Any], Sequence[Any]],
        config: CoVisitConfig = CoVisitConfig(),
    ) -> "CoVisitation":
        """The matrices again from per-item neighbour lists (the `item_covisitation` view's rows).

        Args:
            item_ids: the catalog; row r of the matrices is item_ids[r].
            cooc, transition: (neighbour ids, their scores), one entry per catalog row, None or empty
                where the item has none. Ids outside the catalog (delisted since) are dropped.

        Rows keep their entries in ascending column order, as `fit` leaves them, so every sum over
        them runs in the same order and candidates and features come out the same as offline.
        """
        ids = np.asarray([str(i) for i in item_ids], dtype=object)
        index = pd.Index(ids)
        return cls(config, _csr(index, *cooc), _csr(index, *transition), ids)

    def candidates(self, history: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-n catalog rows not in `history` (oldest first), best first, and their scores.

        The score of an item is the sum over the `recent` last history items (position p, 0 = last)
        of `recency ** p * (cooc + transition_weight * transition)`. Fewer than n come back when
        fewer items are related to the history at all; ties go to the lower row.

        Args:
            history: [k] catalog rows, oldest first.
            n: how many candidates at most.

        Example:
            >>> rows, scores = model.candidates(np.array([3, 9]), n=200)   # int64 [<=200], float32
        """
        rows, scores = self.candidates_batch([history], n)
        found = rows[0] >= 0
        return rows[0][found], scores[0][found]

    def candidates_batch(self, histories: Sequence[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        """`candidates` for many users at once: rows [users, n] int64 padded with -1, scores float32 (NaN pad).

        Args:
            histories: per user, catalog rows oldest first (e.g. `Task.history()`).
            n: list length.

        Example:
            >>> top, scores = model.candidates_batch(split.test.history(), n=500)
        """
        if n < 0:
            raise InvalidInput(f"candidates: n={n} must be >= 0")
        blocks = [self.related(histories[first : first + size]).top(n) for first, size in self.blocks(len(histories))]
        if not blocks:
            return np.full((0, n), -1, dtype=np.int64), np.full((0, n), np.nan, dtype=np.float32)
        return np.concatenate([rows for rows, _ in blocks]), np.concatenate([scores for _, scores in blocks])

    def features(self, history: np.ndarray, candidates: np.ndarray) -> dict[str, np.ndarray]:
        """Ranker features (`FEATURE_NAMES`) of each candidate for one user: float32 arrays of len(candidates).

        `covisit_cooc_last{k}` / `covisit_next_last{k}`: the summed co-occurrence / transition
        (history item -> candidate) score with the last k history items; 0 when unrelated.
        `covisit_nearest_position`: position (0 = last) of the nearest of the last
        max(recent, 10) history items related to the candidate by either matrix; NaN when none is.

        Args:
            history: [k] catalog rows, oldest first.
            candidates: [m] catalog rows (any order, e.g. another retriever's).

        Example:
            >>> model.features(history, rows)["covisit_next_last1"]   # float32 [len(rows)]
        """
        batch = self.features_batch([history], np.asarray(candidates, dtype=np.int64)[None, :])
        return {name: values[0] for name, values in batch.items()}

    def features_batch(self, histories: Sequence[np.ndarray], candidates: np.ndarray) -> dict[str, np.ndarray]:
        """`features` for many users: candidates [users, n] (-1 = padding, NaN features) -> [users, n] each.

        Example:
            >>> top, _ = model.candidates_batch(histories, 200)
            >>> model.features_batch(histories, top)["covisit_cooc_last3"].shape   # (users, 200)
        """
        candidates = np.asarray(candidates, dtype=np.int64)
        if candidates.ndim != 2 or len(candidates) != len(histories):
            raise InvalidInput(f"features: candidates shape {candidates.shape} is not [{len(histories)} users, n]")
        blocks = [self.related(histories[first : first + size]).features(candidates[first : first + size])
                  for first, size in self.blocks(len(histories))]
        if not blocks:
            return {name: np.full(candidates.shape, np.nan, dtype=np.float32) for name in FEATURE_NAMES}
        return {name: np.concatenate([block[name] for block in blocks]) for name in FEATURE_NAMES}

    def blocks(self, users: int) -> list[tuple[int, int]]:
        """(first user, count) blocks whose neighbour entries stay near ENTRIES_PER_CHUNK: what `related` should get at once."""
        size = max(1, ENTRIES_PER_CHUNK // max(1, 2 * self._depth * self.config.neighbours))
        return [(first, min(size, users - first)) for first in range(0, users, size)]

    def related(self, histories: Sequence[np.ndarray]) -> "Related":
        """Every item related to each history's last items by either matrix, with the sums candidates and features read.

        One pass over the neighbour entries serves both the candidates (`Related.top`) and the
        features of any candidate list (`Related.features`): a request reads them once. It holds
        all the entries of `histories`: many users go a `blocks` block at a time.

        Example:
            >>> related = model.related(histories)
            >>> top, scores = related.top(100)
            >>> related.features(top)["covisit_next_last1"]     # [users, 100]
        """
        histories = [np.asarray(h, dtype=np.int64) for h in histories]
        flat = np.concatenate(histories) if histories else np.zeros(0, dtype=np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.n_items):
            raise InvalidInput(f"history: row {int(flat.min() if flat.min() < 0 else flat.max())} "
                               f"is outside the {self.n_items}-item catalog")
        gathered = self._gather(histories, self._depth)
        keys, first_seen, inverse = unique_first(gathered.keys)
        # One bincount for the six windowed sums: each entry falls in a cell (matrix, position band),
        # band b holding positions FEATURE_DEPTHS[b-1] <= p < FEATURE_DEPTHS[b]; a window's sum is
        # then the cumulative sum of its bands. The bands past the last depth are not read.
        bands = len(FEATURE_DEPTHS) + 1
        cell = gathered.is_transition * bands + np.searchsorted(FEATURE_DEPTHS, gathered.positions, side="right")
        banded = np.bincount(inverse * 2 * bands + cell, weights=gathered.values, minlength=len(keys) * 2 * bands)
        banded = banded.reshape(len(keys), 2, bands)
        sums: dict[str, np.ndarray] = {}
        for m, name in enumerate(("cooc", "next")):
            window = np.zeros(len(keys))
            for b, k in enumerate(FEATURE_DEPTHS):  # a running sum (np.cumsum over the strided axis was 5x slower)
                window = window + banded[:, m, b]
                sums[f"covisit_{name}_last{k}"] = window
        sums["covisit_nearest_position"] = gathered.positions[first_seen].astype(np.float64)
        read = gathered.positions < self.config.recent
        weights = gathered.values * np.where(gathered.is_transition, self.config.transition_weight, 1.0)
        sums["covisit_score"] = np.bincount(
            inverse, weights=np.where(read, weights * self.config.recency ** gathered.positions, 0.0), minlength=len(keys))
        # Candidates: items some read item relates to, outside the whole history (not just the read part).
        proposed = np.bincount(inverse, weights=read, minlength=len(keys)) > 0
        history = _history_keys(histories, self.n_items)
        at = np.minimum(np.searchsorted(keys, history), max(len(keys) - 1, 0))
        if len(keys):
            proposed[at[keys[at] == history]] = False
        return Related(self.n_items, len(histories), keys, sums, proposed)

    @property
    def _depth(self) -> int:
        """History items read per user: the candidates' `recent` and the features' deepest window."""
        return max(self.config.recent, FEATURE_DEPTHS[-1])

    def save(self, directory: Path) -> None:
        """The CSR arrays (npz) and the config (json) in `directory`; no pickle, so loading runs no code.

        Example:
            >>> model.save(Path("data/models/covisitation"))
        """
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {"item_ids": self.item_ids.astype(str)}
        for name, matrix in (("cooc", self.cooc), ("transition", self.transition)):
            arrays |= {f"{name}_indptr": matrix.indptr, f"{name}_indices": matrix.indices, f"{name}_data": matrix.data}
        np.savez(directory / ARTIFACT_ARRAYS, allow_pickle=False, **arrays)
        meta = {"format_version": FORMAT_VERSION, "n_items": self.n_items, "config": asdict(self.config)}
        (directory / ARTIFACT_META).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> "CoVisitation":
        """What `save` wrote; ModelUnavailable when it is missing, of another format or has unknown settings.

        Example:
            >>> model = CoVisitation.load(Path("data/models/covisitation"))
        """
        try:
            meta = json.loads((directory / ARTIFACT_META).read_text())
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format_version')!r}, this code reads {FORMAT_VERSION}")
            unknown = set(meta["config"]) - {f.name for f in fields(CoVisitConfig)}
            if unknown:
                raise ValueError(f"unknown settings {sorted(unknown)}")
            n = int(meta["n_items"])
            with np.load(directory / ARTIFACT_ARRAYS, allow_pickle=False) as arrays:
                cooc, transition = (sp.csr_matrix((arrays[f"{name}_data"], arrays[f"{name}_indices"],
                                                   arrays[f"{name}_indptr"]), shape=(n, n))
                                    for name in ("cooc", "transition"))
                item_ids = arrays["item_ids"]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelUnavailable(f"co-visitation model at {directory}: {exc}") from exc
        return cls(CoVisitConfig(**meta["config"]), cooc, transition, item_ids)

    def _gather(self, histories: list[np.ndarray], depth: int) -> "_Gathered":
        """The neighbour entries of each user's `depth` last items, from both matrices.

        Entries come by user, then position (newest first), then cooc before transition, then each
        row's stored order, so the first entry of a key is its nearest position, and the order of
        one user's entries does not depend on the other users: sums over them are the same in a
        batch of one and in any batch.
        """
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        flat = np.concatenate(histories) if histories else np.zeros(0, dtype=np.int64)
        # The `depth` newest items of each user, newest first: position 0 = the last item.
        user, position = _ragged(np.zeros_like(lengths), np.minimum(lengths, depth))
        source = flat[np.cumsum(lengths)[user] - 1 - position]
        # Both matrices' rows of each source item, side by side: [cooc row, transition row] per item,
        # read in that order from one stacked CSR (the transition rows after the n cooc rows).
        stacked_rows = np.stack([source, source + self.n_items], axis=1).ravel()
        entry_of, entries = _ragged(self._stacked.indptr[stacked_rows], self._stacked.indptr[stacked_rows + 1])
        origin = entry_of // 2
        return _Gathered(keys=user[origin] * self.n_items + self._stacked.indices[entries].astype(np.int64), positions=position[origin],
                         values=self._stacked.data[entries].astype(np.float64), is_transition=(entry_of % 2).astype(bool))

    @cached_property
    def _stacked(self) -> sp.csr_matrix:
        """[2 x items, items] cooc rows then transition rows: one CSR to gather both from.

        The two matrices are then re-pointed at its arrays, so the model is held once in memory
        (0.3 GB for both at 100k items).
        """
        stacked = sp.vstack([self.cooc, self.transition], format="csr")
        n, split = self.n_items, int(self.cooc.nnz)
        data, indices, indptr = stacked.data, stacked.indices, stacked.indptr
        object.__setattr__(self, "cooc", sp.csr_matrix((data[:split], indices[:split], indptr[: n + 1]), shape=(n, n), copy=False))
        object.__setattr__(self, "transition", sp.csr_matrix(
            (data[split:], indices[split:], indptr[n:] - split), shape=(n, n), copy=False))
        return stacked

@dataclass(frozen=True)
class Related:
    """The items related to a block of histories (`CoVisitation.related`): key = local user * items + row.

    Attributes:
        sums: per key, float64, each of FEATURE_NAMES (the candidate score is `covisit_score`).
        proposed: per key, whether it is a candidate (read by the candidates' `recent` items, not in the history).
    """

    n_items: int
    users: int
    keys: np.ndarray
    sums: dict[str, np.ndarray]
    proposed: np.ndarray

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """[users, n] the best candidate rows (-1 padded) and their float32 scores (NaN pad); ties go to the lower row."""
        top = np.full((self.users, n), -1, dtype=np.int64)
        top_scores = np.full((self.users, n), np.nan, dtype=np.float32)
        keys, scores = self.keys[self.proposed], self.sums["covisit_score"][self.proposed].astype(np.float32)
        users, rows = np.divmod(keys, self.n_items)
        order = _top_order(users, scores, rows, self.n_items, n if self.users == 1 else None)
        users = users[order]
        per_user = np.bincount(users, minlength=self.users)
        rank = np.arange(len(order)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
        kept = rank < n
        top[users[kept], rank[kept]] = rows[order[kept]]
        top_scores[users[kept], rank[kept]] = scores[order[kept]]
        return top, top_scores

    def features(self, candidates: np.ndarray) -> dict[str, np.ndarray]:
        """FEATURE_NAMES of candidates [users, m] (catalog rows, -1 = padding: NaN), float32 [users, m] each."""
        candidates = np.asarray(candidates, dtype=np.int64)
        if candidates.shape[0] != self.users:
            raise InvalidInput(f"features: candidates for {candidates.shape[0]} users, histories of {self.users}")
        if candidates.size and candidates.max() >= self.n_items:
            raise InvalidInput(f"features: candidate row {int(candidates.max())} is outside the {self.n_items}-item catalog")
        valid = candidates >= 0
        flat = self.at(np.broadcast_to(np.arange(self.users)[:, None], candidates.shape)[valid], candidates[valid])
        out = {}
        for name, values in flat.items():
            out[name] = np.full(candidates.shape, np.nan, dtype=np.float32)
            out[name][valid] = values
        return out

    def at(self, users: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        """FEATURE_NAMES of (local user, catalog row) pairs, float32 [pairs] each: `features` on flat candidates."""
        wanted = users * self.n_items + rows
        at = np.minimum(np.searchsorted(self.keys, wanted), max(len(self.keys) - 1, 0))
        hit = self.keys[at] == wanted if len(self.keys) else np.zeros(len(wanted), dtype=bool)
        out = {}
        for name, values in self.sums.items():
            missing = np.nan if name == "covisit_nearest_position" else 0.0
            out[name] = np.where(hit, values[at] if len(values) else missing, missing).astype(np.float32)
        return out


@dataclass(frozen=True)
class _Gathered:
    """Neighbour entries of a chunk of users: key = local user * items + neighbour row."""

    keys: np.ndarray
    positions: np.ndarray
    values: np.ndarray
    is_transition: np.ndarray


def _ragged(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, index): every index in [starts[o], stops[o]) for each o, in order, without a Python loop."""
    counts = np.maximum(stops - starts, 0)
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(counts)), counts)
    index = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts) + np.asarray(starts)[owner]
    return owner, index


def _top_order(groups: np.ndarray, values: np.ndarray, ties: np.ndarray, n_ties: int, first: int | None = None) -> np.ndarray:
    """The order by group, then value descending, then tie ascending: `np.lexsort((ties, -values, groups))`, faster.

    lexsort on three keys was most of the time of `candidates_batch` (~4x one argsort). Values are
    float32 >= 0, whose bit patterns sort as the numbers do, so (group, bits descending, tie) packs
    into one int64 that sorts the same whenever it fits (catalog x groups below 2 ** 32); lexsort is
    the fallback. `first`: only the first entries of the order are wanted (one group: a partition,
    then a sort of those alone).
    """
    if (int(groups.max(initial=0)) + 1) * n_ties >= 2**32:
        return np.lexsort((ties, -values, groups))[:first]
    descending = np.int64(2**31 - 1) - np.asarray(values, dtype=np.float32).view(np.int32).astype(np.int64)
    key = (groups.astype(np.int64) * 2**31 + descending) * n_ties + ties
    if first is not None and first < len(key):
        part = np.argpartition(key, first)[:first]
        return part[np.argsort(key[part])]
    return np.argsort(key)[:first]


def _history_keys(histories: list[np.ndarray], n_items: int) -> np.ndarray:
    """local user * items + row of every history item (the whole history is excluded, not just the read part)."""
    lengths = [len(h) for h in histories]
    users = np.repeat(np.arange(len(histories)), lengths)
    flat = np.concatenate(histories) if histories else np.zeros(0, dtype=np.int64)
    return users * n_items + flat


def _fit_matrix(offsets: np.ndarray, items: np.ndarray, n_items: int, counts: np.ndarray, *,
                before: int | None, after: int | None, decay: float, source_power: float,
                target_power: float, keep: int) -> sp.csr_matrix:
    """One pruned item x item matrix: pairs (items[k], items[m]) with k - before <= m <= k + after, m != k.

    Each pair weighs `|m - k| ** -decay`; a cell is the sum over users divided by
    `counts[i] ** source_power * counts[j] ** target_power`. None = no bound (the whole sequence).
    Rows are built a block of items at a time (their positions sorted by item), so a block's rows
    are complete and pruned to `keep` before the next is built. A block holds at least one item:
    an item in nearly every basket makes a block bigger than PAIRS_PER_BLOCK on its own.
    """
    lengths = np.diff(offsets)
    user = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    position = np.arange(len(items)) - offsets[:-1][user]
    reach_before = position if before is None else np.minimum(position, before)
    remaining = lengths[user] - 1 - position
    reach_after = remaining if after is None else np.minimum(remaining, after)
    by_item = np.argsort(items, kind="stable")
    # Per distance and per item once, so that no power is taken per pair (they were half the time).
    with np.errstate(divide="ignore"):
        distance_weight = np.arange(int(max(reach_before.max(initial=0), reach_after.max(initial=0))) + 1,
                                    dtype=np.float64) ** -decay
        source_scale, target_scale = counts ** -source_power, counts ** -target_power
    # Pairs up to each item boundary, in item order: where to cut blocks of ~PAIRS_PER_BLOCK pairs.
    item_starts = np.r_[0, np.cumsum(counts.astype(np.int64))]
    pairs_before = np.r_[0, np.cumsum((reach_before + reach_after)[by_item])][item_starts]
    cuts = np.searchsorted(pairs_before, np.arange(PAIRS_PER_BLOCK, pairs_before[-1], PAIRS_PER_BLOCK), side="right")
    bounds = np.unique(np.r_[0, cuts, n_items])
    blocks = []
    for first, last in zip(bounds[:-1], bounds[1:]):
        ks = by_item[item_starts[first] : item_starts[last]]
        owner, partner = _ragged(ks - reach_before[ks], ks + reach_after[ks] + 1)
        source = ks[owner]
        pair = partner != source
        source, partner = source[pair], partner[pair]
        rows, cols = items[source], items[partner]
        weight = distance_weight[np.abs(partner - source)] * source_scale[rows] * target_scale[cols]
        rows -= first
        block = sp.csr_matrix((weight, (rows, cols)), shape=(int(last - first), n_items))
        blocks.append(_top_per_row(block, keep).astype(np.float32))
    if not blocks:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    return sp.vstack(blocks, format="csr")


def _csr(index: pd.Index, ids: Sequence[Any], scores: Sequence[Any]) -> sp.csr_matrix:
    """[items, items] float32 CSR from per-row neighbour ids and scores; unknown ids dropped, columns ascending."""
    lengths = np.array([0 if row is None else len(row) for row in ids], dtype=np.int64)
    filled = [n for n, length in enumerate(lengths) if length]
    flat_ids = np.concatenate([np.asarray(ids[n], dtype=object) for n in filled]) if filled else np.zeros(0, dtype=object)
    flat_scores = np.concatenate([np.asarray(scores[n], dtype=np.float32) for n in filled]) if filled else np.zeros(0, np.float32)
    columns = index.get_indexer(flat_ids.astype(str)) if len(flat_ids) else np.zeros(0, dtype=np.int64)
    rows = np.repeat(np.arange(len(index)), lengths)
    known = columns >= 0
    matrix = sp.csr_matrix((flat_scores[known], (rows[known], columns[known])), shape=(len(index), len(index)), dtype=np.float32)
    matrix.sort_indices()
    return matrix


def _top_per_row(matrix: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """The `keep` largest entries of each row (ties: lower column), columns in ascending order.

    Only rows with more than `keep` entries are cut, one `np.partition` each: a long-tail catalog
    has few of them, and a grouped sort of all entries cost 5x more.
    """
    matrix.sort_indices()
    sizes = np.diff(matrix.indptr)
    kept = np.ones(matrix.nnz, dtype=bool)
    for row in np.flatnonzero(sizes > keep):
        start, stop = matrix.indptr[row], matrix.indptr[row + 1]
        values = matrix.data[start:stop]
        threshold = np.partition(values, len(values) - keep)[len(values) - keep]
        above = values > threshold
        # Fill up with the entries equal to the threshold, lowest columns first (indices are sorted).
        tied = np.flatnonzero(values == threshold)[: keep - int(above.sum())]
        above[tied] = True
        kept[start:stop] = above
    row_of = np.repeat(np.arange(matrix.shape[0]), sizes)
    indptr = np.r_[0, np.cumsum(np.bincount(row_of[kept], minlength=matrix.shape[0]))]
    return sp.csr_matrix((matrix.data[kept], matrix.indices[kept], indptr), shape=matrix.shape)
