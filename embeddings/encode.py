"""`vitrine embed`: one L2-normalised vector per item, written to `data/embeddings/item_embeddings.parquet`.

Item vector = normalise(w * image_vector + (1 - w) * text_vector), each side unit length first;
an item without a usable image gets its text vector alone and `has_image = false`. `w` is the
`image_weight` the trainer chose on validation items (stored with the model), unless overridden.

Versions: `model_version` is a content hash of the encoder weights. The file always holds exactly
one version: embedding with a new model *replaces* the file (the summary names the version it
replaced), so Feast and the retriever never read a mix of two spaces. The same model and catalog
give byte-identical vectors (eval mode, fixed item order and batch size, CPU) at the same torch
thread count; a different thread count sums in another order (measured: at most 3e-8 apart).

Example:
    >>> summary = embed(DataDir.resolve("data"))
    >>> summary["items"], summary["model_version"]
    (2000, '3f2a9c01d4e5b6a7')
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from embeddings.catalog import CatalogView, ImageReport, catalog_view, open_image
from embeddings.encoder import ENCODE_BATCH_SIZE, ItemEncoder, normalise
from vitrine.errors import ModelUnavailable, UnusableFile
from vitrine.paths import DataDir
from vitrine.tracking import configure
from vitrine.shop.store import read_items

# The weight of the image side in the fused vector when the model carries none (an untrained or hub
# model). On the demo shop's validation items, mean of search and similar-item recall@10 by weight:
# 0.0: 0.70, 0.25: 0.79, 0.5: 0.81, 0.75: 0.80, 1.0: 0.79; the trainer re-runs this sweep per shop.
DEFAULT_IMAGE_WEIGHT = 0.5

# event_timestamp of every embedding row. A vector describes the item's content, which exists for as
# long as the item does, so a point-in-time join at any training timestamp must find it. A fixed early
# instant (before any shop's first event) does that and keeps re-runs byte-identical; an "embedded at"
# time would hide the vector from every training example older than the last `vitrine embed`.
EMBEDDING_VALID_FROM = pd.Timestamp("2000-01-01T00:00:00Z")

# Where `vitrine train encoder` registers its models, and the MLflow experiment of its runs.
REGISTERED_MODEL = "vitrine-encoder"
EXPERIMENT = "vitrine-encoder"

# Parquet schema metadata keys: what a reader needs to use the vectors without guessing.
META_MODEL_VERSION = b"vitrine.model_version"
META_MODEL_SOURCE = b"vitrine.model_source"
META_IMAGE_WEIGHT = b"vitrine.image_weight"


@dataclass(frozen=True)
class ItemVectors:
    """Both sides of every item's embedding, before fusion.

    Args:
        item_ids: in catalog (item_id) order.
        text: (n, d) unit text vectors.
        image: (n, d) unit image vectors; zero rows where `has_image` is False.
        has_image: (n,) whether the item had a usable image.
    """

    item_ids: list[str]
    text: np.ndarray
    image: np.ndarray
    has_image: np.ndarray

    def fused(self, image_weight: float) -> np.ndarray:
        """(n, d) unit vectors; text-only rows for items without an image."""
        if not 0.0 <= image_weight <= 1.0:
            raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
        weight = np.where(self.has_image, image_weight, 0.0).astype(np.float32)[:, None]
        return normalise(weight * self.image + (1.0 - weight) * self.text)


def encode_items(
    encoder: ItemEncoder,
    view: CatalogView,
    indices: Sequence[int] | None = None,
    progress: bool = False,
    with_text: bool = True,
) -> tuple[ItemVectors, ImageReport]:
    """Text and image vectors of the items at `indices` (all by default), in that order.

    `with_text=False` skips the text tower (zero text rows), for image-only uses such as tagging.

    Images are opened one batch at a time, so memory stays flat for large catalogs; a missing or
    corrupt image is counted in the report and the item keeps its text vector only.
    """
    chosen = list(range(len(view.item_ids))) if indices is None else list(indices)
    texts = [view.texts[i] for i in chosen]
    report = ImageReport()
    if with_text:
        text = encoder.encode_texts(texts)
    else:
        text = np.zeros((len(chosen), encoder.dim), dtype=np.float32)
    image = np.zeros_like(text)
    has_image = np.zeros(len(chosen), dtype=bool)
    bar = tqdm(total=len(chosen), desc="embedding images", unit="item", disable=not progress)
    for start in range(0, len(chosen), ENCODE_BATCH_SIZE):
        batch = chosen[start : start + ENCODE_BATCH_SIZE]
        opened: list[tuple[int, Image.Image]] = []
        for offset, i in enumerate(batch):
            picture = open_image(view.image_paths[i], report)
            if picture is not None:
                opened.append((start + offset, picture))
        if opened:
            rows = [row for row, _ in opened]
            image[rows] = encoder.encode_images([picture for _, picture in opened], batch_size=len(opened))
            has_image[rows] = True
        bar.update(len(batch))
    bar.close()
    return ItemVectors([view.item_ids[i] for i in chosen], text, image, has_image), report


def image_weight_of(encoder: ItemEncoder, override: float | None = None) -> float:
    """The fusion weight to use: the override, else the one the trainer chose, else the default."""
    if override is not None:
        return float(override)
    return float(encoder.extra.get("image_weight", DEFAULT_IMAGE_WEIGHT))


def embedding_table(vectors: ItemVectors, fused: np.ndarray, model_version: str, metadata: dict[bytes, bytes]) -> pa.Table:
    """The `item_embeddings` rows as Arrow: item_id, embedding list<float32>, has_image, model_version, event_timestamp."""
    n, dim = fused.shape
    embedding = pa.ListArray.from_arrays(
        pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32)), pa.array(fused.reshape(-1), type=pa.float32())
    )
    table = pa.table(
        {
            "item_id": pa.array(vectors.item_ids, type=pa.string()),
            "embedding": embedding,
            "has_image": pa.array(vectors.has_image, type=pa.bool_()),
            "model_version": pa.array([model_version] * n, type=pa.string()),
            "event_timestamp": pa.array([EMBEDDING_VALID_FROM] * n, type=pa.timestamp("ns", tz="UTC")),
        }
    )
    return table.replace_schema_metadata(metadata)


def stored_version(data: DataDir) -> str | None:
    """The model_version of the vectors on disk, or None when `vitrine embed` has not run."""
    if not data.item_embeddings.exists():
        return None
    meta = pq.read_schema(data.item_embeddings).metadata or {}
    if META_MODEL_VERSION in meta:
        return meta[META_MODEL_VERSION].decode()
    versions = pq.read_table(data.item_embeddings, columns=["model_version"]).column(0).unique().to_pylist()
    if len(versions) != 1:
        raise UnusableFile(f"{data.item_embeddings}: holds model versions {versions}; re-run `vitrine embed`")
    return str(versions[0])


def default_model_dir(data: DataDir) -> str:
    """Where `vitrine train encoder` saves the encoder and `vitrine embed` looks first."""
    return str(data.models / "encoder")


def download_registered(data: DataDir, uri: str) -> str:
    """A local folder with the encoder at a `models:/vitrine-encoder@alias` (or `/version`) URI.

    Raises:
        ModelUnavailable: the registry has no such model, version or alias.
    """
    configure(data, EXPERIMENT)
    try:
        return str(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as exc:  # MLflow raises its own types for an unknown model/alias
        raise ModelUnavailable(f"{uri}: not in the MLflow registry at {data.mlflow_tracking_uri} ({exc})") from exc


def load_encoder(data: DataDir, source: str | None) -> ItemEncoder:
    """The encoder named by `source` (a folder, a hub id, `registry` or a `models:/` URI), default the trained one.

    Raises:
        ModelUnavailable: nothing trained yet, or the named model is not on this machine.
    """
    if source is None:
        folder = default_model_dir(data)
        if not os.path.isdir(folder):
            raise ModelUnavailable(f"{folder}: no trained encoder; run `vitrine train encoder` first")
        return ItemEncoder.load(folder)
    if source == "registry" or source.startswith("models:/"):
        uri = f"models:/{REGISTERED_MODEL}@champion" if source == "registry" else source
        return ItemEncoder.load(download_registered(data, uri))
    return ItemEncoder.load(source, save_hint=data.models / source.rstrip("/").split("/")[-1])


def embed(data: DataDir, model: str | None = None, image_weight: float | None = None, progress: bool = False) -> dict[str, Any]:
    """Embed every catalog item and replace `item_embeddings.parquet` with this model's rows.

    Args:
        data: the data dir (reads shop/items.parquet and images, writes embeddings/).
        model: encoder folder, hub id, `registry` or `models:/vitrine-encoder@alias`; default the trained one.
        image_weight: fusion weight override in [0, 1].
        progress: show a progress bar on stderr.

    Returns:
        A summary: items, with_image, dim, model_version, replaced_version, image report, seconds.
    """
    started = time.perf_counter()
    encoder = load_encoder(data, model)
    view = catalog_view(data, read_items(data))
    weight = image_weight_of(encoder, image_weight)
    vectors, report = encode_items(encoder, view, progress=progress)
    fused = vectors.fused(weight)
    previous = stored_version(data)
    metadata = {
        META_MODEL_VERSION: encoder.model_version.encode(),
        META_MODEL_SOURCE: str(encoder.source).encode(),
        META_IMAGE_WEIGHT: repr(weight).encode(),
    }
    table = embedding_table(vectors, fused, encoder.model_version, metadata)
    data.embeddings.mkdir(parents=True, exist_ok=True)
    # Write beside, then rename: a reader never sees half a file or two versions.
    partial = data.item_embeddings.with_suffix(".parquet.partial")
    pq.write_table(table, partial)
    os.replace(partial, data.item_embeddings)
    seconds = time.perf_counter() - started
    return {
        "path": str(data.item_embeddings),
        "items": len(vectors.item_ids),
        "with_image": int(vectors.has_image.sum()),
        "text_only": int((~vectors.has_image).sum()),
        "dim": int(fused.shape[1]) if len(fused) else encoder.dim,
        "model_version": encoder.model_version,
        "model_source": encoder.source,
        "replaced_version": previous if previous != encoder.model_version else None,
        "image_weight": weight,
        "images": report.as_dict(),
        "seconds": round(seconds, 2),
        "items_per_second": round(len(vectors.item_ids) / seconds, 1) if seconds > 0 else None,
    }


def read_item_embeddings(data: DataDir) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, str]]:
    """item_ids, (n, d) float32 vectors, has_image and the file's metadata, for search and other stages.

    Raises:
        ModelUnavailable: the file is absent (run `vitrine embed`); the vectors are the search index.
    """
    if not data.item_embeddings.exists():
        raise ModelUnavailable(f"{data.item_embeddings}: no item embeddings; run `vitrine embed` first")
    table = pq.read_table(data.item_embeddings)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if k.startswith(b"vitrine.")}
    ids = [str(i) for i in table.column("item_id").to_pylist()]
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(len(ids), -1) if ids else np.zeros((0, 0), np.float32)
    has_image = np.asarray(table.column("has_image").to_pylist(), dtype=bool)
    return ids, vectors, has_image, meta


def load_view(data: DataDir) -> CatalogView:
    """The catalog as every command of this stage sees it."""
    return catalog_view(data, read_items(data))
