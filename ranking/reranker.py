"""The serving side of the LightGBM reranker: load a saved model, score a request's candidates.

A ranker directory holds three files, never a pickle:

    model.txt      the LightGBM booster in LightGBM's own text format
    ranker.json    its kind, the exact ordered feature list, label gains, training lineage and blend defaults
    manifest.json  size and sha256 of both (`ranking.artifact_check`)

`Reranker.load` refuses (`UntrustedArtifact`) a directory that holds a pickle or differs from its
manifest, a ranker.json with unknown keys or values of other types, and a model.txt that does not
read as a LightGBM model over the features ranker.json declares (`check_lightgbm_text`), before
LightGBM parses a byte of it.

Two kinds of ranker, by what their features describe (`FEATURES_OF`): `session` rankers order the
two-tower retriever's candidates for a session (`ranking.ranker_features.build_features`);
`next-item` rankers order the union of the next-item sources (`ranking.next_item`). `Reranker.load`
refuses a directory whose feature list differs from the one its kind's code produces
(ModelUnavailable naming the difference), because a booster applied to columns in another order
returns confident nonsense.

The final score (`Reranker.score`) blends relevance with conversion; the operator picks the objective:

- `engagement` (default): the LambdaRank score itself. It is trained with graded labels
  (purchase > add_to_cart > click), so it already prefers items that get bought.
- `revenue`: expected value = P(relevant) x CVR x (price / reference_price)^alpha, where
  P(relevant) is the softmax of the LambdaRank scores over the request's candidates (the model's
  belief about which candidate the user engages with), CVR is the item's smoothed 30-day
  conversion rate from the feature store, and alpha (>= 0) sets how much price counts: 0 ranks by
  expected purchases, 1 by expected revenue. Unknown CVR falls back to the training median and an
  unknown price to the reference price (the training median), so missing data is neutral.

Example:
    >>> ranker = Reranker.from_registry(DataDir.resolve(), alias="champion")
    >>> X = build_features(items, user, candidate_ids, retriever_scores)
    >>> order = np.argsort(-ranker.score(X))
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ranking.artifact_check import MAX_TREES, check_lightgbm_text, check_model_dir, parse_json, write_manifest
from ranking.next_item import FEATURE_NAMES as NEXT_ITEM_FEATURES
from ranking.path_contributions import PathContributions
from ranking.ranker_features import FEATURE_NAMES
from ranking.tree_kernel import CompiledTrees
from vitrine.errors import InvalidInput, ModelUnavailable, UntrustedArtifact
from vitrine.paths import DataDir
from vitrine.tracking import CHAMPION_ALIAS, RANKER_MODEL

MODEL_FILE = "model.txt"
META_FILE = "ranker.json"
FORMAT_VERSION = 1

# One thread per scoring call: a request scores a few hundred rows, where OpenMP's thread start-up
# and synchronisation cost more than they save, and the service runs several requests (workers) in
# parallel, so extra threads per request would only fight each other for the same cores.
SERVING_THREADS = 1

Objective = Literal["engagement", "revenue"]
OBJECTIVES: tuple[str, ...] = ("engagement", "revenue")
# Ranker kind -> the ordered features its code builds.
SESSION, NEXT_ITEM = "session", "next-item"
FEATURES_OF: dict[str, tuple[str, ...]] = {SESSION: FEATURE_NAMES, NEXT_ITEM: NEXT_ITEM_FEATURES}


@dataclass(frozen=True)
class BlendConfig:
    """How `Reranker.score` turns relevance into the final score.

    Args:
        objective: "engagement" ranks by the LambdaRank score; "revenue" by expected value
            P(relevant) x CVR x (price / reference_price)^alpha.
        alpha: price exponent of the revenue objective; 0 = expected purchases, 1 = expected revenue.
    """

    objective: Objective = "engagement"  # the default serves what users click and buy
    alpha: float = 1.0  # expected revenue when objective="revenue"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InvalidInput(f"blend objective: {self.objective!r} is not one of {OBJECTIVES}")
        if not np.isfinite(self.alpha) or self.alpha < 0:
            raise InvalidInput(f"blend alpha: {self.alpha!r} must be a finite number >= 0")


@dataclass(frozen=True)
class RankerMetadata:
    """What `ranker.json` records beside the booster.

    Args:
        feature_names: the exact ordered columns the booster was trained on.
        label_gain: gain per label grade (index = grade), as passed to LightGBM.
        reference_price: the price that counts as 1 in the revenue blend (training median).
        cvr_prior: CVR used when an item's is unknown (training median).
        best_iteration: the early-stopped iteration used for prediction.
        lineage: free-form tags (retriever version, feature service, data snapshot, git commit...).
        kind: which candidates and features it ranks (`FEATURES_OF`).
    """

    feature_names: tuple[str, ...]
    label_gain: tuple[float, ...]
    reference_price: float = 1.0
    cvr_prior: float = 0.0
    best_iteration: int = 0
    lineage: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    kind: str = SESSION

    def to_json(self) -> str:
        payload = asdict(self)
        payload["feature_names"] = list(self.feature_names)
        payload["label_gain"] = list(self.label_gain)
        return json.dumps(payload, indent=2, sort_keys=True)


def feature_list_difference(saved: tuple[str, ...], expected: tuple[str, ...] = FEATURE_NAMES) -> str | None:
    """A human description of how `saved` differs from `expected`, None when they are identical."""
    if tuple(saved) == tuple(expected):
        return None
    missing = [name for name in expected if name not in saved]
    extra = [name for name in saved if name not in expected]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unknown {extra}")
    if not parts:
        moved = [f"{name} at {saved.index(name)} (expected {i})" for i, name in enumerate(expected) if saved[i] != name]
        parts.append(f"same features in another order: {moved[:5]}")
    return "; ".join(parts)


def save_ranker(booster: Any, directory: Path, metadata: RankerMetadata) -> Path:
    """Write `model.txt` (LightGBM text, best iteration) and `ranker.json` into `directory`.

    Args:
        booster: a trained `lightgbm.Booster` whose feature names equal `metadata.feature_names`.
        directory: created when missing; existing files are replaced.
        metadata: feature list, gains and lineage.
    """
    names = tuple(booster.feature_name())
    difference = feature_list_difference(names, metadata.feature_names)
    if difference is not None:
        raise InvalidInput(f"ranker: booster features differ from the metadata: {difference}")
    directory.mkdir(parents=True, exist_ok=True)
    iteration = metadata.best_iteration if metadata.best_iteration > 0 else None
    booster.save_model(str(directory / MODEL_FILE), num_iteration=iteration)
    (directory / META_FILE).write_text(metadata.to_json() + "\n")
    write_manifest(directory)
    return directory


class Reranker:
    """A loaded LightGBM ranker plus its blend: `score(features) -> np.ndarray`.

    Args:
        booster: the LightGBM booster (loaded from text).
        metadata: what `ranker.json` says.
        version: an identifier shown in logs and /metrics (registry version, or a content hash).
        blend: how relevance and conversion combine (see the module docstring).
    """

    def __init__(self, booster: Any, metadata: RankerMetadata, version: str, blend: BlendConfig | None = None):
        self.booster = booster
        self.metadata = metadata
        self.version = version
        self.blend = blend or BlendConfig()
        names = metadata.feature_names
        self._cvr = names.index("item_cvr_30d") if "item_cvr_30d" in names else None
        self._price = names.index("item_price") if "item_price" in names else None
        if self.blend.objective == "revenue" and (self._cvr is None or self._price is None):
            raise InvalidInput(f"blend revenue: a {metadata.kind} ranker has no conversion rate and price features to blend")
        # LightGBM's trees as arrays for a compiled walk (None: splits it does not make), and the
        # reasons' table: both built at load, so no request pays for them.
        model = booster.dump_model()
        self._trees = CompiledTrees.of(booster, model)
        self._paths = PathContributions(booster, self._trees, model)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.metadata.feature_names

    @property
    def kind(self) -> str:
        return self.metadata.kind

    @classmethod
    def load(cls, directory: str | Path, blend: BlendConfig | None = None, version: str | None = None) -> "Reranker":
        """Load `model.txt` + `ranker.json` from `directory`.

        Raises:
            ModelUnavailable: files missing or unreadable, or a feature list that is not `FEATURE_NAMES`.
            UntrustedArtifact: files that are not what `save_ranker` wrote (see the module docstring).
        """
        import lightgbm

        directory = Path(directory)
        model_path, meta_path = directory / MODEL_FILE, directory / META_FILE
        for path in (model_path, meta_path):
            if not path.is_file():
                raise ModelUnavailable(f"{path}: missing; train one with `vitrine train ranker`")
        check_model_dir(directory)
        metadata = parse_json(RankerMetadata, meta_path)
        if metadata.kind not in FEATURES_OF:
            raise ModelUnavailable(f"{meta_path}: unknown ranker kind {metadata.kind!r}; this code knows {sorted(FEATURES_OF)}")
        difference = feature_list_difference(metadata.feature_names, FEATURES_OF[metadata.kind])
        if difference is not None:
            raise ModelUnavailable(
                f"{meta_path}: the model's features differ from the ones this code builds: {difference}; "
                "retrain with `vitrine train ranker`"
            )
        try:
            text = model_path.read_text()
        except UnicodeDecodeError as exc:
            raise UntrustedArtifact(f"{model_path}: not text, so not a LightGBM model ({exc})") from exc
        # save_ranker keeps the first best_iteration trees (fewer when LightGBM stopped early: no split left).
        most = min(metadata.best_iteration, MAX_TREES) if metadata.best_iteration > 0 else MAX_TREES
        check_lightgbm_text(text, metadata.feature_names, model_path, max_trees=most)
        try:
            booster = lightgbm.Booster(model_str=text)
        except lightgbm.basic.LightGBMError as exc:
            raise UntrustedArtifact(f"{model_path}: LightGBM cannot read it ({exc})") from exc
        booster_difference = feature_list_difference(tuple(booster.feature_name()), metadata.feature_names)
        if booster_difference is not None:
            raise ModelUnavailable(f"{model_path}: booster features differ from {meta_path}: {booster_difference}")
        if version is None:
            version = "local-" + hashlib.sha256(text.encode()).hexdigest()[:12]
        return cls(booster, metadata, version, blend)

    @classmethod
    def from_registry(
        cls, data: DataDir, alias: str = CHAMPION_ALIAS, blend: BlendConfig | None = None, name: str = RANKER_MODEL
    ) -> "Reranker":
        """Load the registered `vitrine-ranker@alias` (downloaded once into `data/models/ranker/registry/`).

        Raises:
            ModelUnavailable: no such alias, or its files do not load.
            UntrustedArtifact: its files are not what `save_ranker` wrote; the download is deleted.
        """
        import mlflow
        from mlflow.exceptions import MlflowException

        from vitrine.tracking import configure

        configure(data)
        client = mlflow.MlflowClient()
        try:
            model_version = client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            raise ModelUnavailable(f"model registry: no {name}@{alias} ({exc.message}); run `vitrine train ranker`") from exc
        local = data.models / "ranker" / "registry" / f"v{model_version.version}"
        if not (local / META_FILE).is_file() or not (local / MODEL_FILE).is_file():
            local.mkdir(parents=True, exist_ok=True)
            try:
                mlflow.artifacts.download_artifacts(artifact_uri=model_version.source, dst_path=str(local))
            except (MlflowException, OSError) as exc:
                raise ModelUnavailable(f"{name} version {model_version.version}: cannot fetch {model_version.source} ({exc})") from exc
            nested = local / Path(str(model_version.source).rstrip("/")).name
            if not (local / META_FILE).is_file() and (nested / META_FILE).is_file():
                for path in nested.iterdir():
                    path.replace(local / path.name)
                nested.rmdir()
        try:
            return cls.load(local, blend=blend, version=f"{name}/{model_version.version}")
        except UntrustedArtifact as exc:
            shutil.rmtree(local, ignore_errors=True)  # no refused file (a pickle, say) stays in the data dir
            raise UntrustedArtifact(f"{name} v{model_version.version}: {exc}") from exc

    def with_blend(self, blend: BlendConfig) -> "Reranker":
        """The same model with another blend (no reload, and the contribution table is shared)."""
        if blend.objective == "revenue" and (self._cvr is None or self._price is None):
            raise InvalidInput(f"blend revenue: a {self.kind} ranker has no conversion rate and price features to blend")
        other = copy.copy(self)
        other.blend = blend
        return other

    def relevance(self, features: np.ndarray) -> np.ndarray:
        """The LambdaRank score of each row (higher = more relevant), float64 (n,)."""
        return self.relevance_and_leaves(features)[0]

    def relevance_and_leaves(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`relevance`, and [n, trees] the leaf each row reached in each tree (None when LightGBM scored them)."""
        features = self._check(features)
        if len(features) == 0:
            return np.empty(0, dtype=np.float64), None
        if self._trees is not None:  # the same scores to the last bit (`ranking.tree_kernel`), 1.6x faster
            return self._trees.predict(features)
        # float64 in: LightGBM converts float32 input row by row, which cost 0.3 ms of the 0.9 ms scoring 260 rows.
        return np.asarray(self.booster.predict(features.astype(np.float64), num_threads=SERVING_THREADS), dtype=np.float64), None

    def contributions(self, features: np.ndarray, leaves: np.ndarray | None = None) -> np.ndarray:
        """[n, features] contribution of each feature to each row's relevance (see `ranking.path_contributions`).

        `leaves`: the rows' leaves from `relevance_and_leaves`, when the caller scored them already.
        """
        features = self._check(features)
        if len(features) == 0:
            return np.zeros((0, len(self.feature_names)))
        return self._paths(features, leaves)

    def score(self, features: np.ndarray) -> np.ndarray:
        """The final score of each candidate of ONE request (rows from `build_features`), higher first.

        Args:
            features: float32 (n, len(feature_names)) for the candidates of a single request
                (the revenue blend normalises relevance over the request's candidates).
        """
        relevance = self.relevance(features)
        if self.blend.objective == "engagement" or len(relevance) == 0:
            return relevance
        return self.expected_value(relevance, features)

    def expected_value(self, relevance: np.ndarray, features: np.ndarray) -> np.ndarray:
        """P(relevant) x CVR x (price / reference_price)^alpha for one request's candidates."""
        shifted = np.exp(relevance - relevance.max())
        p_relevant = shifted / shifted.sum()
        assert self._cvr is not None and self._price is not None  # refused at construction otherwise
        cvr = features[:, self._cvr].astype(np.float64)
        cvr = np.where(np.isfinite(cvr) & (cvr > 0), cvr, max(self.metadata.cvr_prior, 1e-6))
        price = features[:, self._price].astype(np.float64)
        reference = self.metadata.reference_price if self.metadata.reference_price > 0 else 1.0
        relative = np.where(np.isfinite(price) & (price > 0), price / reference, 1.0)
        return p_relevant * cvr * relative**self.blend.alpha

    def _check(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise InvalidInput(
                f"ranker features: shape {features.shape}, expected (n, {len(self.feature_names)}) "
                f"columns {list(self.feature_names)[:3]}..."
            )
        return features


__all__ = [
    "BlendConfig",
    "FEATURES_OF",
    "FORMAT_VERSION",
    "NEXT_ITEM",
    "SESSION",
    "RankerMetadata",
    "Reranker",
    "SERVING_THREADS",
    "feature_list_difference",
    "save_ranker",
]
