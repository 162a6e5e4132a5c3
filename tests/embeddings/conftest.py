"""Fixtures for the embeddings tests: tiny real transformers models saved to disk, tiny shops."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, CLIPConfig, CLIPModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from embeddings.dual_encoder import DualEncoderSpec, minilm_dir
from tests.shops import pictured
from vitrine.paths import DataDir

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer BERT (random weights) with MiniLM's tokenizer, saved like a hub checkpoint."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    # Seeded: the frozen random text tower is half of what the trainer tests learn against, and some
    # draws leave the contrastive loss little room to fall (best minus initial 0.09 to 0.25 over six draws).
    torch.manual_seed(0)
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


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIPModel with a tiny config, saved with tokenizer and image processor as a hub checkpoint would be."""
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": 102},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=24,
    )
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    # MiniLM's (BERT) tokenizer stands in for CLIP's BPE one: [SEP] (102) ends every text, as eos_token_id says.
    AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture()
def shop(tmp_path: Path) -> DataDir:
    """120 items with an image each; MLflow tracks into the tmp data dir."""
    return pictured(tmp_path / "data", n_items=120)
