"""The trainer: the contrastive loss goes down, frozen towers stay put, MLflow gets the run and the model."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch

from embeddings.dual_encoder import DualEncoderSpec
from embeddings.encode import embed, load_encoder
from embeddings.train_encoder import TrainEncoderConfig, train_encoder
from tests.shops import pictured
from vitrine.paths import DataDir
from vitrine.tracking import CHAMPION_ALIAS, ENCODER_MODEL


@pytest.fixture(autouse=True)
def _local_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_short_training_lowers_the_loss_and_registers_the_model(shop: DataDir, tiny_spec: DualEncoderSpec) -> None:
    config = TrainEncoderConfig(epochs=6, batch_size=32, patience=6, spec=tiny_spec, learning_rate=3e-3)
    result = train_encoder(shop, config)

    assert result["best_validation_loss"] < result["initial_validation_loss"] - 0.05
    assert result["curve"][-1]["train_loss"] < result["curve"][0]["train_loss"]
    assert result["freeze_text"] is True and 0.0 <= result["image_weight"] <= 1.0
    assert result["test"]["cross_modal"]["random_recall@10"] > 0

    loaded = load_encoder(shop, None)
    assert loaded.model_version == result["model_version"]

    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(ENCODER_MODEL, CHAMPION_ALIAS)
    assert version.tags["embedding_model_version"] == result["model_version"]
    assert "git_commit" in version.tags and "data_snapshot" in version.tags
    run = client.get_run(result["mlflow"]["run_id"])
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == result["epochs_run"]
    assert "test.cross_modal.image_to_text_recall_at_10" in run.data.metrics

    from_registry = embed(shop, "registry")
    assert from_registry["model_version"] == result["model_version"]


def test_frozen_text_tower_is_unchanged(shop: DataDir, tiny_spec: DualEncoderSpec) -> None:
    from embeddings.dual_encoder import build_dual_encoder

    before = build_dual_encoder(tiny_spec, seed=0).model.text_model.state_dict()
    train_encoder(shop, TrainEncoderConfig(epochs=1, batch_size=32, spec=tiny_spec, track=False))
    after = load_encoder(shop, None).model.text_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_catalog_without_images_still_gets_a_text_encoder(tmp_path: Path, tiny_spec: DualEncoderSpec) -> None:
    data = pictured(tmp_path / "data", n_items=15, image_share=0.0)
    result = train_encoder(data, TrainEncoderConfig(spec=tiny_spec, track=False))
    assert result["epochs_run"] == 0 and result["train_pairs"] == 0
    assert embed(data)["text_only"] == 15


def test_the_same_trainer_fine_tunes_a_clip_checkpoint(shop: DataDir, tiny_clip_dir: Path) -> None:
    result = train_encoder(shop, TrainEncoderConfig(base=str(tiny_clip_dir), epochs=2, batch_size=32, track=False))
    clip = load_encoder(shop, str(tiny_clip_dir)).model
    assert result["freeze_text"] is False and result["epochs_run"] >= 1
    assert result["trainable_parameters"] == sum(p.numel() for p in clip.parameters()), "both towers train"
    tuned = load_encoder(shop, None)
    assert tuned.extra["base"] == str(tiny_clip_dir) and tuned.text_pooling == "pooler"
    assert tuned.dim == 24
