"""Load a CLIP-style dual encoder (a hub id or a local directory) and turn images and texts into vectors.

Two model families load through the same code, offline only (`local_files_only=True`):

- `CLIPModel` checkpoints (e.g. `openai/clip-vit-base-patch32` when cached or saved locally);
- `VisionTextDualEncoderModel` checkpoints, which is what `embeddings.dual_encoder` builds and the
  trainer saves (the offline default: MiniLM text tower + compact ViT).

Both expose `vision_model`, `text_model`, `visual_projection`, `text_projection` and `logit_scale`,
so one `ItemEncoder` serves training, embedding, tagging and search. The text tower of the default is
mean-pooled (see `TEXT_POOLING_KEY`); CLIP keeps its own end-of-text pooling, as it was trained.

Example:
    >>> encoder = ItemEncoder.load("data/models/encoder")
    >>> vectors = encoder.encode_texts(["red leather handbag"])   # (1, encoder.dim), unit length
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel, VisionTextDualEncoderModel

from vitrine.errors import ModelUnavailable

# Stored in a dual encoder's config.json. "mean": average the text tower's token states over the
# attention mask, which is how all-MiniLM-L6-v2 was trained (its BERT pooler was never trained for
# sentence similarity). Absent or "pooler": the tower's own pooler_output, as transformers does.
TEXT_POOLING_KEY = "vitrine_text_pooling"

# Texts are cut at this many tokens: titles plus the first sentence of a description fit, and
# MiniLM's cost grows with length on a 2-core CPU. CLIP's own limit (77) is lower still.
TEXT_MAX_TOKENS = 64

# Items per forward pass when embedding. Fixed, so that a re-run computes exactly the same sums.
ENCODE_BATCH_SIZE = 64

# The model families this loader knows, by `config.model_type`.
MODEL_CLASSES: dict[str, type[transformers.PreTrainedModel]] = {
    "clip": CLIPModel,
    "vision-text-dual-encoder": VisionTextDualEncoderModel,
}


def save_command(source: str, target: Path) -> str:
    """The one command to run on a connected machine to save hub model `source` into `target`."""
    return (
        'python -c "from transformers import CLIPModel, CLIPProcessor; '
        f"CLIPModel.from_pretrained('{source}').save_pretrained('{target}'); "
        f"CLIPProcessor.from_pretrained('{source}').save_pretrained('{target}')\""
    )


def _unavailable(source: str, reason: str, save_hint: Path | None) -> ModelUnavailable:
    target = save_hint or Path("data/models") / source.rstrip("/").split("/")[-1]
    return ModelUnavailable(
        f"encoder '{source}' is not available offline ({reason}). Vitrine never downloads at run time. "
        f"On a machine with internet, run:\n  {save_command(source, target)}\n"
        f"then copy the folder '{target}' here and pass it as the model (e.g. --base {target})."
    )


def quiet_transformers() -> None:
    """Silence transformers' per-load chatter (PIL-backend notices, weight-loading bars): commands report instead."""
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def weights_version(model: torch.nn.Module) -> str:
    """A content hash of the weights (names, shapes, values): the model_version written with every vector.

    It does not depend on the file format or folder, so a model saved and loaded back keeps its version.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class ItemEncoder:
    """A dual encoder with its tokenizer and image processor.

    Args:
        model: a `CLIPModel` or `VisionTextDualEncoderModel`.
        tokenizer: the text tower's tokenizer.
        image_processor: resizes and normalises images for the vision tower.
        source: where it was loaded from (for messages and lineage).
        extra: the `vitrine_encoder.json` sidecar (fusion weight chosen in training, base model, ...).
    """

    # Saved beside the weights: training choices a checkpoint alone must carry (fusion weight, base, spec).
    SIDECAR = "vitrine_encoder.json"

    def __init__(
        self,
        model: transformers.PreTrainedModel,
        tokenizer: Any,
        image_processor: Any,
        source: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.source = source
        self.extra = dict(extra or {})
        self._version: str | None = None

    @classmethod
    def load(cls, source: str | Path, save_hint: Path | None = None) -> "ItemEncoder":
        """Load from a local directory or a hub id already in the Hugging Face cache; never downloads.

        Raises:
            ModelUnavailable: the weights are not on this machine, or are not a dual encoder; the message
                says where to save them and the command that saves them.
        """
        name = str(source)
        quiet_transformers()
        try:
            config = AutoConfig.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError) as exc:
            reason = "no such folder or cached hub model" if not Path(name).exists() else f"config.json unreadable: {exc}"
            raise _unavailable(name, reason, save_hint) from exc
        model_class = MODEL_CLASSES.get(config.model_type)
        if model_class is None:
            raise ModelUnavailable(
                f"encoder '{name}' is a '{config.model_type}' model; Vitrine needs a CLIP or vision-text dual encoder "
                f"({', '.join(MODEL_CLASSES)})"
            )
        try:
            model = model_class.from_pretrained(name, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
            image_processor = AutoImageProcessor.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise _unavailable(name, f"incomplete: {exc}", save_hint) from exc
        extra: dict[str, Any] = {}
        sidecar = Path(name) / cls.SIDECAR
        if sidecar.is_file():
            extra = json.loads(sidecar.read_text())
        return cls(model, tokenizer, image_processor, source=name, extra=extra)

    def save(self, directory: Path) -> str:
        """Save weights, tokenizer, image processor and sidecar so that `load(directory)` reproduces it.

        Returns the model_version.
        """
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        self.extra["model_version"] = self.model_version
        (directory / self.SIDECAR).write_text(json.dumps(self.extra, indent=2, sort_keys=True))
        return self.model_version

    @property
    def model_version(self) -> str:
        """Content hash of the weights, computed once per load (weights do not change after loading)."""
        if self._version is None:
            self._version = weights_version(self.model)
        return self._version

    def forget_version(self) -> None:
        """Call after changing the weights (training) so that `model_version` is recomputed."""
        self._version = None

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def text_pooling(self) -> str:
        return str(getattr(self.model.config, TEXT_POOLING_KEY, "pooler"))

    # -- tensors in, tensors out (used with gradients by the trainer) -------------------------------

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        limit = min(TEXT_MAX_TOKENS, int(getattr(self.tokenizer, "model_max_length", TEXT_MAX_TOKENS)))
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, 3, H, W) float tensor, resized and normalised as the vision tower expects."""
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    def text_tower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(n, text hidden) pooled text states, before projection."""
        out = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask)
        if self.text_pooling == "mean":
            # Mean over real tokens only: padding must not dilute short titles.
            mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            return (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return out.pooler_output

    def image_tower(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(n, vision hidden) pooled image states, before projection."""
        return self.model.vision_model(pixel_values=pixel_values).pooler_output

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.model.text_projection(pooled)

    def project_image(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.model.visual_projection(pooled)

    # -- lists in, unit vectors out (inference) ------------------------------------------------------

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = ENCODE_BATCH_SIZE) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised; same input and model give the same bits."""
        self.model.eval()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            batch = self.tokenize(texts[start : start + batch_size])
            vectors = self.project_text(self.text_tower(batch["input_ids"], batch["attention_mask"]))
            out[start : start + len(vectors)] = normalise(vectors.numpy())
        return out

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image], batch_size: int = ENCODE_BATCH_SIZE) -> np.ndarray:
        """(len(images), dim) float32, L2-normalised."""
        self.model.eval()
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            pixel_values = self.pixels(images[start : start + batch_size])
            vectors = self.project_image(self.image_tower(pixel_values))
            out[start : start + len(vectors)] = normalise(vectors.numpy())
        return out


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 length (all-zero rows stay zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)

