"""The sequence retriever at serving time: the SASRec-style user tower over a user's ordered items, plus the ANN index.

A sequence retriever is a directory (the MLflow artifacts of a `vitrine-retriever` version whose
`config.json` says `"kind": "sequence"`); it holds everything needed to serve, and no pickle:

    config.json        kind, SequenceTowerConfig, item count, content width, ANN settings, lineage,
                       the co-visitation source's settings
    model.safetensors  state dict of `SequenceTower` (its content buffer included)
    item_ids.json      the catalog the tower was trained on: row r of every array is item_ids[r]
    known.npy          [items] bool, items whose ids the tower trained on (others use the unknown row)
    item_vectors.npy   [items, d] the item vectors the index holds (`SequenceTower.item_vectors(known=...)`)
    index.faiss        FAISS inner-product index over item_vectors (`ranking.ann`)
    content_neighbours.npy  [items, <= CONTENT_NEIGHBOURS] int32, each item's nearest items by content
                       (-1 padded; the content source's pool); only with content
    manifest.json      size and sha256 of every file above (`ranking.artifact_check`)

`SequenceRetriever.load` refuses a directory that holds a pickle, differs from its manifest, has a
config.json with unknown keys or values of other types (`SequenceConfigFile`), or weights of other
shapes than that config builds (`UntrustedArtifact`, before anything is loaded into the tower).

A user is their sequence (`user_sequence.sequence_item_ids`, oldest first): ids outside the
tower's catalog read as unknown items, as an item first seen after training does offline.

Example:
    retriever = SequenceRetriever.load("data/models/retriever")
    vectors = retriever.vectors_of([np.array([12, 7, 301])])       # histories as catalog rows
    rows, scores = retriever.search(vectors, k=100)
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import save_file

from feature_repo.covisitation import CoVisitConfig
from ranking.ann import AnnConfig, build_index, index_kind, read_index, search, write_index
from ranking.artifact_check import StrictFile, check_model_dir, load_state, parse_json, read_weights, write_manifest
from ranking.sequence_tower import SequenceTower, SequenceTowerConfig, pad_histories
from ranking.user_state_kernel import StateWeights
from vitrine.errors import ModelUnavailable, UntrustedArtifact

KIND = "sequence"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ITEM_IDS_FILE = "item_ids.json"
KNOWN_FILE = "known.npy"
VECTORS_FILE = "item_vectors.npy"
INDEX_FILE = "index.faiss"
CONTENT_NEIGHBOURS_FILE = "content_neighbours.npy"
# Content neighbours kept per item. The content source rescores the union of its query items' lists
# exactly against its query, instead of searching the whole catalog per request (an HNSW search over
# 100k 256-d vectors took 1.3 ms). On Toys' test histories the pool of 400-item lists holds 99.9% of
# the exact search's top 50 (200: 98.5%, 100: 92.7%); on random histories, whose last items have the
# least in common, 99.8%. Rescoring 400 x 3 items costs ~0.4 ms: the lists' length is the trade.
CONTENT_NEIGHBOURS = 400
# Queries per FAISS search while listing the neighbours ([chunk, 400] results at once).
NEIGHBOUR_CHUNK = 4096
# Users encoded per tower pass in batch work: [users, window, dim] activations stay a few MB.
ENCODE_CHUNK = 1024
# Up to this many users a call runs `UserStates` (compiled, ~0.15 ms a user) instead of the torch tower
# (~1 ms of operator overhead per pass whatever the batch); a batch beyond it amortises torch's cost.
KERNEL_USERS = 8


class SequenceConfigFile(StrictFile):
    """What `config.json` of a sequence retriever dir holds (`save_sequence_retriever` writes it)."""

    kind: Literal["sequence"]
    model: SequenceTowerConfig  # the tower's shape
    n_items: int  # catalog rows
    content_dim: int  # width of the content buffer's rows (0: ids only)
    ann: dict[str, int | str]  # AnnConfig's fields and the index kind built
    lineage: dict[str, str]  # run id, data snapshot, git commit, epochs...
    covisitation: CoVisitConfig | None = None  # the co-visitation source's settings (None: saved before they were)
    created_at: str  # UTC, ISO 8601


def save_sequence_retriever(path: Path, retriever: "SequenceRetriever", *, lineage: Mapping[str, Any] | None = None,
                            covisitation: Mapping[str, Any] | None = None) -> Path:
    """Write a sequence retriever dir that `SequenceRetriever.load` serves from alone (what it holds, nothing rebuilt).

    `covisitation`: the settings the co-visitation source was fitted and scored with (`CoVisitConfig`
    as a dict), so that serving scores it the same way (`ranking.recommender.next_item_sources`).
    """
    model = retriever.tower
    path.mkdir(parents=True, exist_ok=True)
    vectors, index = retriever.vectors, retriever.index
    config = {
        "kind": KIND,
        "model": model.config.to_json(),
        "n_items": model.n_items,
        "content_dim": int(model.content.shape[1]) if model.content_projection is not None else 0,
        "ann": retriever.config.get("ann") or {**AnnConfig().__dict__, "kind": index_kind(index)},
        "lineage": {str(key): str(value) for key, value in (lineage or {}).items()},
        **({"covisitation": dict(covisitation)} if covisitation is not None else {}),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}, str(path / WEIGHTS_FILE))
    (path / ITEM_IDS_FILE).write_text(json.dumps(retriever.item_ids))
    np.save(path / KNOWN_FILE, retriever.known)
    np.save(path / VECTORS_FILE, vectors)
    write_index(index, path / INDEX_FILE)
    if retriever.content_neighbours is not None:
        np.save(path / CONTENT_NEIGHBOURS_FILE, retriever.content_neighbours)
    write_manifest(path)
    return path


def is_sequence_retriever(path: Path) -> bool:
    """Whether `path`'s config.json names the sequence kind (False for anything else, even no JSON: the
    two-tower loader then refuses it)."""
    config = path / CONFIG_FILE
    try:
        return config.exists() and json.loads(config.read_text()).get("kind") == KIND
    except (ValueError, AttributeError):
        return False


class SequenceRetriever:
    """The trained tower (eval mode, CPU) and its index over the catalog it was trained on.

    Attributes:
        item_ids: catalog id of each row (the tower's rows, the index's rows).
        known: [items] bool, ids the tower trained on.
        index: the FAISS index over the item vectors.
        version: registry version when from the registry, else the run id or dir name.
    """

    kind = KIND

    def __init__(
        self, tower: SequenceTower, item_ids: list[str], known: np.ndarray, vectors: np.ndarray, index: Any, config: dict[str, Any], version: str,
        content_neighbours: np.ndarray | None = None,
    ) -> None:
        self.tower = tower.eval()
        self.item_ids = item_ids
        self.known = known
        self._known = torch.from_numpy(known)
        self.vectors = vectors
        self.index = index
        self.config = config
        self.version = version
        self.rows = {item: row for row, item in enumerate(item_ids)}
        self.states = UserStates(self.tower, vectors)
        # Unit content vectors of the catalog (the tower's CLIP input) and each item's nearest items
        # by them: the content source and features read them; None for a tower trained on ids alone.
        self.content: np.ndarray | None = None
        self.content_neighbours: np.ndarray | None = None
        if tower.content_projection is not None:
            content = tower.content.numpy().astype(np.float32)
            self.content = content / np.maximum(np.linalg.norm(content, axis=1, keepdims=True), 1e-12)
            self.content_neighbours = content_neighbours if content_neighbours is not None else nearest_by_content(self.content)
            if len(self.content_neighbours) != len(self.content):
                raise ModelUnavailable(f"content neighbours of {len(self.content_neighbours)} items for {len(self.content)} items")

    @classmethod
    def of(cls, tower: SequenceTower, item_ids: Sequence[str], known: np.ndarray, *, ann: AnnConfig = AnnConfig(),
           version: str = "in-memory", content_neighbours: np.ndarray | None = None) -> "SequenceRetriever":
        """A retriever over a freshly trained tower, its item vectors and index built in memory (what `save` writes).

        `content_neighbours`: another retriever's lists over the same content (they depend on nothing
        else), so a refit does not list them again: at 100k items that takes minutes.
        """
        if len(item_ids) != tower.n_items or len(known) != tower.n_items:
            raise ValueError(f"{len(item_ids)} item ids and {len(known)} known flags for a {tower.n_items}-item tower")
        known = np.asarray(known, dtype=bool)
        tower.eval()
        with torch.inference_mode():
            vectors = tower.item_vectors(known=torch.from_numpy(known)).numpy().astype(np.float32)
        index = build_index(vectors, ann)
        return cls(tower, [str(i) for i in item_ids], known, vectors, index, {"kind": KIND, "ann": {**ann.__dict__, "kind": index_kind(index)}},
                   version, content_neighbours)

    @property
    def max_length(self) -> int:
        return int(self.tower.config.max_length)

    @classmethod
    def load(cls, path: str | Path, *, version: str | None = None) -> "SequenceRetriever":
        path = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE, ITEM_IDS_FILE, KNOWN_FILE, VECTORS_FILE, INDEX_FILE):
            if not (path / name).exists():
                raise ModelUnavailable(f"{path / name}: missing; not a sequence retriever dir")
        check_model_dir(path)
        parsed = parse_json(SequenceConfigFile, path / CONFIG_FILE)
        config = json.loads((path / CONFIG_FILE).read_text())
        state = read_weights(path / WEIGHTS_FILE)
        # The content buffer is data the tower is built around: its shape is the config's, then every tensor is checked.
        content = state.get("content")
        uses_content = parsed.model.use_content and parsed.content_dim > 0
        expected = (parsed.n_items, parsed.content_dim) if uses_content else (0, 0)
        if content is None or tuple(content.shape) != expected:
            found = None if content is None else tuple(content.shape)
            raise UntrustedArtifact(f"{path / WEIGHTS_FILE}: tensor content: expected {expected}, found {found}")
        content_rows = content.numpy() if uses_content else None
        tower = load_state(lambda: SequenceTower(parsed.model, parsed.n_items, content_rows), state, path / WEIGHTS_FILE)
        item_ids = [str(i) for i in json.loads((path / ITEM_IDS_FILE).read_text())]
        known = np.load(path / KNOWN_FILE)
        vectors = np.load(path / VECTORS_FILE)
        index = read_index(path / INDEX_FILE)
        if not index.ntotal == len(known) == len(vectors) == len(item_ids):
            raise ModelUnavailable(f"{path}: {index.ntotal} index rows, {len(known)} known flags and {len(vectors)} vectors "
                                   f"for {len(item_ids)} item ids")
        chosen = version or config.get("lineage", {}).get("run_id") or path.name
        # A retriever saved before the neighbours were stored lists them now.
        neighbours = np.load(path / CONTENT_NEIGHBOURS_FILE) if (path / CONTENT_NEIGHBOURS_FILE).exists() else None
        return cls(tower, item_ids, known, vectors, index, config, str(chosen), neighbours)

    def histories(self, sequences: Sequence[Sequence[str] | None]) -> list[np.ndarray]:
        """Each user's sequence of ids (oldest first) as the tower's rows, ids outside its catalog dropped."""
        out = []
        for ids in sequences:
            rows = [self.rows.get(str(i), -1) for i in ids] if ids is not None else []
            out.append(np.array([r for r in rows if r >= 0], dtype=np.int64))
        return out

    @torch.inference_mode()
    def vectors_of(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """[users, d] the tower's state after each history's last item (zeros for an empty history).

        Up to `KERNEL_USERS` users (a request) go through `UserStates`, the same arithmetic compiled:
        torch's per-operator cost is most of a one-user pass. More users go through the tower.
        """
        dim = int(self.tower.config.embedding_dim)
        out = np.zeros((len(histories), dim), dtype=np.float32)
        filled = [n for n, h in enumerate(histories) if len(h)]
        if len(filled) <= KERNEL_USERS:
            for n in filled:
                out[n] = self.states(histories[n][-self.max_length :])
            return out
        for start in range(0, len(filled), ENCODE_CHUNK):
            chunk = filled[start : start + ENCODE_CHUNK]
            padded, lengths = pad_histories([histories[n] for n in chunk], self.max_length)
            out[chunk] = self.tower.user_vectors(padded, lengths, self._known[padded]).numpy()
        return out

    def search(self, vectors: np.ndarray, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per user, the rows and scores of the k best items by inner product (FAISS), best first."""
        return search(self.index, np.ascontiguousarray(vectors, dtype=np.float32), k)


def nearest_by_content(content: np.ndarray, k: int = CONTENT_NEIGHBOURS) -> np.ndarray:
    """[items, min(k, items)] int32: each item's nearest items by cosine of unit content vectors, best first (itself included).

    FAISS, exact up to `AnnConfig.exact_max_items` items and HNSW beyond (`ranking.ann`); -1 pads
    what an approximate search did not fill.
    """
    k = min(k, len(content))
    content = np.ascontiguousarray(content, dtype=np.float32)
    index = build_index(content, AnnConfig())
    out = np.full((len(content), k), -1, dtype=np.int32)
    for start in range(0, len(content), NEIGHBOUR_CHUNK):
        rows, _ = search(index, content[start : start + NEIGHBOUR_CHUNK], k)
        for n, found in enumerate(rows):
            out[start + n, : len(found)] = found
    out.setflags(write=False)  # may be shared by the retrievers of several towers over this content (`of`)
    return out


class UserStates:
    """`SequenceTower.user_vectors` for one history, compiled (`ranking.user_state_kernel`): the same weights and
    arithmetic, none of torch's per-call cost, and without the GIL.

    The inputs are the catalog's item vectors (`SequenceRetriever.vectors`: id embedding, unknown row
    for items the ids never trained on, plus the content projection, exactly what the tower feeds its
    blocks), plus positions, then each block. Equal to the tower up to float32 rounding (tested).
    """

    def __init__(self, tower: SequenceTower, item_vectors: np.ndarray) -> None:
        self.weights = StateWeights.of(tower, item_vectors)
        self(np.zeros(1, dtype=np.int64))  # compiles (or loads the cached kernel) now, not on a request

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """[d] the state after the last of `rows` (catalog rows, oldest first, at most the tower's window)."""
        return self.weights.state(rows)
