"""`vitrine evaluate encoder`: held-out retrieval figures for the encoder and for the fused item vector.

All figures use items the trainer never saw (the `test` split of `embeddings.catalog`):

- cross-modal: image->text and text->image recall@10 (is the item's own caption / photo in the top 10
  of the held-out pool?), against the random baseline k/n;
- fused-vector ablations, where the catalog has labels (category, colour): for *search*, one query
  per label combination ("red handbag"), and for *similar items*, each item's vector as the query;
  relevant = held-out items with the same labels. recall@10 = |top10 & relevant| / min(10, |relevant|),
  for the fused vector against image-only and text-only item vectors and random;
- zero-shot category and colour accuracy from images (`embeddings.tag`).

The same label metrics on *validation* items choose the fusion weight (`choose_image_weight`).

Example:
    >>> figures = evaluate_encoder(DataDir.resolve("data"))
    >>> figures["cross_modal"]["image_to_text_recall@10"]
    0.62
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from embeddings.catalog import CatalogView, Split
from embeddings.encode import DEFAULT_IMAGE_WEIGHT, ItemVectors, encode_items, image_weight_of, load_encoder, load_view
from embeddings.encoder import ItemEncoder
from embeddings.tag import catalog_labels, tag_accuracy, tag_columns
from vitrine.paths import DataDir

RECALL_K = 10

# Fusion weights tried on validation items; a coarse grid, because a few hundred items cannot
# tell 0.5 from 0.55.
IMAGE_WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)

# Label columns that define "relevant" for the fused-vector ablations, in this order when present.
RELEVANCE_COLUMNS = ("category", "colour", "color")


def own_item_recall(queries: np.ndarray, candidates: np.ndarray, k: int = RECALL_K) -> float:
    """Share of queries whose own row (same index) of `candidates` ranks in the top k by dot product."""
    if len(queries) == 0:
        return float("nan")
    scores = queries @ candidates.T
    own = np.diag(scores)[:, None]
    # Rank = how many candidates score strictly higher than the item's own; ties count in its favour.
    rank = (scores > own).sum(axis=1)
    return float((rank < k).mean())


def label_recall(
    queries: np.ndarray,
    query_keys: Sequence[str],
    candidates: np.ndarray,
    candidate_keys: Sequence[str],
    k: int = RECALL_K,
    exclude_self: bool = False,
) -> float:
    """Mean over queries of |top-k & relevant| / min(k, |relevant|), relevant = same label key.

    With `exclude_self`, query i and candidate i are the same item and i is not a candidate for itself.
    """
    if len(queries) == 0 or len(candidates) == 0:
        return float("nan")
    scores = queries @ candidates.T
    if exclude_self:
        np.fill_diagonal(scores, -np.inf)
    keys = np.asarray(candidate_keys)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    values = []
    for q, key in enumerate(query_keys):
        relevant = int((keys == key).sum()) - (1 if exclude_self else 0)
        if relevant <= 0:
            continue
        values.append((keys[top[q]] == key).sum() / min(k, relevant))
    return float(np.mean(values)) if values else float("nan")


def relevance_keys(items: pd.DataFrame) -> tuple[list[str], list[str]] | None:
    """One key per item ("handbag|red") from the label columns, and their names; None without two keys."""
    columns = [c for c in RELEVANCE_COLUMNS if c in items.columns and items[c].notna().any()]
    if "colour" in columns and "color" in columns:
        columns.remove("color")
    if not columns:
        return None
    keys = items[columns].astype("string").fillna("").agg("|".join, axis=1).tolist()
    if len(set(keys)) < 2:
        return None
    return keys, columns


def _query_text(key: str) -> str:
    # "handbag|red" (category|colour order) -> "red handbag": attribute words before the noun.
    parts = [p for p in key.split("|") if p]
    return " ".join(reversed(parts))


def fusion_ablation(encoder: ItemEncoder, vectors: ItemVectors, items: pd.DataFrame, image_weight: float) -> dict[str, Any] | None:
    """Search and similar-item recall@10 for fused, image-only and text-only item vectors (items with images)."""
    found = relevance_keys(items)
    if found is None:
        return None
    keys_all, columns = found
    mask = vectors.has_image
    keys = [k for k, m in zip(keys_all, mask) if m]
    if len(keys) < 2:
        return None
    variants = {
        "fused": vectors.fused(image_weight)[mask],
        "image_only": vectors.image[mask],
        "text_only": vectors.text[mask],
    }
    distinct = sorted(set(keys))
    query_vectors = encoder.encode_texts([_query_text(key) for key in distinct])
    rng = np.random.default_rng(0)
    random_vectors = rng.standard_normal((len(keys), vectors.text.shape[1])).astype(np.float32)
    search = {name: label_recall(query_vectors, distinct, cand, keys) for name, cand in variants.items()}
    search["random"] = label_recall(query_vectors, distinct, random_vectors, keys)
    similar = {name: label_recall(cand, keys, cand, keys, exclude_self=True) for name, cand in variants.items()}
    similar["random"] = label_recall(random_vectors, keys, random_vectors, keys, exclude_self=True)
    return {
        "relevant_if_same": columns,
        "items": len(keys),
        "search_queries": len(distinct),
        "search_recall@10": {k: round(v, 4) for k, v in search.items()},
        "similar_recall@10": {k: round(v, 4) for k, v in similar.items()},
        "image_weight": image_weight,
    }


def cross_modal(vectors: ItemVectors) -> dict[str, Any]:
    """Image->text and text->image recall@10 among the items that have an image."""
    mask = vectors.has_image
    n = int(mask.sum())
    return {
        "items": n,
        "image_to_text_recall@10": round(own_item_recall(vectors.image[mask], vectors.text[mask]), 4),
        "text_to_image_recall@10": round(own_item_recall(vectors.text[mask], vectors.image[mask]), 4),
        "random_recall@10": round(min(RECALL_K, n) / n, 4) if n else None,
    }


def choose_image_weight(encoder: ItemEncoder, vectors: ItemVectors, items: pd.DataFrame) -> tuple[float, dict[str, float]]:
    """The grid weight with the best mean of search and similar recall@10 on these (validation) items.

    Ties go to the weight closest to `DEFAULT_IMAGE_WEIGHT`; without labels the default is returned.
    """
    sweep: dict[str, float] = {}
    for weight in IMAGE_WEIGHT_GRID:
        result = fusion_ablation(encoder, vectors, items, weight)
        if result is None:
            return DEFAULT_IMAGE_WEIGHT, {}
        score = np.nanmean([result["search_recall@10"]["fused"], result["similar_recall@10"]["fused"]])
        sweep[str(weight)] = round(float(score), 4)
    best = max(IMAGE_WEIGHT_GRID, key=lambda w: (sweep[str(w)], -abs(w - DEFAULT_IMAGE_WEIGHT)))
    return best, sweep


def split_vectors(encoder: ItemEncoder, view: CatalogView, split: Split) -> tuple[ItemVectors, pd.DataFrame, dict[str, Any]]:
    """Vectors and catalog rows of one split's items."""
    indices = view.indices(split)
    vectors, report = encode_items(encoder, view, indices)
    return vectors, view.items.iloc[indices].reset_index(drop=True), report.as_dict()


def evaluate_vectors(
    encoder: ItemEncoder, vectors: ItemVectors, items: pd.DataFrame, image_weight: float, catalog: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Every held-out figure for already-encoded items (cross-modal, fusion ablation, zero-shot).

    `catalog` (the whole catalog) supplies the zero-shot label choices, as `vitrine tag` uses them;
    default `items` itself.
    """
    catalog = items if catalog is None else catalog
    columns = tag_columns(catalog)
    return {
        "cross_modal": cross_modal(vectors),
        "fusion_ablation": fusion_ablation(encoder, vectors, items, image_weight),
        "zero_shot": tag_accuracy(encoder, vectors, items, columns, catalog_labels(catalog, columns)),
    }


def evaluate_encoder(data: DataDir, model: str | None = None, image_weight: float | None = None) -> dict[str, Any]:
    """Held-out figures for the encoder (default: the trained one) on this data dir's test items."""
    encoder = load_encoder(data, model)
    view = load_view(data)
    weight = image_weight_of(encoder, image_weight)
    vectors, items, images = split_vectors(encoder, view, "test")
    figures = evaluate_vectors(encoder, vectors, items, weight, catalog=view.items)
    return {
        "model_version": encoder.model_version,
        "model_source": encoder.source,
        "split": "test",
        "held_out_items": len(vectors.item_ids),
        "held_out_with_image": int(vectors.has_image.sum()),
        **figures,
        "images": images,
    }
