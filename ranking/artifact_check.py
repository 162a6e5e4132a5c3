"""Refuses a model directory that is not what Vitrine's own savers wrote, before it can serve.

A registered model is code's input: MLflow's CVE-2024-37057 was a model whose pickle ran its author's
code when loaded. Vitrine's formats hold no pickle (JSON, safetensors, .npy of plain dtypes, FAISS,
LightGBM text), and every loader (`Retriever.load`, `SequenceRetriever.load`, `Reranker.load`)
checks its directory in this order before any of it is parsed:

1. `check_model_dir`, no file can carry a pickle: by suffix (`PICKLE_SUFFIXES`), by content (the
   pickle protocol's magic bytes, a zip holding a `.pkl` as `torch.save` writes, a `.npy` of object
   dtype), and no link;
2. `check_model_dir`, the manifest: every saver ends with `write_manifest`, which lists each file
   with its size and sha256; a file changed, missing or not listed is refused, and so is a directory
   without a manifest (one saved before this check: re-save or retrain it);
3. then each loader parses its own files strictly: `parse_json` (pydantic, unknown keys and wrong
   types refused by key), `load_state` (every tensor's name, shape and dtype against the module its
   config builds, compared on fake tensors before that module is built), `check_lightgbm_text` (header, feature names and
   trees of a LightGBM model text before LightGBM parses it).

Each refusal is an `UntrustedArtifact` (a `ModelUnavailable`) naming the file and the reason; the
registry loaders prefix the model name and version, and the model watcher keeps the old model serving.

The manifest (`manifest.json`):

    {"format": 1, "files": {"config.json": {"size": 1234, "sha256": "9f86d0..."}, ...}}

It is not signed: it catches a file changed or added after saving (by hand, by a tool, a partial
copy), not someone who rewrites the manifest as well; the content checks (1 and 3) are for that.

Example:
    >>> write_manifest(directory)                 # the last step of every saver
    >>> check_model_dir(directory)                # the first step of every loader
"""

from __future__ import annotations

import hashlib
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from vitrine.errors import UntrustedArtifact

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
# Suffixes of the formats that are pickles, or usually hold one (torch's .pt/.pth/.bin/.ckpt, joblib, dill).
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib", ".dill", ".pt", ".pth", ".bin", ".ckpt"})
# Bytes read from the head of each file to recognise a pickle, a zip or a .npy.
SNIFF_BYTES = 16
# Read size while hashing: large enough that a 1 GB item-vector file is a few hundred reads.
HASH_CHUNK = 1 << 20
# The most trees a ranker may hold: the trainer stops at a few hundred rounds (`RankerTrainConfig.max_rounds`);
# a text claiming more is not one of ours, and LightGBM would allocate for every one of them.
MAX_TREES = 20_000
# The lines a LightGBM model text starts with (LightGBM 4 writes format v4).
LIGHTGBM_HEADER = ("tree", "version=v4")

Parsed = TypeVar("Parsed")
Module = TypeVar("Module", bound=torch.nn.Module)


class StrictFile(BaseModel):
    """Base of the schemas of model JSON files (`parse_json`): an unknown key or a value of another type is an error."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ManifestEntry(StrictFile):
    size: int  # bytes
    sha256: str  # hex digest of the content


class Manifest(StrictFile):
    format: int  # MANIFEST_FORMAT
    files: dict[str, ManifestEntry]  # path relative to the model directory (/-separated) -> entry


def _files(directory: Path) -> dict[str, Path]:
    """Every entry under `directory` but the manifest, by its /-separated relative path (folders left out)."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        name = path.relative_to(directory).as_posix()
        if name != MANIFEST_FILE:
            found[name] = path
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path) -> Path:
    """Write `manifest.json`: the size and sha256 of every file now in `directory` (the saver's last step)."""
    files = {name: ManifestEntry(size=path.stat().st_size, sha256=_sha256(path)) for name, path in _files(directory).items()}
    manifest = directory / MANIFEST_FILE
    manifest.write_text(Manifest(format=MANIFEST_FORMAT, files=files).model_dump_json(indent=2) + "\n")
    return manifest


def pickle_reason(path: Path) -> str | None:
    """Why `path` could carry a pickle (its suffix or its first bytes), None when it cannot."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return f"a {path.suffix} file, a format that holds pickles"
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    # Protocol 2+ pickles start with PROTO (0x80) and the protocol number. A safetensors file starts with
    # its header's length (u64, little-endian) and then "{": its first byte may be 0x80 by chance.
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and not _safetensors_head(head, path.stat().st_size):
        return f"pickle data (protocol {head[1]})"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                pickles = [name for name in archive.namelist() if name.endswith((".pkl", ".pickle"))]
        except zipfile.BadZipFile:
            return "a damaged zip archive"
        if pickles:
            return f"a zip holding pickle {pickles[0]} (the format of torch.save)"
    if head.startswith(b"\x93NUMPY"):
        dtype = _npy_dtype(path)
        if dtype is None:
            return "a .npy file whose header does not parse"
        if dtype.hasobject:
            return f"a .npy array of dtype {dtype} (object arrays are pickles)"
    return None


def _safetensors_head(head: bytes, size: int) -> bool:
    return len(head) > 8 and 8 + int.from_bytes(head[:8], "little") <= size and head[8:9] == b"{"


def _npy_dtype(path: Path) -> np.dtype | None:
    """The dtype a .npy header declares (parsed as a literal, never unpickled), None when it does not parse."""
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            _, _, dtype = read(handle)
    except (ValueError, OSError):
        return None
    return np.dtype(dtype)


def check_model_dir(directory: Path) -> None:
    """Refuse `directory` unless no file can carry a pickle and every file is the one its manifest lists.

    Raises:
        UntrustedArtifact: naming the file and why (see the module docstring).
    """
    files = _files(directory)
    for name, path in files.items():
        if path.is_symlink() or not path.is_file():
            raise UntrustedArtifact(f"{path}: a link or special file; a model directory holds plain files")
        reason = pickle_reason(path)
        if reason is not None:
            raise UntrustedArtifact(f"{path}: {reason}; a model directory holds no pickle")
    manifest = directory / MANIFEST_FILE
    if not manifest.is_file():
        raise UntrustedArtifact(f"{manifest}: missing, so no file can be checked; re-save the model with this version")
    listed = parse_json(Manifest, manifest).files
    for name in sorted(set(listed) - set(files)):
        raise UntrustedArtifact(f"{directory / name}: listed in {MANIFEST_FILE} but missing")
    for name in sorted(set(files) - set(listed)):
        raise UntrustedArtifact(f"{files[name]}: not listed in {MANIFEST_FILE}; added after the model was saved")
    for name, entry in sorted(listed.items()):
        size = files[name].stat().st_size
        if size != entry.size:
            raise UntrustedArtifact(f"{files[name]}: {size} bytes, {MANIFEST_FILE} says {entry.size}; changed after saving")
        if _sha256(files[name]) != entry.sha256:
            raise UntrustedArtifact(f"{files[name]}: sha256 differs from {MANIFEST_FILE}; changed after saving")


def parse_json(schema: type[Parsed], path: Path) -> Parsed:
    """`path` parsed as `schema` (a pydantic model or a dataclass), strictly: text that is not JSON, an unknown
    key or a value of another type is refused, naming the key."""
    try:
        return TypeAdapter(schema).validate_json(path.read_bytes(), strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise UntrustedArtifact(f"{path}: {where}: {first['msg']}{more}") from exc


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of safetensors file `path` (a format that holds no code); a file that does not parse is refused."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UntrustedArtifact(f"{path}: not a readable safetensors file ({exc})") from exc


def load_state(build: Callable[[], Module], state: Mapping[str, torch.Tensor], path: Path) -> Module:
    """`build()` (the module a config describes) holding `state`, once every tensor's name, shape and dtype is its own.

    `build` runs twice: first on fake tensors, which hold no memory, to compare the shapes, so that a
    config asking for a billion-row table is refused instead of exhausting the machine; then for real.

    Raises:
        UntrustedArtifact: a tensor missing, unknown, or of another shape or dtype (named, with both shapes).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    with warnings.catch_warnings(), FakeTensorMode(allow_non_fake_inputs=True):
        warnings.simplefilter("ignore")  # torch warns that fake tensors have no data pointer: none is read
        expected = {name: (tuple(tensor.shape), tensor.dtype) for name, tensor in build().state_dict().items()}
    missing = [name for name in expected if name not in state]
    unknown = [name for name in state if name not in expected]
    if missing or unknown:
        raise UntrustedArtifact(f"{path}: tensors do not match the model its config builds: missing {missing[:5]}, unknown {unknown[:5]}")
    for name, (shape, dtype) in expected.items():
        found = state[name]
        if tuple(found.shape) != shape or found.dtype != dtype:
            raise UntrustedArtifact(f"{path}: tensor {name}: expected {shape} {dtype}, found {tuple(found.shape)} {found.dtype}")
    module = build()
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UntrustedArtifact(f"{path}: does not load into the model its config builds ({exc})") from exc
    return module


def check_lightgbm_text(text: str, feature_names: Sequence[str], path: Path, max_trees: int = MAX_TREES) -> None:
    """Refuse `text` unless it reads as a LightGBM model over exactly `feature_names` (before LightGBM parses it).

    Checks the `tree` / `version=v4` header, one class and one tree per iteration, the feature names
    and `max_feature_idx`, and that the trees are numbered 0..n-1, at most `max_trees`, each exactly
    as long as `tree_sizes` says (LightGBM seeks by those sizes), up to `end of trees`.

    Why before LightGBM: its parser does not always raise. One extra line inside a tree makes
    LightGBM 4.7 call std::terminate, which kills the whole serving process, not just the load.
    """

    def refuse(reason: str) -> UntrustedArtifact:
        return UntrustedArtifact(f"{path}: not a LightGBM model of this ranker: {reason}")

    lines = text.split("\n", len(LIGHTGBM_HEADER))
    if tuple(line.strip() for line in lines[: len(LIGHTGBM_HEADER)]) != LIGHTGBM_HEADER:
        raise refuse(f"starts {text[:30]!r}, expected {chr(10).join(LIGHTGBM_HEADER)!r}")
    header_text, _, body = text.partition("\n\n")
    header = {key: value for key, _, value in (line.partition("=") for line in header_text.split("\n"))}
    for key, value in (("num_class", "1"), ("num_tree_per_iteration", "1"), ("max_feature_idx", str(len(feature_names) - 1))):
        if header.get(key) != value:
            raise refuse(f"{key}={header.get(key)}, expected {value}")
    names = header.get("feature_names", "").split(" ")
    if names != list(feature_names):
        raise refuse(f"feature_names {names[:5]}..., expected the metadata's {list(feature_names)[:5]}...")
    try:
        sizes = [int(size) for size in header.get("tree_sizes", "").split()]
    except ValueError:
        raise refuse(f"tree_sizes={header.get('tree_sizes')!r}") from None
    if not 1 <= len(sizes) <= max_trees:
        raise refuse(f"{len(sizes)} trees, expected 1 to {max_trees}")
    end = body.find("end of trees")
    if end < 0:
        raise refuse("no 'end of trees' line")
    trees = body[:end].encode()
    starts = [match.start() for match in re.finditer(rb"^Tree=(\d+)$", trees, re.MULTILINE)]
    numbers = [int(match.group(1)) for match in re.finditer(rb"^Tree=(\d+)$", trees, re.MULTILINE)]
    if numbers != list(range(len(sizes))) or (starts and starts[0] != 0):
        raise refuse(f"trees numbered {numbers[:5]}..., expected 0..{len(sizes) - 1} as tree_sizes lists")
    lengths = [b - a for a, b in zip(starts, [*starts[1:], len(trees)])]
    if lengths != sizes:
        raise refuse("tree_sizes do not match the trees' lengths")

