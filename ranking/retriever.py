"""Candidate generation at serving time: the trained user tower plus the FAISS index of item vectors.

A retriever is a directory (also logged as the MLflow artifacts of registered model
`vitrine-retriever`); `Retriever` loads it from nothing else:

    config.json        model args (TwoTowerConfig), table sizes, content dim, ANN settings, lineage
    model.safetensors  state dict of `TwoTower` (never pickle)
    vocab.json         InputSpec: id vocabularies and dense-feature statistics
    item_vectors.npy   [items, d] float32 unit-norm item vectors, row i is item_ids[i]
    item_ids.json      the item id of each row
    index.faiss        FAISS index over item_vectors (exact or HNSW, see ranking.ann)
    manifest.json      size and sha256 of every file above (`ranking.artifact_check`)

`Retriever.load` refuses a directory that holds a pickle, differs from its manifest, has a config.json
with unknown keys or values of other types (`RetrieverConfigFile`), or weights of other shapes than
that config builds (`UntrustedArtifact`, before anything is loaded into the model).

At serving the user tower runs as plain tensor ops on CPU (`ranking.user_tower`: no
DistributedModelParallel, which is only the training wrapper, and no TorchRec objects per request);
the features go through the same `ranking.retriever_inputs.encode_users` that training used.

Example:
    retriever = Retriever.from_registry(data)                 # alias vitrine-retriever@champion
    features = {"recent_item_ids": ["I000012", "I000007"], "events_7d": 3, ...}   # Feast online row
    for c in retriever.retrieve("U00042", 100, user_features=features, exclude_items={"I000012"}):
        print(c.item_id, c.score)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from safetensors.torch import save_file

from ranking.ann import AnnConfig, build_index, index_kind, read_index, search, write_index
from ranking.artifact_check import StrictFile, check_model_dir, load_state, parse_json, read_weights, write_manifest
from ranking.retriever_inputs import FeatureRows, InputSpec, encode_users
from ranking.two_tower import TwoTower, TwoTowerConfig
from ranking.user_tower import UserTower
from vitrine.errors import InvalidInput, ModelUnavailable, UntrustedArtifact
from vitrine.paths import DataDir
from vitrine.tracking import CHAMPION_ALIAS, RETRIEVER_MODEL

if TYPE_CHECKING:
    from ranking.sequence_retriever import SequenceRetriever

# Files of a retriever dir.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
VECTORS_FILE = "item_vectors.npy"
ITEM_IDS_FILE = "item_ids.json"
INDEX_FILE = "index.faiss"
# Extra candidates fetched per excluded item that might occupy the top-k, so k survive the filter.
EXCLUDE_SLACK = 1


class RetrieverConfigFile(StrictFile):
    """What `config.json` of a two-tower retriever dir holds (`save_retriever` writes it)."""

    model: TwoTowerConfig  # the towers' shape
    table_sizes: dict[str, int]  # rows of each embedding table (`InputSpec.table_sizes`)
    content_dim: int  # width of the CLIP vectors
    ann: dict[str, int | str]  # AnnConfig's fields and the index kind built
    lineage: dict[str, str]  # run id, data snapshot, git commit...
    created_at: str  # UTC, ISO 8601


@dataclass(frozen=True)
class Candidate:
    """One retrieved item and its cosine score (higher is better)."""

    item_id: str
    score: float


def save_retriever(
    path: Path,
    model: TwoTower,
    spec: InputSpec,
    item_ids: Sequence[str],
    item_vectors: np.ndarray,
    *,
    ann: AnnConfig = AnnConfig(),
    lineage: Mapping[str, str] | None = None,
) -> Path:
    """Write a retriever dir that `Retriever.load` can serve from alone.

    Args:
        path: the directory (created; files in it are replaced).
        model: trained towers (plain module, e.g. gathered from DMP).
        spec: the InputSpec the model was trained with.
        item_ids / item_vectors: the catalog and its item-tower vectors, row-aligned.
        ann: which index to build.
        lineage: tags (data snapshot, feature service, embedding model version, git commit...).
    """
    if len(item_ids) != len(item_vectors):
        raise InvalidInput(f"{len(item_ids)} item ids but {len(item_vectors)} item vectors")
    path.mkdir(parents=True, exist_ok=True)
    index = build_index(item_vectors, ann)
    config = {
        "model": model.config.to_json(),
        "table_sizes": spec.table_sizes,
        "content_dim": spec.content_dim,
        "ann": {**ann.__dict__, "kind": index_kind(index)},
        "lineage": dict(lineage or {}),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE))
    spec.save(path / VOCAB_FILE)
    np.save(path / VECTORS_FILE, np.ascontiguousarray(item_vectors, dtype=np.float32))
    (path / ITEM_IDS_FILE).write_text(json.dumps(list(item_ids)))
    write_index(index, path / INDEX_FILE)
    write_manifest(path)
    return path


def load_towers(path: Path) -> tuple[TwoTower, InputSpec, dict[str, Any]]:
    """The plain `TwoTower` (eval mode, CPU), its InputSpec and config.json of a checked retriever dir (`Retriever.load`).

    Raises:
        UntrustedArtifact: a config.json, vocab.json or weights file that is not what `save_retriever` writes.
    """
    parsed = parse_json(RetrieverConfigFile, path / CONFIG_FILE)
    spec = InputSpec.load(path / VOCAB_FILE)
    if parsed.table_sizes != spec.table_sizes or parsed.content_dim != spec.content_dim:
        raise UntrustedArtifact(f"{path / CONFIG_FILE}: table sizes {parsed.table_sizes} and content dim {parsed.content_dim}, "
                                f"but {VOCAB_FILE} makes {spec.table_sizes} and {spec.content_dim}")
    state = read_weights(path / WEIGHTS_FILE)
    model = load_state(lambda: TwoTower(parsed.model, parsed.table_sizes, parsed.content_dim), state, path / WEIGHTS_FILE)
    return model.eval(), spec, json.loads((path / CONFIG_FILE).read_text())


class Retriever:
    """User tower + ANN index: `retrieve(user_id, k, user_features=...)` returns k candidates.

    Public surface (what the serving layer calls):
        Retriever.load(dir)                          a retriever dir (see module docstring)
        Retriever.from_registry(data, alias)         `vitrine-retriever@<alias>` from MLflow
        .retrieve(user_id, k, *, user_features, exclude_items) -> list[Candidate]
        .retrieve_batch(frame, k, *, exclude_items) -> list[list[Candidate]]
        .user_vectors(frame) -> np.ndarray [N, d]
        .version    registry version ("3") when from the registry, else the run id or dir name
        .item_ids   catalog item id of each index row
    """

    kind = "two-tower"

    def __init__(
        self, model: TwoTower, spec: InputSpec, item_ids: list[str], index: Any, config: dict[str, Any], version: str
    ) -> None:
        self.model = model
        self.user_tower = UserTower(model)
        self.spec = spec
        self.item_ids = item_ids
        self.index = index
        self.config = config
        self.version = version

    @classmethod
    def load(cls, path: str | Path, *, version: str | None = None) -> "Retriever":
        """Load a retriever dir written by `save_retriever`.

        Example:
            retriever = Retriever.load("data/models/retriever")
        """
        path = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE, ITEM_IDS_FILE, INDEX_FILE):
            if not (path / name).exists():
                raise ModelUnavailable(f"{path / name}: missing; not a retriever dir")
        check_model_dir(path)
        model, spec, config = load_towers(path)
        item_ids = json.loads((path / ITEM_IDS_FILE).read_text())
        index = read_index(path / INDEX_FILE)
        if index.ntotal != len(item_ids):
            raise ModelUnavailable(f"{path / INDEX_FILE}: {index.ntotal} vectors for {len(item_ids)} item ids")
        chosen = version or config.get("lineage", {}).get("run_id") or path.name
        return cls(model, spec, item_ids, index, config, str(chosen))

    @classmethod
    def from_registry(cls, data: DataDir, alias: str = CHAMPION_ALIAS, name: str = RETRIEVER_MODEL) -> "Retriever":
        """Download and load `name@alias` from the MLflow registry of `data`.

        Example:
            retriever = Retriever.from_registry(DataDir.resolve(), alias="champion")
        """
        found = retriever_from_registry(data, alias, name)
        if not isinstance(found, Retriever):
            raise ModelUnavailable(f"{name}@{alias} is a {found.kind} retriever; this needs a two-tower one")
        return found

    def user_vectors(self, frame: FeatureRows) -> np.ndarray:
        """[N, d] unit-norm vectors of the users in `frame` (user_id + retriever user features; a frame or dicts)."""
        return self.user_tower(encode_users(frame, self.spec))

    def retrieve(
        self,
        user_id: str,
        k: int,
        *,
        user_features: Mapping[str, Any] | pd.DataFrame | None = None,
        exclude_items: Iterable[str] = (),
    ) -> list[Candidate]:
        """The k best items for one user, best first, without `exclude_items` (e.g. already bought).

        Args:
            user_id: the user; unknown users get the UNKNOWN id and are served from their features.
            k: how many candidates (fewer only when the catalog minus exclusions is smaller).
            user_features: the user's `retriever` features (online store row); None for none.
            exclude_items: item ids never to return.
        """
        row = dict(user_features.iloc[0]) if isinstance(user_features, pd.DataFrame) else dict(user_features or {})
        row["user_id"] = user_id
        return self.retrieve_batch([row], k, exclude_items=[exclude_items])[0]

    def retrieve_batch(
        self, frame: FeatureRows, k: int, *, exclude_items: Sequence[Iterable[str]] | None = None
    ) -> list[list[Candidate]]:
        """`retrieve` for every row of `frame` (user_id + features; a frame or dicts) in one tower pass and one search."""
        if k < 1:
            raise InvalidInput(f"k: must be at least 1, got {k}")
        excluded = [set(map(str, e)) for e in exclude_items] if exclude_items is not None else [set()] * len(frame)
        if len(excluded) != len(frame):
            raise InvalidInput(f"exclude_items: {len(excluded)} sets for {len(frame)} users")
        vectors = self.user_vectors(frame)
        widest = k + EXCLUDE_SLACK * max((len(e) for e in excluded), default=0)
        rows, scores = search(self.index, vectors, widest)
        results = []
        for found, score, skip in zip(rows, scores, excluded):
            picked = [Candidate(self.item_ids[r], float(s)) for r, s in zip(found, score) if self.item_ids[r] not in skip]
            results.append(picked[:k])
        return results


def load_retriever(path: str | Path, *, version: str | None = None) -> "Retriever | SequenceRetriever":
    """The retriever in `path`, of whichever kind its config.json names (two-tower when it names none).

    Raises:
        ModelUnavailable: files missing or not loadable; UntrustedArtifact: see the module docstring.
    """
    from ranking.sequence_retriever import SequenceRetriever, is_sequence_retriever

    path = Path(path)
    return SequenceRetriever.load(path, version=version) if is_sequence_retriever(path) else Retriever.load(path, version=version)


def retriever_from_registry(data: DataDir, alias: str = CHAMPION_ALIAS, name: str = RETRIEVER_MODEL) -> "Retriever | SequenceRetriever":
    """`name@alias` from the MLflow registry of `data`, of whichever kind it is.

    Raises:
        ModelUnavailable: no such alias, or its files do not load.
        UntrustedArtifact: its files are not what a saver wrote (the message names model, version and file).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from vitrine.tracking import configure

    configure(data)
    try:
        found = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
        local = mlflow.artifacts.download_artifacts(artifact_uri=found.source)
    except MlflowException as exc:
        raise ModelUnavailable(f"model registry: no {name}@{alias} ({exc.message})") from exc
    try:
        return load_retriever(local, version=str(found.version))
    except UntrustedArtifact as exc:
        raise UntrustedArtifact(f"{name} v{found.version}: {exc}") from exc
