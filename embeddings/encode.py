"""`vitrine embed`: one L2-normalised vector per item, written to `data/embeddings/item_embeddings.parquet`.

Item vector = normalise(w * image_vector + (1 - w) * text_vector), each side unit length first;
an item without a usable image gets its text vector alone and `has_image = false`. `w` is the
`image_weight` the trainer chose on validation items (stored with the model), unless overridden.

Versions: `model_version` is a content hash of the encoder weights. The file always holds exactly
one version: embedding with a new model *replaces* the file (the summary names the version it
replaced), so Feast and the retriever never read a mix of two spaces. The same model and catalog
give byte-identical vectors (eval mode, fixed item order and batch size, CPU) at the same torch
thread count; a different thread count sums in another order (measured: at most 3e-8 apart).

Incremental by default: when the file on disk was written by the same model version with the same
image weight, only items that are new or whose content changed are encoded; every other row keeps
its stored vector bit for bit, and items gone from the catalog are dropped. "Content" is what the
encoder sees, hashed per item into the `content_hash` column: the item text (title, description,
category, brand as `item_text` joins them) and the image file's bytes. Feast reads only the
declared fields of `item_embedding`, so the extra columns are invisible to it. Measured on the
Amazon gift-card shop with the MiniLM text tower: every reused row is bit-identical to a full
re-embed of the same catalog (also after an insert that shifts every batch boundary); a re-encoded
row ran in a smaller batch than a full pass would give it and is within 1.4e-7 of that pass.

Example:
    >>> summary = embed(DataDir.resolve("data"))
    >>> summary["items"], summary["model_version"]
    (2000, '3f2a9c01d4e5b6a7')
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
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
from vitrine.options import bar_shown
from vitrine.paths import DataDir
from vitrine.shop.store import read_items
from vitrine.tracking import CHAMPION_ALIAS, ENCODER_MODEL, configure

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
EXPERIMENT = "vitrine-encoder"

# Parquet schema metadata keys: what a reader needs to use the vectors without guessing.
META_MODEL_VERSION = b"vitrine.model_version"
META_MODEL_SOURCE = b"vitrine.model_source"
META_IMAGE_WEIGHT = b"vitrine.image_weight"

# Per-item columns beyond the Feast contract: what an incremental run compares and restores.
# content_hash: sha256 of the encoder's input (text + image bytes); image_status: what happened to
# the image when the item was last encoded, so a reused row still counts in the image report.
CONTENT_HASH_COLUMN = "content_hash"
IMAGE_STATUS_COLUMN = "image_status"

# Image file reads are chunked so hashing a large photo never holds it twice in memory.
HASH_CHUNK_BYTES = 1 << 20


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
    bar = tqdm(total=len(chosen), desc="embedding images", unit="item", disable=not bar_shown(progress))
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


def content_hash(text: str, image_path: Path | None) -> str:
    """sha256 of what the encoder reads for one item: its text and its image file's bytes.

    A missing file and a row without image hash differently (the report counts them apart), and a
    changed image at the same path changes the hash, so the item is re-encoded.

    Example:
        >>> content_hash("Red bag. Category: bags.", None) == content_hash("Red bag. Category: bags.", None)
        True
    """
    digest = hashlib.sha256()
    digest.update(b"text\0" + text.encode("utf-8") + b"\0image\0")
    if image_path is None:
        digest.update(b"none")
    elif not image_path.is_file():
        digest.update(b"missing")
    else:
        digest.update(b"file\0")
        with image_path.open("rb") as handle:
            while chunk := handle.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def image_statuses(view: CatalogView, indices: Sequence[int], has_image: np.ndarray, report: ImageReport) -> list[str]:
    """Per item at `indices`: loaded, no_image, missing or corrupt, as `encode_items` found it."""
    missing = set(report.missing)
    statuses = []
    for row, i in enumerate(indices):
        path = view.image_paths[i]
        if has_image[row]:
            statuses.append("loaded")
        elif path is None:
            statuses.append("no_image")
        elif str(path) in missing:
            statuses.append("missing")
        else:
            statuses.append("corrupt")
    return statuses


def image_weight_of(encoder: ItemEncoder, override: float | None = None) -> float:
    """The fusion weight to use: the override, else the one the trainer chose, else the default."""
    if override is not None:
        return float(override)
    return float(encoder.extra.get("image_weight", DEFAULT_IMAGE_WEIGHT))


def embedding_table(
    vectors: ItemVectors,
    fused: np.ndarray,
    model_version: str,
    metadata: dict[bytes, bytes],
    content_hashes: Sequence[str] | None = None,
    statuses: Sequence[str] | None = None,
) -> pa.Table:
    """The `item_embeddings` rows as Arrow: item_id, embedding list<float32>, has_image, model_version,
    event_timestamp, plus `content_hash` and `image_status` when given (what incremental runs compare)."""
    n, dim = fused.shape
    embedding = pa.ListArray.from_arrays(
        pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32)), pa.array(fused.reshape(-1), type=pa.float32())
    )
    columns: dict[str, pa.Array] = {
        "item_id": pa.array(vectors.item_ids, type=pa.string()),
        "embedding": embedding,
        "has_image": pa.array(vectors.has_image, type=pa.bool_()),
        "model_version": pa.array([model_version] * n, type=pa.string()),
        "event_timestamp": pa.array([EMBEDDING_VALID_FROM] * n, type=pa.timestamp("ns", tz="UTC")),
    }
    if content_hashes is not None:
        columns[CONTENT_HASH_COLUMN] = pa.array(list(content_hashes), type=pa.string())
    if statuses is not None:
        columns[IMAGE_STATUS_COLUMN] = pa.array(list(statuses), type=pa.string())
    return pa.table(columns).replace_schema_metadata(metadata)


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
        uri = f"models:/{ENCODER_MODEL}@{CHAMPION_ALIAS}" if source == "registry" else source
        return ItemEncoder.load(download_registered(data, uri))
    return ItemEncoder.load(source, save_hint=data.models / source.rstrip("/").split("/")[-1])


@dataclass(frozen=True)
class StoredRows:
    """The rows an earlier `vitrine embed` wrote that this run may keep, looked up by item_id.

    Args:
        row_of: item_id -> row in the arrays below.
        vectors: (n, d) fused float32 vectors exactly as stored.
        has_image: (n,) stored flags.
        hashes: (n,) content hashes the rows were encoded from.
        statuses: (n,) image status of each row when it was encoded.
    """

    row_of: dict[str, int]
    vectors: np.ndarray
    has_image: np.ndarray
    hashes: list[str]
    statuses: list[str]


def reusable_rows(data: DataDir, model_version: str, image_weight: float) -> tuple[StoredRows | None, str]:
    """The stored rows when they are in this model's space, else None and why a full embed is needed.

    Rows are reusable only from a file written by the same model version *and* image weight (the
    stored vector is the fused one), and that carries content hashes (files from before incremental
    embedding do not: they are re-embedded once).
    """
    if not data.item_embeddings.exists():
        return None, "no embeddings yet"
    version = stored_version(data)
    if version != model_version:
        return None, f"model changed ({version} -> {model_version})"
    table = pq.read_table(data.item_embeddings)
    meta = table.schema.metadata or {}
    if meta.get(META_IMAGE_WEIGHT) != repr(image_weight).encode():
        stored_weight = meta.get(META_IMAGE_WEIGHT, b"?").decode()
        return None, f"image weight changed ({stored_weight} -> {image_weight!r})"
    if CONTENT_HASH_COLUMN not in table.column_names or IMAGE_STATUS_COLUMN not in table.column_names:
        return None, "stored file has no content hashes"
    ids = [str(i) for i in table.column("item_id").to_pylist()]
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(len(ids), -1) if ids else np.zeros((0, 0), np.float32)
    return (
        StoredRows(
            row_of={item_id: row for row, item_id in enumerate(ids)},
            vectors=vectors,
            has_image=np.asarray(table.column("has_image").to_pylist(), dtype=bool),
            hashes=[str(h) for h in table.column(CONTENT_HASH_COLUMN).to_pylist()],
            statuses=[str(s) for s in table.column(IMAGE_STATUS_COLUMN).to_pylist()],
        ),
        "incremental",
    )


def stored_item_ids(data: DataDir) -> set[str]:
    """The item_ids in the embeddings file on disk (empty when there is none)."""
    if not data.item_embeddings.exists():
        return set()
    return {str(i) for i in pq.read_table(data.item_embeddings, columns=["item_id"]).column(0).to_pylist()}


def _count_reused_image(report: ImageReport, status: str, path: Path | None) -> None:
    """Add a reused row to the image report, so the report covers the whole catalog either way."""
    if status == "loaded":
        report.loaded += 1
    elif status == "no_image":
        report.no_image += 1
    elif status == "missing":
        report.missing.append(str(path))
    else:
        report.corrupt.append(str(path))


def embed(
    data: DataDir,
    model: str | None = None,
    image_weight: float | None = None,
    progress: bool = False,
    incremental: bool = True,
) -> dict[str, Any]:
    """Embed the catalog into `item_embeddings.parquet`: only new or changed items when the file allows.

    With `incremental` (the default) and a file written by the same model version and image weight,
    items whose content hash (text + image bytes) matches their stored row keep that row's vector
    bit for bit; new and changed items are encoded; items no longer in the catalog are dropped. Any
    other case (first run, new model, new weight, `incremental=False`) encodes every item and
    replaces the file, so it never holds two models' vectors.

    Args:
        data: the data dir (reads shop/items.parquet and images, writes embeddings/).
        model: encoder folder, hub id, `registry` or `models:/vitrine-encoder@alias`; default the trained one.
        image_weight: fusion weight override in [0, 1].
        progress: show a progress bar on stderr.
        incremental: reuse unchanged items' stored vectors; False re-encodes everything.

    Returns:
        A summary: items, with_image, dim, model_version, replaced_version, image report (whole
        catalog), mode ("incremental" or "full") and why, encoded, reused, removed, seconds.

    Example:
        >>> embed(data)["encoded"]  # first run: every item
        2000
        >>> embed(data)["reused"]  # nothing changed since: every vector kept as stored
        2000
    """
    started = time.perf_counter()
    encoder = load_encoder(data, model)
    view = catalog_view(data, read_items(data))
    weight = image_weight_of(encoder, image_weight)
    hashes = [content_hash(text, path) for text, path in zip(view.texts, view.image_paths)]
    previous = stored_version(data)
    previous_ids = stored_item_ids(data)
    stored, reason = reusable_rows(data, encoder.model_version, weight) if incremental else (None, "incremental=False")

    n = len(view.item_ids)
    reused = [] if stored is None else [
        i for i, item_id in enumerate(view.item_ids)
        if item_id in stored.row_of and stored.hashes[stored.row_of[item_id]] == hashes[i]
    ]
    kept = set(reused)
    changed = [i for i in range(n) if i not in kept]
    fresh, report = encode_items(encoder, view, indices=changed, progress=progress)
    fresh_fused = fresh.fused(weight)
    fresh_statuses = image_statuses(view, changed, fresh.has_image, report)

    # Assemble in catalog order: encoded rows from this run, the rest copied from the stored file.
    fused = np.zeros((n, encoder.dim), dtype=np.float32)
    has_image = np.zeros(n, dtype=bool)
    statuses = [""] * n
    for row, i in enumerate(changed):
        fused[i], has_image[i], statuses[i] = fresh_fused[row], fresh.has_image[row], fresh_statuses[row]
    if stored is not None:
        for i in reused:
            at = stored.row_of[view.item_ids[i]]
            fused[i], has_image[i], statuses[i] = stored.vectors[at], stored.has_image[at], stored.statuses[at]
            _count_reused_image(report, statuses[i], view.image_paths[i])
    # Only the ids and flags of ItemVectors go into the table; the fused vectors are passed alongside.
    vectors = ItemVectors(list(view.item_ids), fused, np.zeros_like(fused), has_image)
    metadata = {
        META_MODEL_VERSION: encoder.model_version.encode(),
        META_MODEL_SOURCE: str(encoder.source).encode(),
        META_IMAGE_WEIGHT: repr(weight).encode(),
    }
    table = embedding_table(vectors, fused, encoder.model_version, metadata, hashes, statuses)
    data.embeddings.mkdir(parents=True, exist_ok=True)
    # Write beside, then rename: a reader never sees half a file or two versions.
    partial = data.item_embeddings.with_suffix(".parquet.partial")
    pq.write_table(table, partial)
    os.replace(partial, data.item_embeddings)
    seconds = time.perf_counter() - started
    return {
        "path": str(data.item_embeddings),
        "items": n,
        "with_image": int(has_image.sum()),
        "text_only": int((~has_image).sum()),
        "dim": int(fused.shape[1]) if n else encoder.dim,
        "model_version": encoder.model_version,
        "model_source": encoder.source,
        "replaced_version": previous if previous != encoder.model_version else None,
        "image_weight": weight,
        "images": report.as_dict(),
        "mode": "incremental" if stored is not None else "full",
        "full_reason": None if stored is not None else reason,
        "encoded": len(changed),
        "reused": len(reused),
        # Items in the previous file that the catalog no longer has: dropped from the file.
        "removed": len(previous_ids - set(view.item_ids)),
        "seconds": round(seconds, 2),
        "items_per_second": round(n / seconds, 1) if seconds > 0 else None,
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
