"""Train the two-tower retriever with TorchRec's DistributedModelParallel and register it in MLflow.

One code path for every launch:

    vitrine train retriever                                   1 process (CUDA if available, else CPU)
    torchrun --nproc_per_node 2 -m training.train_retriever   2 processes (NCCL on GPU, gloo on CPU)

Every embedding table is sharded table-wise (each table lives on one rank; lookups travel by
all-to-all), dense layers are data-parallel, embedding rows are updated by a fused row-wise
Adagrad in the backward pass and dense layers by Adam. Each rank takes its own share of every
epoch's batches. After each epoch the shards are gathered on rank 0 into a plain `TwoTower`,
which is validated, and after the last one saved as a retriever dir, logged to MLflow and
registered as `vitrine-retriever` (rank 0 only).

Example:
    result = train_retriever(DataDir.resolve(), TrainConfig(epochs=3))
    print(result.model_dir, result.version, result.epochs[-1])
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from rich.progress import Progress

from ranking.retriever_inputs import EncodedItems, InputSpec
from ranking.two_tower import TwoTower, TwoTowerConfig
from training.retriever_data import TrainingSet
from training.two_tower import LossConfig, TwoTowerTrainTask
from vitrine.errors import InvalidInput
from vitrine.options import bar_shown
from vitrine.paths import DataDir

# Where `vitrine train retriever` writes its model dir, under data/models/.
MODEL_SUBDIR = "retriever"
# Batches between progress updates.
PROGRESS_EVERY = 20
# Share of each device's memory the sharding planner keeps free for dense layers, optimizer state and
# activations: the embedding tables here are a few hundred MB, so 15% (TorchRec's own default margin) is plenty.
STORAGE_RESERVED_SHARE = 0.15


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Logged as MLflow parameters; overridable from the CLI."""

    # Passes over the training examples: 3 keeps the demo shop's evaluation (4 trainings) near 8 minutes
    # on 2 shared cores; validation recall still rises slowly after that.
    epochs: int = 3
    # Examples per batch on each rank; also the number of in-batch negatives.
    batch_size: int = 512
    # Adam learning rate of the dense layers (projections, MLPs).
    learning_rate: float = 2e-3
    # Row-wise Adagrad learning rate of the embedding tables (fused into the backward pass).
    embedding_learning_rate: float = 0.05
    # Items drawn uniformly from the catalog per batch as extra negatives (mixed negative sampling);
    # they teach the towers about items that are rarely positive, including cold ones. 0 disables.
    random_negatives: int = 256
    # Share of examples whose item id is replaced by UNKNOWN, so that content alone makes a good vector.
    item_id_dropout: float = 0.5
    # Share of examples whose user id is replaced by UNKNOWN, for users new to the model.
    user_id_dropout: float = 0.1
    # Seed of initialisation, shuffling and dropout (the same on every rank).
    seed: int = 0
    # Days at the end held out for per-epoch validation (0 trains on everything, without validation).
    validation_days: int = 3
    # The validation cut-off T itself (ISO UTC midnight), chosen by the caller: the pipeline's latest
    # split, which follows counts where days are sparse. None: the start of the last validation_days.
    validation_cutoff: str | None = None
    # Validate on each user's next new items after T only (`time_split(..., next_only=True)`), as the
    # pipeline's evaluation does; False: on every new item after T.
    validation_next_only: bool = False
    # Days of interactions to learn from, counted back from the last event day and including the
    # validation days; None reads the whole log. A recency window: the oldest behaviour says least
    # about tomorrow.
    history_days: int | None = None
    # Test users scored by the per-epoch validation, at most (a seeded sample; see Split.sample_users).
    validation_users: int = 20_000
    # Intra-op threads per process on CPU. The towers' ops are small, so OpenMP's per-op start-up
    # dominates with more threads, and on a busy machine its spinning threads starve each other
    # (measured: 1 thread trains 10x faster than 2 on 2 shared cores). More cores: more torchrun processes.
    cpu_threads: int = 1


@dataclass
class FitResult:
    """What `fit` returns on each rank."""

    # The trained towers gathered from all shards (rank 0 only; None elsewhere).
    model: TwoTower | None
    # Per epoch: loss, examples/s and whatever `validate` returned.
    epochs: list[dict[str, float]] = field(default_factory=list)
    # Sharding plan as TorchRec prints it (identical on all ranks).
    plan: str = ""
    # This process's rank and the world size.
    rank: int = 0
    world_size: int = 1
    # Tables whose shards this rank holds.
    local_tables: list[str] = field(default_factory=list)
    # sha256 of this rank's data-parallel (replicated) parameters after training: equal on all ranks.
    replicated_digest: str = ""


def history_start(data: DataDir, history_days: int | None) -> pd.Timestamp | None:
    """00:00 UTC of the first day of the last `history_days` event days (None: the whole log)."""
    from vitrine.shop.store import event_days

    if history_days is None:
        return None
    if history_days < 1:
        raise InvalidInput(f"history_days: {history_days} must be at least 1")
    days = event_days(data)
    if not days:
        return None
    return pd.Timestamp(days[-1], tz="UTC") - pd.Timedelta(days=history_days - 1)


def validation_cutoff(positives: pd.DataFrame, config: TrainConfig) -> pd.Timestamp:
    """T of the per-epoch validation: `config.validation_cutoff`, else the start of the last validation_days."""
    from training.retriever_data import time_cutoff

    if config.validation_cutoff:
        cutoff = pd.Timestamp(config.validation_cutoff)
        return cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")
    return time_cutoff(positives, config.validation_days)


def device_for_training() -> torch.device:
    """CUDA (this process's local rank) when available, else CPU."""
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def ensure_process_group(device: torch.device) -> None:
    """Join the torchrun group (env://) or, alone, make a one-process group in memory."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend=backend)
    else:
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)


def history_content(spec: InputSpec, catalog: EncodedItems) -> torch.Tensor:
    """[item id rows, content_dim] CLIP vector of each item id row (zeros for UNKNOWN), for history pooling."""
    table = np.zeros((spec.table_sizes["item_id"], spec.content_dim), dtype=np.float32)
    known = catalog.item_idx > 0
    table[catalog.item_idx[known]] = catalog.content[catalog.content_row[known]]
    return torch.from_numpy(table)


def build_model(config: TwoTowerConfig, spec: InputSpec, catalog: EncodedItems, device: torch.device | None = None) -> TwoTower:
    return TwoTower(config, spec.table_sizes, spec.content_dim, history_content(spec, catalog), device=device)


def fit(
    train: TrainingSet,
    spec: InputSpec,
    model_config: TwoTowerConfig,
    config: TrainConfig,
    loss: LossConfig = LossConfig(),
    *,
    validate: Callable[[TwoTower], dict[str, float]] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    show_progress: bool = True,
) -> FitResult:
    """Train the towers on `train` under DMP; collective: every rank of the group must call it.

    Args:
        train: encoded examples and catalog: all of them (each rank then takes its share) or this
            rank's share (`TrainingSet.read(..., shard=(rank, world))`).
        spec: the InputSpec used to encode them.
        model_config / config / loss: model shape, training schedule, loss.
        validate: called on rank 0 after each epoch with the gathered model (eval mode).
        on_epoch: called on rank 0 with (epoch, figures), e.g. to log to MLflow.
        show_progress: a progress bar on rank 0.

    Example:
        result = fit(train, spec, TwoTowerConfig(), TrainConfig(epochs=2))
        item_vectors = result.model.item_vectors(train.catalog.batch(np.arange(len(train.catalog))))
    """
    if train.total == 0:  # the count of all ranks' examples: every rank stops, none waits in a collective
        raise InvalidInput("training set: no examples")
    device = device_for_training()
    ensure_process_group(device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(config.cpu_threads)
    try:
        return _fit(train, spec, model_config, config, loss, device, validate, on_epoch, show_progress)
    finally:
        torch.set_num_threads(threads)


def _fit(
    train: TrainingSet,
    spec: InputSpec,
    model_config: TwoTowerConfig,
    config: TrainConfig,
    loss: LossConfig,
    device: torch.device,
    validate: Callable[[TwoTower], dict[str, float]] | None,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
    show_progress: bool,
) -> FitResult:
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.model_parallel import get_default_sharders
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
    from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
    from torchrec.distributed.types import ShardingType
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(config.seed)  # same initial weights on every rank

    model = build_model(model_config, spec, train.catalog)
    task = TwoTowerTrainTask(model, loss)
    tables = [*model.user_ebc.embedding_bag_configs(), *model.item_ebc.embedding_bag_configs()]
    apply_optimizer_in_backward(
        RowWiseAdagrad, [*model.user_ebc.parameters(), *model.item_ebc.parameters()], {"lr": config.embedding_learning_rate}
    )
    # Table-wise sharding for every table, so that two ranks really hold different tables.
    constraints = {t.name: ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value]) for t in tables}
    # The factory resolves the hardware's capacities; a fixed share of memory is kept for the dense
    # layers (TorchRec's heuristic reservation mis-sizes them without materialised tensors, and says so).
    topology = TopologyFactory.create_topology(trainer_config=TrainerConfig(world_size=world), kernel_config=KernelConfig(compute_device=device.type))
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints,
                                       storage_reservation=FixedPercentageStorageReservation(STORAGE_RESERVED_SHARE))
    plan = planner.collective_plan(task, get_default_sharders(), dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(task, device=device, plan=plan)
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.Adam(params, lr=config.learning_rate),
    )
    local_tables = sorted(
        name for name, tensor in dmp.state_dict().items() if _is_sharded(tensor) and tensor.local_shards()  # type: ignore[attr-defined]
    )

    train = train.share(rank, world)
    n = train.total
    batches_per_rank = max(1, (n // config.batch_size) // world) if n >= config.batch_size * world else 1
    batch = min(config.batch_size, n // world) if n < config.batch_size * world else config.batch_size
    result = FitResult(model=None, plan=str(plan), rank=rank, world_size=world, local_tables=local_tables)
    progress = Progress(disable=not bar_shown(show_progress) or rank != 0, transient=True)
    with progress:
        for epoch in range(config.epochs):
            dmp.train()
            # Each rank shuffles its own share (every rank takes the same number of batches from it),
            # and has its own generator for dropout and negatives.
            order = np.random.default_rng(config.seed + epoch).permutation(len(train))
            rng = np.random.default_rng([config.seed, epoch, rank])
            task_id = progress.add_task(f"epoch {epoch + 1}/{config.epochs}", total=batches_per_rank)
            began, total_loss, seen = time.perf_counter(), 0.0, 0
            for step in range(batches_per_rank):
                rows = order[step * batch : (step + 1) * batch]
                loss_value = _step(dmp, dense, train, rows, rng, config, device)
                total_loss += loss_value * len(rows)
                seen += len(rows)
                if step % PROGRESS_EVERY == 0 or step == batches_per_rank - 1:
                    progress.update(task_id, completed=step + 1, description=f"epoch {epoch + 1} loss {loss_value:.3f}")
            elapsed = time.perf_counter() - began
            figures = _epoch_figures(total_loss, seen, elapsed, device)
            gathered = gather_model(dmp, model_config, spec, train.catalog)
            if rank == 0 and gathered is not None:
                if validate is not None:
                    figures.update(validate(gathered.eval()))
                result.model = gathered
                if on_epoch is not None:
                    on_epoch(epoch, figures)
            result.epochs.append(figures)
            progress.remove_task(task_id)
    result.replicated_digest = _replicated_digest(dmp)
    return result


def _step(
    dmp: torch.nn.Module,
    dense: Any,
    train: TrainingSet,
    rows: np.ndarray,
    rng: np.random.Generator,
    config: TrainConfig,
    device: torch.device,
) -> float:
    size, m, pool = len(rows), config.random_negatives, len(train.negative_pool)
    users = train.users.batch(rows, drop_user_ids=rng.random(size) < config.user_id_dropout).to(device)
    items = train.items.batch(rows, drop_item_ids=rng.random(size) < config.item_id_dropout).to(device)
    # Expected count of an item among this batch's negatives: in-batch (size * share) + uniform (m / pool).
    log_q = torch.from_numpy(np.log(size * train.item_prob[rows] + m / pool)).float().to(device)
    weights = torch.from_numpy(train.weights[rows]).to(device)
    keys = torch.from_numpy(train.item_key[rows]).to(device)
    negatives = neg_keys = neg_log_q = None
    if m > 0:
        picked = train.negative_pool[rng.integers(0, pool, m)]
        negatives = train.catalog.batch(picked, drop_item_ids=rng.random(m) < config.item_id_dropout).to(device)
        neg_keys = torch.from_numpy(picked.astype(np.int64)).to(device)
        neg_log_q = torch.from_numpy(np.log(size * train.catalog_prob[picked] + m / pool)).float().to(device)
    loss = dmp(users, items, keys, log_q, weights, negatives, neg_keys, neg_log_q)
    dense.zero_grad()
    loss.backward()
    dense.step()
    return float(loss.detach())


def _epoch_figures(total_loss: float, seen: int, elapsed: float, device: torch.device) -> dict[str, float]:
    """Loss and examples/s summed over ranks (a collective)."""
    tensor = torch.tensor([total_loss, float(seen)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    slowest = torch.tensor([elapsed], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    loss, examples = float(tensor[0]), float(tensor[1])
    return {"loss": loss / max(examples, 1.0), "examples_per_s": examples / max(float(slowest[0]), 1e-9), "epoch_s": float(slowest[0])}


def _is_sharded(tensor: object) -> bool:
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    return isinstance(tensor, ShardedTensor)


def gather_model(dmp: torch.nn.Module, model_config: TwoTowerConfig, spec: InputSpec, catalog: EncodedItems) -> TwoTower | None:
    """Collective: the full state of the sharded model, loaded into a plain `TwoTower` on rank 0 (None elsewhere)."""
    rank = dist.get_rank()
    state: dict[str, torch.Tensor] = {}
    for name, tensor in dmp.state_dict().items():
        if _is_sharded(tensor):
            full = torch.empty(tensor.size(), dtype=tensor.dtype) if rank == 0 else None  # type: ignore[attr-defined]
            tensor.gather(dst=0, out=full)  # type: ignore[attr-defined]
            value = full
        else:
            value = tensor
        if rank == 0 and value is not None:
            state[name.removeprefix("model.")] = value.detach().cpu().clone()
    if rank != 0:
        return None
    model = build_model(model_config, spec, catalog)
    model.load_state_dict(state)
    return model


def _replicated_digest(dmp: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(dmp.state_dict().items()):
        if not _is_sharded(tensor):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def item_vectors(model: TwoTower, catalog: EncodedItems, chunk: int = 4096) -> np.ndarray:
    """[C, d] item-tower vectors of every catalog row (eval mode, no gradients)."""
    return _tower_in_chunks(model, model.item_vectors, catalog, chunk)


def user_vectors(model: TwoTower, users: Any, chunk: int = 4096) -> np.ndarray:
    """[U, d] user-tower vectors of every row of an `EncodedUsers` (eval mode, no gradients)."""
    return _tower_in_chunks(model, model.user_vectors, users, chunk)


def _tower_in_chunks(model: TwoTower, tower: Callable[[Any], torch.Tensor], encoded: Any, chunk: int) -> np.ndarray:
    model.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(encoded), chunk):
            parts.append(tower(encoded.batch(np.arange(start, min(start + chunk, len(encoded))))).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, model.config.output_dim), np.float32)


@dataclass
class TrainRun:
    """What `train_retriever` produced (rank 0 has everything; other ranks only `fit`)."""

    fit: FitResult
    # The saved retriever dir (rank 0).
    model_dir: Path | None = None
    # MLflow run id and registered version of `vitrine-retriever` (rank 0).
    run_id: str | None = None
    version: str | None = None
    # ANN recall@100 of the saved index against exact search (1.0 for an exact index).
    ann_recall_at_100: float | None = None
    # Lineage tags of the run and the registered version.
    tags: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "run_id": self.run_id,
            "version": self.version,
            "rank": self.fit.rank,
            "world_size": self.fit.world_size,
            "epochs": self.fit.epochs,
            "ann_recall_at_100": self.ann_recall_at_100,
            "tags": self.tags,
        }


def train_retriever(
    data: DataDir,
    config: TrainConfig = TrainConfig(),
    model_config: TwoTowerConfig = TwoTowerConfig(),
    loss: LossConfig = LossConfig(),
    *,
    register: bool = True,
    show_progress: bool = True,
) -> TrainRun:
    """Read the shop and its features, train under DMP, save, log to MLflow and register (rank 0).

    Collective under torchrun: every rank calls it with the same arguments.

    Args:
        data: the data dir (shop, features, embeddings, MLflow store).
        config / model_config / loss: training schedule, model shape, loss.
        register: create a `vitrine-retriever` model version (False: only log the run).
        show_progress: progress bars on rank 0.
    """
    import mlflow

    from feature_repo.store import service_name
    from ranking.ann import ann_recall, build_index
    from ranking.retriever import save_retriever
    from ranking.retriever_inputs import encode_items, encode_users
    from training.retrieval_metrics import ranking_metrics, top_k_by_vectors
    from training.retriever_data import (
        FEATURE_SERVICE,
        PointInTime,
        content_dim,
        end_of_log,
        fit_spec,
        on_days,
        time_split,
    )
    from vitrine.shop.store import read_items
    from vitrine.tracking import RETRIEVER_MODEL, configure, lineage, register_model

    device = device_for_training()
    ensure_process_group(device)
    rank, world = dist.get_rank(), dist.get_world_size()
    items = read_items(data)
    positives = _read_positives(data, config.history_days, rank, world)
    # One Feast read: every item at the end of the log (the served catalog) and, with validation,
    # every item and user at the validation cut-off.
    end = end_of_log(positives)
    cutoffs = [validation_cutoff(positives, config)] if config.validation_days > 0 else []
    features = PointInTime.read(
        data, on_days(positives["user_id"], "user_id", cutoffs), on_days(items["item_id"], "item_id", [end, *cutoffs]), items
    )
    catalog = features.catalog(items, end)
    validate = None
    train_examples, train_catalog = positives, catalog
    if config.validation_days > 0:
        split = time_split(features, positives, items, config.validation_days, cutoff=cutoffs[0],
                           next_only=config.validation_next_only)
        train_examples, train_catalog = split.train, split.catalog

    spec = fit_spec(data, train_examples, items, content_dim(catalog), seed=config.seed)
    with Progress(disable=not bar_shown(show_progress) or rank != 0, transient=True) as progress:
        task = progress.add_task("reading features", total=len(train_examples) // world)
        train = TrainingSet.read(
            data, train_examples, train_catalog, spec, items, shard=(rank, world),
            on_chunk=lambda done, total: progress.update(task, completed=done, total=total),
        )  # fmt: skip
    if config.validation_days > 0:
        split = split.sample_users(config.validation_users, config.seed)
        test_users = encode_users(split.test_users, spec)

        def validate(model: TwoTower) -> dict[str, float]:
            top = top_k_by_vectors(user_vectors(model, test_users), item_vectors(model, train.catalog), split.history)
            figures = ranking_metrics(top, split.targets, len(split.catalog))
            cold = ranking_metrics(top, split.cold_targets(), len(split.catalog))
            return {
                **{f"val_{k.replace('@', '_at_')}": v for k, v in figures.items() if k != "users"},
                **{f"val_cold_{k.replace('@', '_at_')}": v for k, v in cold.items() if k.startswith("recall")},
            }

    embedding_versions = catalog["model_version"].dropna() if "model_version" in catalog else pd.Series([], dtype=str)
    tags = {
        "stage": "retriever",
        "feature_service": service_name(FEATURE_SERVICE),
        "embedding_model_version": str(embedding_versions.mode().iloc[0]) if len(embedding_versions) else "none",
        "world_size": str(dist.get_world_size()),
        "device": device.type,
    }
    run_id = None
    if rank == 0:
        configure(data)
        tags.update(lineage(data))
        run = mlflow.start_run(run_name="train-retriever", tags=tags)
        run_id = run.info.run_id
        mlflow.log_params({f"train.{k}": v for k, v in asdict(config).items()})
        mlflow.log_params({f"model.{k}": v for k, v in asdict(model_config).items()})
        mlflow.log_params({f"loss.{k}": v for k, v in asdict(loss).items()})
        mlflow.log_params({"examples": train.total, "catalog_items": len(catalog), "users_vocab": len(spec.users)})

    def log_epoch(epoch: int, figures: dict[str, float]) -> None:
        mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in figures.items()}, step=epoch)

    result = TrainRun(fit=fit(train, spec, model_config, config, loss, validate=validate, on_epoch=log_epoch if rank == 0 else None, show_progress=show_progress))
    if rank != 0 or result.fit.model is None:
        return result
    try:
        model = result.fit.model
        vectors = item_vectors(model, encode_items(catalog, spec))
        model_dir = data.models / MODEL_SUBDIR
        tags["run_id"] = run_id or ""
        save_retriever(model_dir, model, spec, catalog["item_id"].astype(str).tolist(), vectors, lineage=tags)
        probes = vectors[np.random.default_rng(config.seed).choice(len(vectors), min(len(vectors), 1000), replace=False)]
        recall = ann_recall(build_index(vectors), vectors, probes, k=min(100, len(vectors)))
        mlflow.log_metric("ann_recall_at_100", recall)
        mlflow.log_artifacts(str(model_dir), artifact_path=MODEL_SUBDIR)
        result.model_dir, result.run_id, result.ann_recall_at_100, result.tags = model_dir, run_id, recall, tags
        if register:
            result.version = register_model(RETRIEVER_MODEL, f"{mlflow.get_artifact_uri()}/{MODEL_SUBDIR}", run_id or "", tags)
    finally:
        mlflow.end_run()
    return result


def _read_positives(data: DataDir, history_days: int | None, rank: int, world: int) -> pd.DataFrame:
    """The positive interactions of the training window, read by one rank after another.

    Reading and grouping the 1M-user shop's 25M events peaks near 10 GB for a moment, while the
    examples kept are under 1 GB: in turns, two ranks peak near 11 GB together instead of 20.
    """
    from feature_repo.sequences import positive_interactions
    from vitrine.shop.store import read_events

    positives = None
    for turn in range(world):
        if turn == rank:
            columns = ["user_id", "item_id", "event_type", "session_id"]
            events = read_events(data, start=history_start(data, history_days), columns=columns, categorical=True)
            positives = positive_interactions(events)
            del events
        dist.barrier()
    assert positives is not None
    return positives


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m training.train_retriever` (and of torchrun)."""
    parser = argparse.ArgumentParser(description="Train the two-tower retriever (DMP; run under torchrun for several processes).")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--validation-days", type=int, default=TrainConfig.validation_days)
    parser.add_argument("--history-days", type=int, default=None, help="Learn from the last N event days only (default: all).")
    parser.add_argument("--id-only", action="store_true", help="The ID-only baseline model (no CLIP, no features).")
    parser.add_argument("--no-register", action="store_true")
    parser.add_argument("--report-dir", default=None, help="Each rank writes rank-<r>.json here (plan, tables, digests).")
    args = parser.parse_args(argv)
    data = DataDir.resolve(args.data_dir)
    config = replace(
        TrainConfig(), epochs=args.epochs, batch_size=args.batch_size, validation_days=args.validation_days, history_days=args.history_days
    )
    model_config = TwoTowerConfig(use_content=False, use_features=False) if args.id_only else TwoTowerConfig()
    run = train_retriever(data, config, model_config, register=not args.no_register)
    summary = run.summary() | {"plan": run.fit.plan, "local_tables": run.fit.local_tables, "replicated_digest": run.fit.replicated_digest}
    if args.report_dir:
        Path(args.report_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.report_dir) / f"rank-{run.fit.rank}.json").write_text(json.dumps(summary, indent=2, default=str))
    if run.fit.rank == 0:
        print(json.dumps(run.summary(), default=str))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
