"""Tampered models in the real registry: each is refused before it replaces the serving one.

Every case copies the champion's directory from the served shop's MLflow registry, tampers with it
(a pickle added or under an innocent name, config.json edited, weights of another shape, a model text
that is not LightGBM's, no manifest...), registers it as a new `@champion` version and polls the model
watcher once. The previous version must keep serving, and the reason (model, version, file) must be
in `/readyz` and in the log; nothing may be unpickled (a trap file would appear). Then a clean copy
registered next is served and the error clears.

Where the tampering rewrites `manifest.json` too ("resealed"), the manifest cannot see it: those
cases prove the content checks (pickle sniffing, strict config, tensor shapes, LightGBM text) hold
on their own, against someone who can write the whole directory.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from ranking.artifact_check import MANIFEST_FILE, write_manifest
from ranking.model_watcher import ModelWatcher, ServingState
from ranking.service import ServiceConfig, create_app
from tests.shops import register_dir, served_next_item_shop, served_shop
from vitrine.paths import DataDir
from vitrine.tracking import CHAMPION_ALIAS, RANKER_MODEL, RETRIEVER_MODEL, configure

WATCHER_LOG = "ranking.model_watcher"


class Trap:
    """Unpickling it creates `path`: the proof that a loader unpickled something."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., None], tuple[Path]]:
        return Path.touch, (self.path,)


def trap_bytes(path: Path) -> bytes:
    return pickle.dumps(Trap(path), protocol=4)


# --- Tamperings: each changes a copy of a champion's directory in place ------------------------------


def add_pickle_file(model: Path, trap: Path) -> None:
    (model / "model.pkl").write_bytes(trap_bytes(trap))


def pickle_under_innocent_name(model: Path, trap: Path) -> None:
    (model / "item_ids.json").write_bytes(trap_bytes(trap))
    write_manifest(model)


def torch_save_as_safetensors(model: Path, trap: Path) -> None:
    torch.save({"trap": Trap(trap)}, model / "model.safetensors")
    write_manifest(model)


def object_npy(model: Path, trap: Path) -> None:
    np.save(model / "item_vectors.npy", np.array([Trap(trap)], dtype=object), allow_pickle=True)
    write_manifest(model)


def edit_config(model: Path, trap: Path, *, reseal: bool = False, change: Callable[[dict], None]) -> None:
    config = json.loads((model / "config.json").read_text())
    change(config)
    (model / "config.json").write_text(json.dumps(config, indent=2))
    if reseal:
        write_manifest(model)


def config_edited(model: Path, trap: Path) -> None:
    edit_config(model, trap, change=lambda c: c["model"].update(output_dim=c["model"]["output_dim"] + 1))


def config_unknown_key(model: Path, trap: Path) -> None:
    edit_config(model, trap, reseal=True, change=lambda c: c.update(loader="pickle"))


def config_wrong_type(model: Path, trap: Path) -> None:
    edit_config(model, trap, reseal=True, change=lambda c: c["model"].update(hidden_dim="32"))


def config_other_shape(model: Path, trap: Path) -> None:
    edit_config(model, trap, reseal=True, change=lambda c: c["model"].update(output_dim=c["model"]["output_dim"] + 1))


# Wider than any machine's memory: built for real, its first layer alone would be 2**31 x 64 floats (512 GiB).
HUGE = 2**31


def config_huge_layer(model: Path, trap: Path) -> None:
    edit_config(model, trap, reseal=True, change=lambda c: c["model"].update(hidden_dim=HUGE))


def config_huge_feedforward(model: Path, trap: Path) -> None:
    edit_config(model, trap, reseal=True, change=lambda c: c["model"].update(feedforward_dim=HUGE))


def weights_wrong_shape(model: Path, trap: Path) -> None:
    state = load_file(str(model / "model.safetensors"))
    name = next(name for name, tensor in state.items() if tensor.ndim == 2)
    rows, columns = state[name].shape
    state[name] = torch.zeros(rows + 1, columns, dtype=state[name].dtype)
    save_file(state, str(model / "model.safetensors"))
    write_manifest(model)


def not_lightgbm(model: Path, trap: Path) -> None:
    (model / "model.txt").write_text(f"import pathlib\npathlib.Path({str(trap)!r}).touch()\n")
    write_manifest(model)


def lightgbm_tree_edited(model: Path, trap: Path) -> None:
    """One line more in the first tree. Given to LightGBM 4.7 it calls std::terminate: the test process would die."""
    text = (model / "model.txt").read_text()
    (model / "model.txt").write_text(text.replace("Tree=0\n", "Tree=0\nextra=1\n", 1))
    write_manifest(model)


def lightgbm_other_features(model: Path, trap: Path) -> None:
    text = (model / "model.txt").read_text()
    (model / "model.txt").write_text(re.sub(r"^feature_names=(\S+)", r"feature_names=\1_renamed", text, count=1, flags=re.M))
    write_manifest(model)


def ranker_json_edited(model: Path, trap: Path) -> None:
    meta = json.loads((model / "ranker.json").read_text())
    meta["cvr_prior"] = 0.9
    (model / "ranker.json").write_text(json.dumps(meta))


def content_wrong_shape(model: Path, trap: Path) -> None:
    """The sequence tower's content buffer (the catalog's CLIP vectors) with a row too many."""
    state = load_file(str(model / "model.safetensors"))
    rows, columns = state["content"].shape
    state["content"] = torch.zeros(rows + 1, columns)
    save_file(state, str(model / "model.safetensors"))
    write_manifest(model)


def window_edited(model: Path, trap: Path) -> None:
    edit_config(model, trap, change=lambda c: c["model"].update(max_length=c["model"]["max_length"] + 1))


def covisitation_unknown_setting(model: Path, trap: Path) -> None:
    edit_config(model, trap, reseal=True, change=lambda c: c["covisitation"].update(loader="pickle"))


def manifest_missing(model: Path, trap: Path) -> None:
    (model / MANIFEST_FILE).unlink()


def file_not_listed(model: Path, trap: Path) -> None:
    (model / "notes.txt").write_text("added by hand\n")


@dataclass(frozen=True)
class Tampering:
    name: str
    model: str  # the registered model tampered with
    tamper: Callable[[Path, Path], None]
    reason: tuple[str, ...]  # what the refusal must say, besides the model and version


TWO_TOWER = [
    Tampering("pickle-file-added", RETRIEVER_MODEL, add_pickle_file, ("model.pkl", "pickle")),
    Tampering("pickle-as-item_ids.json-resealed", RETRIEVER_MODEL, pickle_under_innocent_name, ("item_ids.json", "pickle data")),
    Tampering("torch.save-as-model.safetensors-resealed", RETRIEVER_MODEL, torch_save_as_safetensors, ("model.safetensors", "data.pkl")),
    Tampering("object-npy-resealed", RETRIEVER_MODEL, object_npy, ("item_vectors.npy", "dtype object")),
    Tampering("config.json-edited", RETRIEVER_MODEL, config_edited, ("config.json", "changed after saving")),
    Tampering("config.json-unknown-key-resealed", RETRIEVER_MODEL, config_unknown_key, ("config.json", "loader", "Extra inputs")),
    Tampering("config.json-wrong-type-resealed", RETRIEVER_MODEL, config_wrong_type, ("config.json", "model.hidden_dim", "integer")),
    Tampering("config.json-other-shape-resealed", RETRIEVER_MODEL, config_other_shape, ("model.safetensors", "expected (", "found (")),
    Tampering("safetensors-wrong-shape-resealed", RETRIEVER_MODEL, weights_wrong_shape, ("model.safetensors", "tensor ", "expected (", "found (")),
    Tampering("config.json-huge-layer-resealed", RETRIEVER_MODEL, config_huge_layer, ("model.safetensors", f"expected ({HUGE}, ", "found (")),
    Tampering("model.txt-not-lightgbm-resealed", RANKER_MODEL, not_lightgbm, ("model.txt", "not a LightGBM model", "import pathlib")),
    Tampering("model.txt-tree-edited-resealed", RANKER_MODEL, lightgbm_tree_edited, ("model.txt", "tree_sizes")),
    Tampering("model.txt-other-features-resealed", RANKER_MODEL, lightgbm_other_features, ("model.txt", "feature_names")),
    Tampering("ranker.json-edited", RANKER_MODEL, ranker_json_edited, ("ranker.json", "changed after saving")),
    Tampering("manifest-missing", RETRIEVER_MODEL, manifest_missing, ("manifest.json", "missing")),
    Tampering("file-not-listed", RANKER_MODEL, file_not_listed, ("notes.txt", "not listed")),
]
# The next-item recommender's formats: a sequence retriever and a ranker of next-item candidates.
NEXT_ITEM = [
    Tampering("pickle-file-added", RETRIEVER_MODEL, add_pickle_file, ("model.pkl", "pickle")),
    Tampering("object-npy-resealed", RETRIEVER_MODEL, object_npy, ("item_vectors.npy", "dtype object")),
    Tampering("config.json-edited", RETRIEVER_MODEL, window_edited, ("config.json", "changed after saving")),
    Tampering("config.json-unknown-setting-resealed", RETRIEVER_MODEL, covisitation_unknown_setting, ("config.json", "covisitation.loader")),
    Tampering("content-wrong-shape-resealed", RETRIEVER_MODEL, content_wrong_shape, ("model.safetensors", "tensor content", "expected (", "found (")),
    Tampering("safetensors-wrong-shape-resealed", RETRIEVER_MODEL, weights_wrong_shape, ("model.safetensors", "tensor ", "expected (", "found (")),
    Tampering("config.json-huge-feedforward-resealed", RETRIEVER_MODEL, config_huge_feedforward, ("model.safetensors", f"expected ({HUGE}, ")),
    Tampering("model.txt-not-lightgbm-resealed", RANKER_MODEL, not_lightgbm, ("model.txt", "not a LightGBM model", "import pathlib")),
    Tampering("manifest-missing", RANKER_MODEL, manifest_missing, ("manifest.json", "missing")),
]


# --- The served shops, a watcher over each one's registry ---------------------------------------------


@dataclass
class Watched:
    data: DataDir
    watcher: ModelWatcher
    state: ServingState
    user: str  # a user with events, recommended to in every case


def watch(shop: DataDir, root: Path) -> Watched:
    """A copy of `shop` (its registry is moved by the tests) and a watcher serving its champions."""
    from feature_repo.store import open_store
    from vitrine.shop.store import read_events

    data = DataDir.resolve(root / "data")
    shutil.copytree(shop.root, data.root, ignore=shutil.ignore_patterns("*.partial"))
    state = ServingState()
    watcher = ModelWatcher(data, open_store(data), state)
    assert watcher.poll_once() and state.recommender is not None
    return Watched(data, watcher, state, str(read_events(data)["user_id"].value_counts().index[0]))


@pytest.fixture(scope="module")
def two_tower(tmp_path_factory: pytest.TempPathFactory) -> Watched:
    return watch(served_shop(), tmp_path_factory.mktemp("two-tower"))


@pytest.fixture(scope="module")
def next_item(tmp_path_factory: pytest.TempPathFactory) -> Watched:
    return watch(served_next_item_shop(), tmp_path_factory.mktemp("next-item"))


def healthy(watched: Watched) -> Watched:
    """The watcher serving the champions it loaded last, with no error (a failed case leaves the aliases moved)."""
    import mlflow

    loaded = watched.state.loaded
    assert loaded is not None
    configure(watched.data)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(RETRIEVER_MODEL, CHAMPION_ALIAS, loaded.retriever)
    client.set_registered_model_alias(RANKER_MODEL, CHAMPION_ALIAS, loaded.ranker)
    assert not watched.watcher.poll_once() and watched.state.last_error is None
    return watched


def champion_copy(data: DataDir, name: str, into: Path) -> Path:
    """A fresh download of `name@champion`'s directory."""
    import mlflow

    configure(data)
    source = mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION_ALIAS).source
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(into)))


def readyz(watched: Watched) -> tuple[int, dict]:
    """/readyz of the service over this serving state."""
    with TestClient(create_app(ServiceConfig(data_dir=watched.data.root, watch=False), state=watched.state)) as client:
        answer = client.get("/readyz")
    return answer.status_code, answer.json()


def refused_then_clean(case: Tampering, watched: Watched, tmp_path: Path, caplog: pytest.LogCaptureFixture, record_property) -> None:
    """Register the tampered champion: refused, said so, the previous one serving; then a clean one: served."""
    state, watcher = healthy(watched).state, watched.watcher
    assert state.recommender is not None
    before = dict(state.recommender.bundle.versions)
    clean = champion_copy(watched.data, case.model, tmp_path / "clean")
    tampered = shutil.copytree(clean, tmp_path / "tampered")
    trap = tmp_path / "unpickled"
    case.tamper(tampered, trap)
    version = register_dir(watched.data, case.model, tampered)

    with caplog.at_level(logging.WARNING, logger=WATCHER_LOG):
        assert not watcher.poll_once()
    answer = state.recommender.recommend(watched.user, k=5)
    status, body = readyz(watched)
    kept = state.recommender.bundle.versions == before and answer.versions == before and len(answer) == 5
    record_property("outcome", f"refused {case.model} v{version} ({case.name}): {(state.last_error or '')[-160:]}; "
                               f"{'previous version kept serving' if kept else 'SERVING CHANGED'}")
    record_property("versions_lost", 0 if kept else 1)

    assert kept
    assert not trap.exists(), "something unpickled the tampered file"
    assert not (watched.data.models / "ranker" / "registry" / f"v{version}").exists()  # the ranker's download is not kept
    for error in (state.last_error, body["last_error"]):
        assert error is not None and f"{case.model} v{version}" in error
        assert all(word in error for word in case.reason), error
    assert status == 200 and body["ready"] and body["versions"] == before
    logged = [r for r in caplog.records if r.name == WATCHER_LOG and r.levelno == logging.ERROR]
    assert any(f"{case.model} v{version}" in r.getMessage() and case.reason[0] in r.getMessage() for r in logged)

    # The next version, a clean copy, is served and the error clears.
    good = register_dir(watched.data, case.model, clean)
    assert watcher.poll_once()
    key = "retriever" if case.model == RETRIEVER_MODEL else "ranker"
    assert state.recommender.bundle.versions[key] in (good, f"{case.model}/{good}")
    assert state.last_error is None and readyz(watched)[1]["last_error"] is None
    assert len(state.recommender.recommend(watched.user, k=5)) == 5


@pytest.mark.parametrize("case", TWO_TOWER, ids=[case.name for case in TWO_TOWER])
def test_a_tampered_two_tower_champion_is_refused_and_the_previous_one_keeps_serving(
    case: Tampering, two_tower: Watched, tmp_path: Path, caplog: pytest.LogCaptureFixture, record_property
) -> None:
    refused_then_clean(case, two_tower, tmp_path, caplog, record_property)


@pytest.mark.parametrize("case", NEXT_ITEM, ids=[case.name for case in NEXT_ITEM])
def test_a_tampered_next_item_champion_is_refused_and_the_previous_one_keeps_serving(
    case: Tampering, next_item: Watched, tmp_path: Path, caplog: pytest.LogCaptureFixture, record_property
) -> None:
    refused_then_clean(case, next_item, tmp_path, caplog, record_property)


def test_a_service_starting_on_a_tampered_champion_is_not_ready_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, record_property
) -> None:
    data = DataDir.resolve(tmp_path / "data")
    shutil.copytree(served_shop().root, data.root, ignore=shutil.ignore_patterns("*.partial"))
    tampered = shutil.copytree(champion_copy(data, RANKER_MODEL, tmp_path / "clean"), tmp_path / "tampered")
    trap = tmp_path / "unpickled"
    add_pickle_file(tampered, trap)
    version = register_dir(data, RANKER_MODEL, tampered)

    with caplog.at_level(logging.WARNING, logger=WATCHER_LOG):
        with TestClient(create_app(ServiceConfig(data_dir=data.root, watch=False))) as client:
            answer = client.get("/readyz")
            recommend = client.get("/recommend/U-nobody")
    body = answer.json()
    record_property("outcome", f"start-up on tampered {RANKER_MODEL} v{version}: /readyz {answer.status_code}, "
                               f"/recommend {recommend.status_code}: {(body['last_error'] or '')[-120:]}")
    record_property("versions_lost", 0)
    assert answer.status_code == 503 and not body["ready"]
    assert f"{RANKER_MODEL} v{version}" in body["last_error"] and "model.pkl" in body["last_error"]
    assert recommend.status_code == 503
    assert not trap.exists() and not (data.models / "ranker" / "registry" / f"v{version}").exists()
    assert any("model.pkl" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records if r.name == WATCHER_LOG)
