"""Next-item candidates and their ranker features: what the next-item recommender ranks, offline and online.

Every user is a history: their distinct items, oldest first, as rows of the retriever's catalog.
Four sources each propose items the user has not met:

- `tower`: the sequence tower's nearest items (`ranking.sequence_retriever`, the FAISS index);
- `covisitation`: co-occurrence and transition neighbours of the last items (`feature_repo.covisitation`);
- `popular`: the items most users' sequences hold;
- `content`: the items whose content vector (CLIP: image and title) is nearest the last items',
  which also reaches items nobody has bought yet.

Their union is tagged with each source's rank, and `candidate_features` describes every candidate
in terms that make the sources comparable (tower score and its gap to the user's best,
co-visitation scores with the last 1/3/10 items, content cosine to the last items and their mean,
source ranks and count, popularity, the item's share of returning users, the user's history length
and days since their newest item). The training of the reranker (`training.train_next_item`), the leave-last-out benchmark and
serving (`ranking.recommender`) all call these functions, for one user or for all of them at once,
so a feature is computed one way only (tested: one user's features equal the batch's).

Example:
    sources = CandidateSources(retriever, covisitation, popularity, repeat_share)
    found = candidates(sources, histories)          # Candidates: rows [users, C], features frame
    scores = ranker.predict(found.frame())
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from feature_repo.covisitation import FEATURE_NAMES as COVISIT_FEATURES
from feature_repo.covisitation import CoVisitation, Related
from ranking.request_threads import request_pool
from vitrine.arrays import distinct, first_occurrences, outside

if TYPE_CHECKING:  # the reranker reads FEATURE_NAMES from here without loading torch
    from ranking.sequence_retriever import SequenceRetriever

# Candidates each source hands the reranker: deep enough to hold most next items (the union's
# recall at this depth is the ceiling of the rerank), shallow enough to rank in a millisecond.
TOWER_CANDIDATES = 100
COVISIT_CANDIDATES = 100
POPULAR_CANDIDATES = 20
CONTENT_CANDIDATES = 50
SOURCES = ("tower", "covisitation", "popular", "content")
# The content source's query: the last items' content vectors, the one p positions before the last
# weighing CONTENT_RECENCY ** p (the last item leads, the two before it still count).
CONTENT_QUERY_ITEMS = 3
CONTENT_RECENCY = 0.5
# History items whose mean content the `content_mean` feature compares with (the recent taste,
# like the co-visitation features' last 10).
CONTENT_HISTORY = 10
# Reciprocal-rank constant of the merged order (the usual RRF value): the order without a reranker.
RRF_K = 60

# The reranker's inputs, in order (a saved ranker stores its list; a different one is refused).
FEATURE_NAMES: tuple[str, ...] = (
    *(f"{source}_rank" for source in SOURCES),  # 0-based position in the source's list, NaN when it did not propose it
    "sources",  # how many sources proposed it
    "tower_score",  # inner product of the user's tower state and the item vector
    "tower_score_gap",  # tower_score minus the user's best candidate's: users differ in scale, trees split on values
    *COVISIT_FEATURES,
    "covisit_score_share",  # the candidate's co-visitation score over the user's best candidate's
    "content_last",  # cosine of the candidate's content vector to the last item's (NaN without content)
    "content_max3",  # the best cosine to one of the last 3 items
    "content_mean",  # cosine to the mean of the last CONTENT_HISTORY items' vectors
    "popularity",  # log(1 + users whose sequences hold it)
    "item_repeat_share",  # share of the item's users who came back to it in another session (re-buys, re-visits)
    "last_item_popularity",  # the same for the user's last item: a popular last item has noisier neighbours
    "history_length",  # items in the user's history
    "days_since_last_item",  # from the user's newest item to the request (NaN when unknown)
)


@dataclass(frozen=True)
class CandidateSources:
    """The sources, in the retriever's catalog rows.

    Args:
        retriever: the sequence tower and its index.
        covisitation: fitted (or rebuilt from the online store) on the same catalog rows.
        popularity: [items] users whose sequences hold each item.
        repeat_share: [items] share of them who came back to it in another session (NaN: unknown).
    """

    retriever: "SequenceRetriever"
    covisitation: CoVisitation
    popularity: np.ndarray
    repeat_share: np.ndarray
    # The items some sequence holds, most popular first (ties: lower row): sorted once, not per request.
    popular_order: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.retriever.item_ids)
        if self.covisitation.n_items != n or len(self.popularity) != n or len(self.repeat_share) != n:
            raise ValueError(f"sources disagree on the catalog: tower {n}, co-visitation {self.covisitation.n_items}, "
                             f"popularity {len(self.popularity)}, repeat share {len(self.repeat_share)} items")
        order = np.argsort(-self.popularity, kind="stable")
        object.__setattr__(self, "popular_order", order[self.popularity[order] > 0])


@dataclass(frozen=True)
class Candidates:
    """Per user, the union of the sources' candidates (-1 padded), and one feature row per valid candidate.

    Attributes:
        rows: [users, C] catalog rows, each user's in the order the sources met them.
        matrix: [n, len(FEATURE_NAMES)] float32, one row per valid cell of `rows`, row-major (users in order).
        rrf: [n] the summed reciprocal ranks: the merged order's key.
        users: [n] index of the user of each feature row.
        items: [n] catalog row of each feature row.
        lists: each source's ranked list [users, n] the union was made of (`source_lists`).
    """

    rows: np.ndarray
    matrix: np.ndarray
    rrf: np.ndarray
    users: np.ndarray
    items: np.ndarray
    lists: dict[str, np.ndarray] = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        """The matrix with its column names (what LightGBM trains on)."""
        return pd.DataFrame(self.matrix, columns=list(FEATURE_NAMES))

    def proposed_by(self) -> np.ndarray:
        """[n, len(SOURCES)] bool: which sources proposed each candidate."""
        return proposed_by(self.matrix)


def proposed_by(matrix: np.ndarray) -> np.ndarray:
    """[n, len(SOURCES)] bool: which sources proposed each row of a FEATURE_NAMES matrix (its source ranks are set)."""
    return ~np.isnan(matrix[:, : len(SOURCES)])


def source_lists(
    sources: CandidateSources, histories: Sequence[np.ndarray], vectors: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], Related, np.ndarray]:
    """Each source's ranked candidates [users, n] (-1 padded), none of them in the user's history; the
    co-visitation read (`CoVisitation.related`), which the features read again; and the tower's user vectors.

    The tower and the FAISS search run on a worker thread while this one reads the other sources: the
    compiled user state (`ranking.user_state_kernel`) and FAISS both let go of the GIL, so on a request
    they cost little more than the hand-off.

    Args:
        vectors: [users, d] the tower's user vectors (`SequenceRetriever.vectors_of(histories)`), when the caller has them.
    """
    def tower_side() -> tuple[np.ndarray, np.ndarray]:
        mine = sources.retriever.vectors_of(histories) if vectors is None else vectors
        return mine, tower_top(sources.retriever, histories, mine, TOWER_CANDIDATES)

    tower = request_pool().submit(tower_side)
    related = sources.covisitation.related(histories)
    covis_rows, _ = related.top(COVISIT_CANDIDATES)
    lists = {"covisitation": covis_rows, "popular": _popular_top(sources.popular_order, histories, POPULAR_CANDIDATES),
             "content": _content_top(sources.retriever, histories, CONTENT_CANDIDATES)}
    user_vectors, tower_rows = tower.result()
    return {"tower": tower_rows, **lists}, related, user_vectors


def candidates(sources: CandidateSources, histories: Sequence[np.ndarray], elapsed_days: np.ndarray | None = None,
               vectors: np.ndarray | None = None, lap: Callable[[str], None] | None = None) -> Candidates:
    """The union of every source's candidates per history, with the reranker's features.

    Users go a co-visitation block at a time (`CoVisitation.blocks`), so memory stays bounded for
    any number of them; a user's candidates and features do not depend on the block (tested).

    Args:
        elapsed_days: [users] days from each user's newest item to the request (None: unknown).
        vectors: [users, d] the tower's user vectors of `histories`, when the caller has them already.
        lap: called with "retrieve" once the sources' lists are in, "rank_features" once the
            features are (serving times its stages with it).
    """
    lap = lap or (lambda stage: None)
    parts = []
    for first, size in sources.covisitation.blocks(len(histories)) or [(0, 0)]:
        block = histories[first : first + size]
        lists, related, mine = source_lists(sources, block, None if vectors is None else vectors[first : first + size])
        rows = union_rows(lists)
        lap("retrieve")
        elapsed = None if elapsed_days is None else np.asarray(elapsed_days)[first : first + size]
        parts.append(Candidates(rows, *candidate_features(sources, block, mine, rows, lists, elapsed, related), lists=lists))
        lap("rank_features")
    return _joined(parts)


def _joined(blocks: list[Candidates]) -> Candidates:
    """Consecutive blocks of users as one Candidates (rows padded to the widest block, user indices shifted)."""
    if len(blocks) == 1:
        return blocks[0]
    width = max(block.rows.shape[1] for block in blocks)
    firsts = np.cumsum([0] + [len(block.rows) for block in blocks[:-1]])
    return Candidates(
        np.concatenate([np.pad(b.rows, ((0, 0), (0, width - b.rows.shape[1])), constant_values=-1) for b in blocks]),
        np.concatenate([b.matrix for b in blocks]),
        np.concatenate([b.rrf for b in blocks]),
        np.concatenate([first + b.users for first, b in zip(firsts, blocks)]),
        np.concatenate([b.items for b in blocks]),
        lists={source: np.concatenate([b.lists[source] for b in blocks]) for source in SOURCES},
    )


def union_rows(lists: dict[str, np.ndarray]) -> np.ndarray:
    """[users, C] the distinct rows of every source's list per user, first met first (sources in SOURCES order), -1 padded."""
    users = len(lists[SOURCES[0]])
    union = [_union(*(lists[s][u] for s in SOURCES)) for u in range(users)]
    rows = np.full((users, max((len(u) for u in union), default=0) or 1), -1, dtype=np.int64)
    for n, items in enumerate(union):
        rows[n, : len(items)] = items
    return rows


def candidate_features(
    sources: CandidateSources,
    histories: Sequence[np.ndarray],
    vectors: np.ndarray,
    rows: np.ndarray,
    lists: dict[str, np.ndarray],
    elapsed_days: np.ndarray | None = None,
    related: Related | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """FEATURE_NAMES of every valid candidate in `rows` [users, C], row-major: the matrix, rrf, each row's user and catalog row.

    Every column is computed on the valid cells alone (one request has ~250 of them), in one flat array.
    `related`: what `source_lists` read (`CoVisitation.related(histories)`), else read again.
    """
    valid = rows >= 0
    counts = valid.sum(axis=1)
    users = np.repeat(np.arange(len(rows)), counts)
    items = rows[valid]
    columns: dict[str, np.ndarray] = {}
    ranks = _ranks_in(lists, users, items)  # [sources, n], NaN where the source did not propose it
    proposed = ~np.isnan(ranks)
    rrf = np.zeros(len(items), dtype=np.float32)
    for s, source in enumerate(SOURCES):
        columns[f"{source}_rank"] = ranks[s]
        rrf += np.where(proposed[s], 1.0 / (RRF_K + np.where(proposed[s], ranks[s], 0.0)), 0.0)
    columns["sources"] = proposed.sum(axis=0)
    tower = np.einsum("nd,nd->n", vectors[users], sources.retriever.vectors[items])
    columns["tower_score"] = tower
    columns["tower_score_gap"] = tower - _per_user_max(tower, counts, -np.inf)[users]
    columns.update((related or sources.covisitation.related(histories)).at(users, items))
    score = columns["covisit_score"]
    top = np.maximum(_per_user_max(score, counts, 0.0), 0.0)[users]
    columns["covisit_score_share"] = np.where(top > 0, score / np.maximum(top, 1e-30), 0.0)
    columns.update(_content_similarities(sources.retriever.content, histories, items, counts))
    columns["popularity"] = np.log1p(sources.popularity[items])
    columns["item_repeat_share"] = sources.repeat_share[items]
    last = np.array([h[-1] if len(h) else -1 for h in histories], dtype=np.int64)
    columns["last_item_popularity"] = np.where(last >= 0, np.log1p(sources.popularity[np.maximum(last, 0)]), np.nan)[users]
    columns["history_length"] = np.array([len(h) for h in histories], np.float32)[users]
    elapsed = np.full(len(histories), np.nan, dtype=np.float32) if elapsed_days is None else np.asarray(elapsed_days, dtype=np.float32)
    columns["days_since_last_item"] = elapsed[users]
    matrix = np.empty((len(items), len(FEATURE_NAMES)), dtype=np.float32)
    for j, name in enumerate(FEATURE_NAMES):
        matrix[:, j] = columns[name]
    return matrix, rrf, users, items


def _per_user_max(values: np.ndarray, counts: np.ndarray, empty: float) -> np.ndarray:
    """[users] the largest of each user's consecutive run of `values` (`counts` long each), `empty` for none."""
    out = np.full(len(counts), empty, dtype=np.float64)
    some = counts > 0
    if some.any():
        out[some] = np.maximum.reduceat(values, (np.cumsum(counts) - counts)[some])
    return out


def _ranks_in(lists: dict[str, np.ndarray], users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[sources, n] 0-based position of each (user, item) in the user's list of each source (NaN when absent).

    One sorted key per listed (user, item, source), searched for every candidate and source at once;
    a list's rows are distinct.
    """
    n_sources = len(SOURCES)
    stride = int(max(max(int(lists[s].max(initial=0)) for s in SOURCES), int(items.max(initial=0)))) + 1
    keys, positions = [], []
    for s, source in enumerate(SOURCES):
        listed = lists[source] >= 0
        user, position = np.nonzero(listed)
        keys.append((user * stride + lists[source][listed]) * n_sources + s)
        positions.append(position)
    key, position = np.concatenate(keys), np.concatenate(positions)
    order = np.argsort(key)
    key, position = key[order], position[order]
    out = np.full((n_sources, len(items)), np.nan, dtype=np.float32)
    if not len(key):
        return out
    wanted = (users * stride + items)[None, :] * n_sources + np.arange(n_sources)[:, None]
    at = np.minimum(np.searchsorted(key, wanted), len(key) - 1)
    return np.where(key[at] == wanted, position[at], np.nan).astype(np.float32)


def tower_top(retriever: "SequenceRetriever", histories: Sequence[np.ndarray], vectors: np.ndarray, k: int) -> np.ndarray:
    """[users, k] the index's best rows per user vector, the history dropped (searched k + its length deep)."""
    out = np.full((len(histories), k), -1, dtype=np.int64)
    if not len(histories):
        return out
    depth = min(len(retriever.item_ids), k + max(len(h) for h in histories))
    found, _ = retriever.search(vectors, depth)
    for n, (history, rows) in enumerate(zip(histories, found)):
        if not len(histories[n]):
            continue  # no sequence, no tower state: the other sources speak for this user
        kept = rows[outside(rows, history)][:k]
        out[n, : len(kept)] = kept
    return out


def _content_top(retriever: "SequenceRetriever", histories: Sequence[np.ndarray], k: int) -> np.ndarray:
    """[users, k] the items whose content is nearest each user's recency-weighted last items, the history dropped.

    The pool is the union of the last items' precomputed content neighbours
    (`SequenceRetriever.content_neighbours`), rescored exactly against the query; ties go to the lower row.
    """
    out = np.full((len(histories), k), -1, dtype=np.int64)
    content, neighbours = retriever.content, retriever.content_neighbours
    if content is None or neighbours is None:
        return out
    for n, history in enumerate(histories):
        if not len(history):
            continue
        recent = history[-CONTENT_QUERY_ITEMS:][::-1]  # newest first
        query = (CONTENT_RECENCY ** np.arange(len(recent), dtype=np.float32)) @ content[recent]
        pool = distinct(neighbours[recent].ravel())  # ascending rows, so a stable sort breaks ties by row
        pool = pool[(pool >= 0) & outside(pool, history)]
        best = pool[np.argsort(-(content[pool] @ query), kind="stable")[:k]]
        out[n, : len(best)] = best
    return out


def _content_similarities(content: np.ndarray | None, histories: Sequence[np.ndarray], items: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """[n] cosine of each candidate's content to the last item, the best of the last 3, and the recent mean (NaN without content).

    `items`: the candidates' catalog rows, user by user, `counts[u]` of user u's.
    """
    out = {name: np.full(len(items), np.nan, dtype=np.float32) for name in ("content_last", "content_max3", "content_mean")}
    if content is None:
        return out
    first = 0
    for history, count in zip(histories, counts.tolist()):
        mine = slice(first, first + count)
        first += count
        if not len(history) or not count:
            continue
        recent = content[history[-CONTENT_HISTORY:]]  # oldest first
        mean = recent.mean(axis=0)
        # One product for the last 3 and the mean: [C, 4].
        queries = np.concatenate([recent[-3:], (mean / max(float(np.linalg.norm(mean)), 1e-12))[None, :]])
        similarity = content[items[mine]] @ queries.T
        out["content_last"][mine] = similarity[:, -2]
        out["content_max3"][mine] = similarity[:, :-1].max(axis=1)
        out["content_mean"][mine] = similarity[:, -1]
    return out


def _popular_top(order: np.ndarray, histories: Sequence[np.ndarray], k: int) -> np.ndarray:
    """[users, k] the first items of `order` (most popular first) without each user's history."""
    head = order[: k + max((len(h) for h in histories), default=0)]
    out = np.full((len(histories), k), -1, dtype=np.int64)
    for n, history in enumerate(histories):
        picked = head[outside(head, history)][:k]
        out[n, : len(picked)] = picked
    return out


def _union(*lists: np.ndarray) -> np.ndarray:
    """Distinct valid rows of the lists, first occurrence first."""
    return first_occurrences(np.concatenate([lst[lst >= 0] for lst in lists]))


def merged_order(found: Candidates, depth: int) -> np.ndarray:
    """[users, depth] candidates by summed reciprocal rank (no reranker), -1 padded: the sources merged."""
    return order_by(found, -found.rrf, depth)


def order_by(found: Candidates, keys: np.ndarray, depth: int) -> np.ndarray:
    """[users, depth] each user's candidates sorted by `keys` (ascending; ties keep the union's order), -1 padded."""
    frame = pd.DataFrame({"user": found.users, "item": found.items, "key": keys}).sort_values(["user", "key"], kind="stable")
    frame["n"] = frame.groupby("user").cumcount()
    frame = frame[frame["n"] < depth]
    out = np.full((len(found.rows), depth), -1, dtype=np.int64)
    out[frame["user"].to_numpy(), frame["n"].to_numpy()] = frame["item"].to_numpy()
    return out
