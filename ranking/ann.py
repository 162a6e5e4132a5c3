"""The FAISS index over item vectors: exact inner product for small catalogs, HNSW beyond.

Item and user vectors are L2-normalised, so inner product is cosine similarity, the score the
towers were trained on. Up to `AnnConfig.exact_max_items` items an exact `IndexFlatIP` is both
fast enough and exact; beyond it an HNSW graph (inner-product metric) answers in sub-millisecond
time at some recall cost, which `ann_recall` measures against exact search.

Contract of `search`: rows are returned best first; FAISS pads with -1 when it finds fewer than k
neighbours, and those never leave this module.

Example:
    index = build_index(item_vectors, AnnConfig())
    rows, scores = search(index, user_vectors, k=100)      # lists per query, no -1
    recall = ann_recall(index, item_vectors, user_vectors, k=100)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from vitrine.errors import ModelUnavailable

# Up to this many items, exact search costs under a millisecond per query on one core (100k x 64 floats).
EXACT_MAX_ITEMS = 50_000
# HNSW links per node: 32 is FAISS's recommended trade-off of memory and recall for 64-d vectors.
HNSW_M = 32
# Candidate list while building: higher builds slower and links better.
HNSW_EF_CONSTRUCTION = 200
# Candidate list while searching: must be >= k; 256 keeps recall@100 near 0.99 at 100k items.
HNSW_EF_SEARCH = 256


@dataclass(frozen=True)
class AnnConfig:
    """Which FAISS index to build."""

    # Catalogs up to this size get an exact IndexFlatIP; larger ones get HNSW.
    exact_max_items: int = EXACT_MAX_ITEMS
    # HNSW neighbours per node.
    hnsw_m: int = HNSW_M
    # HNSW build-time candidate list.
    hnsw_ef_construction: int = HNSW_EF_CONSTRUCTION
    # HNSW query-time candidate list (raised to k when k is larger).
    hnsw_ef_search: int = HNSW_EF_SEARCH


def build_index(vectors: np.ndarray, config: AnnConfig = AnnConfig()) -> faiss.Index:
    """An inner-product index over `vectors` ([N, d] float32); row i of the index is row i of `vectors`."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    index: faiss.Index
    if len(vectors) <= config.exact_max_items:
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = config.hnsw_ef_search
    index.add(vectors)
    return index


def index_kind(index: faiss.Index) -> str:
    """`exact` or `hnsw`, for reports and lineage."""
    return "hnsw" if isinstance(faiss.downcast_index(index), faiss.IndexHNSW) else "exact"


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Top-k rows and scores per query, best first, with FAISS's -1 padding removed.

    Args:
        index: from `build_index` or `read_index`.
        queries: [Q, d] float32 query vectors.
        k: candidates per query; more than the index holds returns all of them.
    """
    k = max(1, min(k, index.ntotal))
    hnsw = faiss.downcast_index(index)
    params = None
    if isinstance(hnsw, faiss.IndexHNSW) and hnsw.hnsw.efSearch < k:
        # HNSW cannot return more than efSearch neighbours. Widened per call, never on the shared index:
        # the service searches from several threads, and a raised efSearch would slow every later request.
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's stubs
        params.efSearch = k
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)
    keep = rows >= 0
    return [r[m] for r, m in zip(rows, keep)], [s[m] for s, m in zip(scores, keep)]


def ann_recall(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Share of the exact top-k (brute-force inner product) that `index` returns, averaged over queries."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    truth, _ = search(exact, queries, k)
    found, _ = search(index, queries, k)
    hits = [len(np.intersect1d(t, f)) / max(len(t), 1) for t, f in zip(truth, found)]
    return float(np.mean(hits)) if hits else 0.0


def write_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def read_index(path: Path) -> faiss.Index:
    if not path.exists():
        raise ModelUnavailable(f"{path}: no ANN index")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise ModelUnavailable(f"{path}: unreadable FAISS index ({exc})") from exc
