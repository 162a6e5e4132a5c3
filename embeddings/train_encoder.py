"""`vitrine train encoder`: contrastive training of the default dual encoder, or fine-tuning of a CLIP.

One recipe for both (CLIP's, at shop scale): symmetric InfoNCE over image-caption pairs of training
items, AdamW with linear warm-up then cosine decay, weight decay on matrices only, early stopping on
the validation items' loss (best epoch restored). A tower can be frozen so that only the projections
(and the other tower) learn; a frozen tower's outputs are computed once and cached, which is what
makes the default (frozen MiniLM, ViT from scratch) train in about a minute on 2 cores.

Items without an image have no pair and are skipped; identical captions in one batch count as
positives of each other (synthetic catalogs repeat titles), so the loss does not push them apart.

The run goes to MLflow (`vitrine.tracking`): parameters, loss per step and per epoch, validation and
held-out test figures, the saved model folder as an artifact, registered as `vitrine-encoder` with
lineage tags and alias `champion`.

Example:
    >>> result = train_encoder(DataDir.resolve("data"), TrainEncoderConfig(epochs=20))
    >>> result["model_dir"]
    'data/models/encoder'
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from embeddings.catalog import CatalogView, ImageReport, Split, open_image
from embeddings.dual_encoder import DualEncoderSpec, build_dual_encoder
from embeddings.encode import EXPERIMENT, default_model_dir, image_weight_of, load_view
from embeddings.encoder import ItemEncoder
from embeddings.evaluate import choose_image_weight, evaluate_vectors, split_vectors
from vitrine.errors import InvalidInput
from vitrine.options import bar_shown
from vitrine.paths import DataDir
from vitrine.tracking import CHAMPION_ALIAS, ENCODER_MODEL, configure, lineage, register_model

# CLIP clamps its learned temperature at 100 so that logits cannot blow up.
MAX_LOGIT_SCALE = math.log(100.0)

# Pixels of reflect padding before a random crop back to size: a small shift, as in CIFAR training.
CROP_PADDING = 4

# Fewer image-text pairs than this cannot train anything contrastively.
MIN_TRAIN_PAIRS = 8


@dataclass(frozen=True)
class TrainEncoderConfig:
    """How to train. Defaults are for the default dual encoder on a demo-sized shop (2,000 items)."""

    # Hub id or folder of a CLIP / dual encoder to fine-tune; None builds the default dual encoder.
    base: str | None = None
    # Passes over the training pairs (the cosine schedule ends here; early stopping may end sooner).
    # On the demo shop validation loss flattens by epoch ~23 of 25 (1.33, from 4.76 untrained).
    epochs: int = 25
    # Pairs per step. Contrastive losses want large batches; 128 keeps a CPU step under a second.
    batch_size: int = 128
    # Rate for weights created in this run (the default's ViT and projections).
    learning_rate: float = 1e-3
    # Rate for weights that arrive pretrained (MiniLM, or all of a CLIP): small, so they adapt rather
    # than forget (the usual CLIP fine-tuning range is 1e-6 to 1e-5).
    pretrained_learning_rate: float = 1e-5
    # AdamW decoupled weight decay on weight matrices (not biases, norms or the temperature).
    weight_decay: float = 0.05
    # Share of all steps spent ramping the rate up from zero.
    warmup_fraction: float = 0.1
    # Epochs without a better validation loss before stopping.
    patience: int = 5
    # Freeze the text tower (train its projection only). None: frozen for the default (keeps MiniLM's
    # language understanding on a small catalog), trained for a CLIP base.
    freeze_text: bool | None = None
    # Freeze the vision tower (train its projection only). Meaningless for the default's new ViT.
    freeze_vision: bool = False
    # Random flips and small shifts of training images (never colour changes: colour is a label).
    augment: bool = True
    # Seeds model init, batch order and augmentation.
    seed: int = 0
    # Tower shapes of the default dual encoder (ignored with `base`).
    spec: DualEncoderSpec = field(default_factory=DualEncoderSpec)
    # Log to MLflow and register the model.
    track: bool = True
    # Train and evaluate on at most this many items (a fixed sample by id hash, `CatalogView.sample`);
    # None = every item. `vitrine embed` still encodes the whole catalog.
    max_items: int | None = None


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; pairs with the same caption id are all positives (soft targets).

    Args:
        image: (b, d) projected image features (not yet normalised).
        text: (b, d) projected text features.
        logit_scale: log temperature (scalar parameter).
        caption_ids: (b,) id of each item's caption text.
    """
    image = F.normalize(image, dim=-1)
    text = F.normalize(text, dim=-1)
    logits = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * image @ text.T  # (b, b)
    same = (caption_ids[:, None] == caption_ids[None, :]).to(logits.dtype)
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a shift of up to CROP_PADDING pixels, per image."""
    n, _, h, w = pixels.shape
    flip = torch.rand(n, generator=generator) < 0.5
    pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    padded = F.pad(pixels, (CROP_PADDING,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


@dataclass
class Pairs:
    """Image-caption pairs of one split, preprocessed once."""

    indices: list[int]  # positions in the catalog view
    pixels: torch.Tensor  # (n, 3, H, W)
    texts: list[str]
    caption_ids: torch.Tensor  # (n,)
    text_cache: torch.Tensor | None = None  # (n, text hidden) when the text tower is frozen
    image_cache: torch.Tensor | None = None  # (n, vision hidden) when the vision tower is frozen


def build_pairs(encoder: ItemEncoder, view: CatalogView, split: Split, report: ImageReport) -> Pairs:
    """The split's items that have a usable image, with preprocessed pixels and caption ids."""
    indices, pictures = [], []
    for i in view.indices(split):
        picture = open_image(view.image_paths[i], report)
        if picture is not None:
            indices.append(i)
            pictures.append(picture)
    texts = [view.texts[i] for i in indices]
    caption_index: dict[str, int] = {}
    ids = [caption_index.setdefault(t, len(caption_index)) for t in texts]
    pixels = torch.cat([encoder.pixels(pictures[s : s + 256]) for s in range(0, len(pictures), 256)]) if pictures else torch.zeros(0)
    return Pairs(indices, pixels, texts, torch.tensor(ids, dtype=torch.long))


class EncoderTrainTask:
    """The encoder plus its loss, optimiser and frozen-tower caches (TorchRec's *TrainTask* split).

    Args:
        encoder: the model to train, in place.
        config: the recipe.
        new_modules: names of sub-modules created in this run (they get `learning_rate`).
    """

    def __init__(self, encoder: ItemEncoder, config: TrainEncoderConfig, new_modules: set[str]) -> None:
        self.encoder = encoder
        self.config = config
        model = encoder.model
        self.freeze_text = config.freeze_text if config.freeze_text is not None else config.base is None
        self.freeze_vision = config.freeze_vision
        for param in model.text_model.parameters():
            param.requires_grad_(not self.freeze_text)
        for param in model.vision_model.parameters():
            param.requires_grad_(not self.freeze_vision)
        groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            top = name.split(".")[0]
            rate = config.learning_rate if top in new_modules else config.pretrained_learning_rate
            decay = config.weight_decay if param.ndim >= 2 else 0.0
            groups.setdefault((rate, decay), []).append(param)
        self.optimizer = torch.optim.AdamW(
            [{"params": p, "lr": rate, "weight_decay": decay} for (rate, decay), p in groups.items()]
        )
        self.trainable = sum(p.numel() for ps in groups.values() for p in ps)

    def cache(self, pairs: Pairs) -> None:
        """Compute frozen towers' outputs once (eval mode, no gradients)."""
        with torch.no_grad():
            if self.freeze_text:
                self.encoder.model.text_model.eval()
                chunks = []
                for start in range(0, len(pairs.texts), 64):
                    batch = self.encoder.tokenize(pairs.texts[start : start + 64])
                    chunks.append(self.encoder.text_tower(batch["input_ids"], batch["attention_mask"]))
                pairs.text_cache = torch.cat(chunks)
            if self.freeze_vision:
                self.encoder.model.vision_model.eval()
                pairs.image_cache = torch.cat(
                    [self.encoder.image_tower(pairs.pixels[s : s + 64]) for s in range(0, len(pairs.pixels), 64)]
                )

    def loss(self, pairs: Pairs, batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Contrastive loss of the pairs at positions `batch`; `generator` given means training (augment)."""
        if pairs.image_cache is not None:
            image_states = pairs.image_cache[batch]
        else:
            pixels = pairs.pixels[batch]
            if generator is not None and self.config.augment:
                pixels = augment(pixels, generator)
            image_states = self.encoder.image_tower(pixels)
        if pairs.text_cache is not None:
            text_states = pairs.text_cache[batch]
        else:
            tokens = self.encoder.tokenize([pairs.texts[i] for i in batch.tolist()])
            text_states = self.encoder.text_tower(tokens["input_ids"], tokens["attention_mask"])
        image = self.encoder.project_image(image_states)
        text = self.encoder.project_text(text_states)
        return clip_loss(image, text, self.encoder.model.logit_scale, pairs.caption_ids[batch])

    def set_mode(self, training: bool) -> None:
        model = self.encoder.model
        model.eval()
        if training:
            if not self.freeze_text:
                model.text_model.train()
            if not self.freeze_vision:
                model.vision_model.train()

    def batches(self, n: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        size = self.config.batch_size
        # Drop a last training batch of one pair: a 1x1 contrastive loss is always zero.
        for start in range(0, n, size):
            batch = order[start : start + size]
            if generator is None or len(batch) > 1:
                yield batch

    @torch.no_grad()
    def validation_loss(self, pairs: Pairs) -> float:
        self.set_mode(False)
        losses = [float(self.loss(pairs, b, None)) * len(b) for b in self.batches(len(pairs.indices), None)]
        return sum(losses) / max(1, len(pairs.indices))


def _schedule(warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def starting_encoder(data: DataDir, config: TrainEncoderConfig) -> tuple[ItemEncoder, set[str]]:
    """The encoder to train and the names of its freshly initialised sub-modules."""
    if config.base is None:
        encoder = build_dual_encoder(config.spec, seed=config.seed)
        return encoder, {"vision_model", "visual_projection", "text_projection", "logit_scale"}
    base = config.base
    return ItemEncoder.load(base, save_hint=data.models / base.rstrip("/").split("/")[-1]), set()


def fit(task: EncoderTrainTask, train: Pairs, validation: Pairs, progress: bool, on_step: Any = None) -> dict[str, Any]:
    """Train with early stopping; restores the best epoch's weights. Returns the curve and counts."""
    config = task.config
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = max(1, sum(1 for _ in task.batches(len(train.indices), torch.Generator().manual_seed(0))))
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        task.optimizer, _schedule(max(1, int(total * config.warmup_fraction)), total)
    )
    model = task.encoder.model
    has_validation = len(validation.indices) >= 2
    best_loss = task.validation_loss(validation) if has_validation else float("inf")
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    initial_validation = best_loss
    curve: list[dict[str, float]] = []
    best_epoch, stale, step = 0, 0, 0
    bar = tqdm(range(1, config.epochs + 1), desc="training encoder", unit="epoch", disable=not bar_shown(progress))
    for epoch in bar:
        task.set_mode(True)
        epoch_losses = []
        for batch in task.batches(len(train.indices), generator):
            loss = task.loss(train, batch, generator)
            task.optimizer.zero_grad()
            loss.backward()
            task.optimizer.step()
            scheduler.step()
            step += 1
            epoch_losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, epoch_losses[-1])
        train_loss = float(np.mean(epoch_losses)) if epoch_losses else float("nan")
        val_loss = task.validation_loss(validation) if has_validation else train_loss
        curve.append({"epoch": epoch, "train_loss": train_loss, "validation_loss": val_loss})
        bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
        if val_loss < best_loss - 1e-4 or not has_validation:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    bar.close()
    model.load_state_dict(best_state)
    task.encoder.forget_version()
    task.set_mode(False)
    return {
        "curve": curve,
        "best_epoch": best_epoch,
        "epochs_run": len(curve),
        "steps": step,
        "initial_validation_loss": initial_validation,
        "best_validation_loss": best_loss,
    }


def _log_and_register(data: DataDir, config: TrainEncoderConfig, result: dict[str, Any], model_dir: Path, curve_steps: list[tuple[int, float]]) -> dict[str, str]:
    configure(data, EXPERIMENT)
    tags = {**lineage(data), "stage": "encoder", "encoder.base": config.base or "default-dual-encoder",
            "embedding_model_version": result["model_version"]}
    with mlflow.start_run(run_name="train-encoder", tags=tags) as run:
        params = {k: v for k, v in asdict(config).items() if k not in ("spec", "track")}
        if config.base is None:
            params.update({f"spec.{k}": v for k, v in asdict(config.spec).items()})
        params.update({"freeze_text_effective": result["freeze_text"], "train_pairs": result["train_pairs"],
                       "validation_pairs": result["validation_pairs"], "trainable_parameters": result["trainable_parameters"]})
        mlflow.log_params(params)
        for step, loss in curve_steps:
            mlflow.log_metric("train_loss_step", loss, step=step)
        for point in result["curve"]:
            mlflow.log_metric("train_loss", point["train_loss"], step=int(point["epoch"]))
            mlflow.log_metric("validation_loss", point["validation_loss"], step=int(point["epoch"]))
        flat = _flatten("test", result["test"])
        mlflow.log_metrics({k: v for k, v in flat.items() if isinstance(v, float) and math.isfinite(v)})
        mlflow.log_metric("train_seconds", result["train_seconds"])
        mlflow.log_metric("image_weight", result["image_weight"])
        mlflow.log_dict(result["test"], "heldout_figures.json")
        mlflow.log_artifacts(str(model_dir), artifact_path="encoder")
        source = f"{mlflow.get_artifact_uri()}/encoder"
    # A plain artifact folder (a transformers checkpoint), not an MLflow "logged model": register its URI.
    version = register_model(ENCODER_MODEL, source, run.info.run_id, tags)
    mlflow.MlflowClient().set_registered_model_alias(ENCODER_MODEL, CHAMPION_ALIAS, version)
    return {"run_id": run.info.run_id, "registered_model": ENCODER_MODEL, "version": version, "alias": CHAMPION_ALIAS}


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(f"{prefix}.{k}".replace("@", "_at_"), v))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {}


def train_encoder(data: DataDir, config: TrainEncoderConfig, progress: bool = False) -> dict[str, Any]:
    """Train (or fine-tune) the encoder on this shop, save it to `data/models/encoder`, track and register it.

    A catalog without any image still gets a saved encoder (the untrained default: text tower only),
    so `vitrine embed` works on it.

    Raises:
        InvalidInput: images exist but too few to train on.
        ModelUnavailable: `config.base` is not on this machine.
    """
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    encoder, new_modules = starting_encoder(data, config)
    view = load_view(data)
    if config.max_items is not None:
        view = view.sample(config.max_items)
    report = ImageReport()
    train = build_pairs(encoder, view, "train", report)
    validation = build_pairs(encoder, view, "validation", report)
    task = EncoderTrainTask(encoder, config, new_modules)
    steps: list[tuple[int, float]] = []
    if len(train.indices) == 0:
        fitted: dict[str, Any] = {"curve": [], "best_epoch": 0, "epochs_run": 0, "steps": 0, "note": "no images: text tower only"}
    elif len(train.indices) < MIN_TRAIN_PAIRS:
        raise InvalidInput(
            f"{data.items}: only {len(train.indices)} training items have a usable image; need {MIN_TRAIN_PAIRS} "
            f"(images: {report.as_dict()})"
        )
    else:
        task.cache(train)
        task.cache(validation)
        fitted = fit(task, train, validation, progress, on_step=lambda s, l: steps.append((s, l)))
    train_seconds = time.perf_counter() - started

    validation_vectors, validation_items, _ = split_vectors(encoder, view, "validation")
    weight, sweep = choose_image_weight(encoder, validation_vectors, validation_items)
    untrained_vision = config.base is None and fitted["best_epoch"] == 0
    if untrained_vision and not sweep:
        # The new ViT never beat its random start on validation pairs (too few images, e.g. 86 on the
        # Amazon sample) and no labels can show otherwise: its vectors are noise, so fuse text only.
        weight = 0.0
        fitted["note"] = fitted.get("note") or "vision tower did not improve on validation: image weight 0"
    encoder.extra.update({"image_weight": weight, "image_weight_sweep": sweep, "base": config.base or "default-dual-encoder"})
    test_vectors, test_items, _ = split_vectors(encoder, view, "test")
    test = evaluate_vectors(encoder, test_vectors, test_items, image_weight_of(encoder), catalog=view.items)

    model_dir = Path(default_model_dir(data))
    # Save beside, then swap: `vitrine embed` never loads half a model.
    staging = model_dir.with_name(model_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    version = encoder.save(staging)
    shutil.rmtree(model_dir, ignore_errors=True)
    staging.rename(model_dir)

    result: dict[str, Any] = {
        "model_dir": str(model_dir),
        "model_version": version,
        "base": config.base or "default-dual-encoder",
        "freeze_text": task.freeze_text,
        "freeze_vision": task.freeze_vision,
        "trainable_parameters": task.trainable,
        "train_pairs": len(train.indices),
        "validation_pairs": len(validation.indices),
        "test_items": len(test_vectors.item_ids),
        **{k: v for k, v in fitted.items()},
        "train_seconds": round(train_seconds, 1),
        "image_weight": weight,
        "image_weight_sweep": sweep,
        "test": test,
        "images": report.as_dict(),
    }
    if config.track:
        result["mlflow"] = _log_and_register(data, config, result, model_dir, steps)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    return result
