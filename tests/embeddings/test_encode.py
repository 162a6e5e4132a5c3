"""`vitrine embed`: fusion, bad images, determinism and version handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from embeddings.dual_encoder import DualEncoderSpec, build_dual_encoder
from embeddings.encode import EMBEDDING_VALID_FROM, ItemVectors, embed, read_item_embeddings
from embedding_shop import make_shop
from vitrine.paths import DataDir
from vitrine.shop.store import read_items, write_items


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_fusion_is_unit_length_and_text_only_without_image() -> None:
    rng = np.random.default_rng(0)
    text = _unit(rng.standard_normal((3, 8))).astype(np.float32)
    image = _unit(rng.standard_normal((3, 8))).astype(np.float32)
    image[2] = 0.0
    vectors = ItemVectors(["a", "b", "c"], text, image, np.array([True, True, False]))

    fused = vectors.fused(0.5)
    assert fused.dtype == np.float32
    assert np.allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-6)
    assert np.allclose(fused[0], _unit((text[0] + image[0])[None])[0], atol=1e-6)
    assert np.allclose(fused[2], text[2], atol=1e-6), "an item without image keeps its text vector"
    assert np.allclose(vectors.fused(1.0)[:2], image[:2], atol=1e-6)
    assert np.allclose(vectors.fused(0.0), text, atol=1e-6)
    with pytest.raises(ValueError):
        vectors.fused(1.5)


def _save(spec: DualEncoderSpec, folder: Path, seed: int) -> str:
    build_dual_encoder(spec, seed=seed).save(folder)
    return str(folder)


def test_embed_survives_corrupt_and_missing_images_and_is_deterministic(tiny_spec: DualEncoderSpec, tmp_path: Path) -> None:
    data = make_shop(tmp_path / "data", n_items=30)
    items = read_items(data)
    (data.shop / items.loc[0, "image_path"]).write_bytes(b"not a png at all")  # corrupt
    items.loc[1, "image_path"] = "images/nowhere.png"  # missing
    items.loc[2, "image_path"] = None  # none
    write_items(data, items)
    model = _save(tiny_spec, tmp_path / "enc", seed=0)

    first = embed(data, model)
    assert first["images"]["corrupt"] == 1 and first["images"]["missing"] == 1 and first["images"]["no_image"] == 1
    assert first["with_image"] == 27 and first["text_only"] == 3
    ids, vectors, has_image, meta = read_item_embeddings(data)
    assert ids == sorted(items["item_id"])
    assert not has_image[:3].any() and has_image[3:].all()
    assert vectors.dtype == np.float32 and vectors.shape == (30, tiny_spec.projection_dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    table = pq.read_table(data.item_embeddings)
    assert set(table.column("model_version").to_pylist()) == {first["model_version"]} == {meta["vitrine.model_version"]}
    assert table.column("event_timestamp").to_pylist()[0] == EMBEDDING_VALID_FROM.to_pydatetime()

    again = embed(data, model)
    assert again["replaced_version"] is None
    assert np.array_equal(read_item_embeddings(data)[1], vectors), "same model + catalog -> identical vectors"


def test_a_new_model_replaces_the_file_and_never_mixes_versions(tiny_spec: DualEncoderSpec, tmp_path: Path) -> None:
    data = make_shop(tmp_path / "data", n_items=12)
    old = embed(data, _save(tiny_spec, tmp_path / "old", seed=0))
    new = embed(data, _save(tiny_spec, tmp_path / "new", seed=1))
    assert new["model_version"] != old["model_version"]
    assert new["replaced_version"] == old["model_version"]
    versions = pq.read_table(data.item_embeddings, columns=["model_version"]).column(0).unique().to_pylist()
    assert versions == [new["model_version"]]


def test_catalog_without_any_image_embeds_from_text(tiny_spec: DualEncoderSpec, tmp_path: Path) -> None:
    data = make_shop(tmp_path / "data", n_items=10, image_share=0.0)
    items = read_items(data).drop(columns=["image_path"])
    write_items(data, items)
    result = embed(data, _save(tiny_spec, tmp_path / "enc", seed=0))
    assert result["with_image"] == 0 and result["items"] == 10
    _, vectors, has_image, _ = read_item_embeddings(data)
    assert not has_image.any() and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
