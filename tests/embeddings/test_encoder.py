"""Loading encoders: round trips, hub-style checkpoints, the offline error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import BertConfig, BertModel

from embeddings.dual_encoder import DualEncoderSpec, build_dual_encoder
from embeddings.encoder import ItemEncoder
from vitrine.errors import ModelUnavailable

TEXTS = ["red leather handbag", "blue cotton scarf", "a green tent for two"]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(3)]


def test_dual_encoder_round_trip_gives_identical_vectors_and_version(tiny_spec: DualEncoderSpec, tmp_path: Path) -> None:
    encoder = build_dual_encoder(tiny_spec, seed=3)
    version = encoder.save(tmp_path / "enc")
    loaded = ItemEncoder.load(tmp_path / "enc")
    assert loaded.model_version == version
    assert loaded.text_pooling == "mean"
    assert np.array_equal(loaded.encode_texts(TEXTS), encoder.encode_texts(TEXTS))
    assert np.array_equal(loaded.encode_images(_images()), encoder.encode_images(_images()))
    vectors = loaded.encode_texts(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (3, tiny_spec.projection_dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_different_weights_have_different_versions(tiny_spec: DualEncoderSpec) -> None:
    assert build_dual_encoder(tiny_spec, seed=1).model_version != build_dual_encoder(tiny_spec, seed=2).model_version


def test_clip_checkpoint_loads_through_the_same_path(tiny_clip_dir: Path) -> None:
    """A CLIPModel folder (tiny config, saved as a hub checkpoint would be) encodes both modalities."""
    encoder = ItemEncoder.load(tiny_clip_dir)
    assert encoder.dim == 24 and encoder.text_pooling == "pooler"
    texts, images = encoder.encode_texts(TEXTS), encoder.encode_images(_images())
    assert texts.shape == images.shape == (3, 24)
    assert np.array_equal(ItemEncoder.load(tiny_clip_dir).encode_texts(TEXTS), texts)


def test_absent_hub_model_says_where_to_save_it_and_how(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(ModelUnavailable) as caught:
        ItemEncoder.load("openai/clip-vit-base-patch32", save_hint=tmp_path / "models" / "clip-vit-base-patch32")
    message = str(caught.value)
    assert "openai/clip-vit-base-patch32" in message
    assert f"save_pretrained('{tmp_path / 'models' / 'clip-vit-base-patch32'}')" in message
    assert "CLIPProcessor.from_pretrained('openai/clip-vit-base-patch32')" in message


def test_a_text_only_model_is_refused_by_name(tmp_path: Path) -> None:
    BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(ModelUnavailable, match="'bert' model"):
        ItemEncoder.load(tmp_path)
