"""`vitrine embed`: fusion, bad images, determinism and version handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from embeddings.dual_encoder import DualEncoderSpec, build_dual_encoder
from embeddings.encode import EMBEDDING_VALID_FROM, ItemVectors, embed, read_item_embeddings
from tests.shops import pictured
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
    data = pictured(tmp_path / "data", n_items=30)
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
    data = pictured(tmp_path / "data", n_items=12)
    old = embed(data, _save(tiny_spec, tmp_path / "old", seed=0))
    new = embed(data, _save(tiny_spec, tmp_path / "new", seed=1))
    assert new["model_version"] != old["model_version"]
    assert new["replaced_version"] == old["model_version"]
    versions = pq.read_table(data.item_embeddings, columns=["model_version"]).column(0).unique().to_pylist()
    assert versions == [new["model_version"]]


def test_catalog_without_any_image_embeds_from_text(tiny_spec: DualEncoderSpec, tmp_path: Path) -> None:
    data = pictured(tmp_path / "data", n_items=10, image_share=0.0)
    items = read_items(data).drop(columns=["image_path"])
    write_items(data, items)
    result = embed(data, _save(tiny_spec, tmp_path / "enc", seed=0))
    assert result["with_image"] == 0 and result["items"] == 10
    _, vectors, has_image, _ = read_item_embeddings(data)
    assert not has_image.any() and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def _stored(data: DataDir) -> dict[str, np.ndarray]:
    ids, vectors, _, _ = read_item_embeddings(data)
    return dict(zip(ids, vectors))


def test_second_embed_encodes_only_the_changed_and_new_items(tiny_spec: DualEncoderSpec, tmp_path: Path) -> None:
    data = pictured(tmp_path / "data", n_items=20)
    model = _save(tiny_spec, tmp_path / "enc", seed=0)
    first = embed(data, model)
    assert (first["mode"], first["encoded"], first["reused"], first["removed"]) == ("full", 20, 0, 0)
    before = _stored(data)

    items = read_items(data)
    items.loc[items["item_id"] == "I00003", "title"] = "Completely different title"
    new_row = items[items["item_id"] == "I00005"].assign(item_id="I99999", title="A brand new item")
    removed_id = "I00007"
    items = pd.concat([items[items["item_id"] != removed_id], new_row], ignore_index=True)
    write_items(data, items)

    second = embed(data, model)
    assert second["mode"] == "incremental" and second["replaced_version"] is None
    assert (second["encoded"], second["reused"], second["removed"]) == (2, 18, 1)
    assert second["items"] == 20 and second["images"]["loaded"] == 20, "the image report still covers every item"
    after = _stored(data)
    assert set(after) == (set(before) - {removed_id}) | {"I99999"}, "a removed item leaves the file"
    for item_id in set(before) - {removed_id, "I00003"}:
        assert np.array_equal(after[item_id], before[item_id]), f"{item_id}: unchanged item must keep its vector bit for bit"
    assert not np.allclose(after["I00003"], before["I00003"]), "a changed title is re-encoded"

    # A full re-embed of the same catalog gives the reused rows the same bits; the re-encoded rows ran
    # in a smaller batch than a full pass, which some CPU kernels sum in another order (~1e-7).
    full = embed(data, model, incremental=False)
    assert (full["mode"], full["encoded"], full["reused"]) == ("full", 20, 0)
    rebuilt = _stored(data)
    for item_id, vector in after.items():
        if item_id in ("I00003", "I99999"):
            assert np.allclose(rebuilt[item_id], vector, atol=1e-6)
        else:
            assert np.array_equal(rebuilt[item_id], vector), f"{item_id}: incremental and full embed disagree"
    table = pq.read_table(data.item_embeddings)
    assert table.column("content_hash").null_count == 0 and len(set(table.column("content_hash").to_pylist())) == 20


def test_a_changed_image_file_is_re_encoded(tiny_spec: DualEncoderSpec, tmp_path: Path) -> None:
    data = pictured(tmp_path / "data", n_items=8)
    model = _save(tiny_spec, tmp_path / "enc", seed=0)
    embed(data, model)
    before = _stored(data)
    items = read_items(data)
    other = data.shop / items.loc[items["item_id"] == "I00001", "image_path"].iloc[0]
    target = data.shop / items.loc[items["item_id"] == "I00002", "image_path"].iloc[0]
    target.write_bytes(other.read_bytes())  # same path, new picture

    again = embed(data, model)
    assert (again["encoded"], again["reused"], again["removed"]) == (1, 7, 0)
    after = _stored(data)
    assert not np.array_equal(after["I00002"], before["I00002"])
    assert all(np.array_equal(after[i], before[i]) for i in before if i != "I00002")

    target.unlink()  # the picture goes missing: text-only from now on, and still reported as missing
    gone = embed(data, model)
    assert (gone["encoded"], gone["text_only"], gone["images"]["missing"]) == (1, 1, 1)
    assert embed(data, model)["images"]["missing"] == 1, "a reused row keeps its image status in the report"


def test_a_new_model_version_or_image_weight_re_encodes_everything(tiny_spec: DualEncoderSpec, tmp_path: Path) -> None:
    data = pictured(tmp_path / "data", n_items=10)
    old = embed(data, _save(tiny_spec, tmp_path / "old", seed=0))
    new = embed(data, _save(tiny_spec, tmp_path / "new", seed=1))
    assert (new["mode"], new["encoded"], new["reused"]) == ("full", 10, 0)
    assert new["replaced_version"] == old["model_version"] and "model changed" in new["full_reason"]
    versions = pq.read_table(data.item_embeddings, columns=["model_version"]).column(0).unique().to_pylist()
    assert versions == [new["model_version"]]
    reweighted = embed(data, str(tmp_path / "new"), image_weight=0.9)
    assert (reweighted["mode"], reweighted["encoded"]) == ("full", 10), "stored vectors are fused with the old weight"
