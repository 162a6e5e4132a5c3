"""Fixtures for the embeddings tests: tiny real transformers models saved to disk, tiny shops."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer, BertConfig, BertModel

from embeddings.dual_encoder import DualEncoderSpec, minilm_dir
from embedding_shop import make_shop
from vitrine.paths import DataDir

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer BERT (random weights) with MiniLM's tokenizer, saved like a hub checkpoint."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_spec(tiny_text_dir: Path) -> DualEncoderSpec:
    """A dual encoder small enough to train in a second or two."""
    return DualEncoderSpec(
        image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
        projection_dim=16, text_model_dir=str(tiny_text_dir),
    )


@pytest.fixture()
def shop(tmp_path: Path) -> DataDir:
    """120 items with an image each; MLflow tracks into the tmp data dir."""
    return make_shop(tmp_path / "data", n_items=120)
