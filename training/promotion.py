"""Champion/challenger promotion in the MLflow model registry.

Serving loads `models:/vitrine-retriever@champion` and `models:/vitrine-ranker@champion`
(`ranking.service` polls the alias), so moving the alias *is* the deployment. This module has
two halves, kept apart so that the decision can be tested without a registry:

- `decide(challenger, champion, policy) -> Decision`: a pure function over two metric tables,
  both measured on the same (latest) time split by the pipeline.
- `promote(...)` / `champion_version(...)`: the registry side effects, the alias moves.
- `install_refit(...)` / `champion_to_evaluate(...)`: serving the promoted pair's refit (trained
  again through the last day), and judging it the next day by the version it was refit from.

The retriever and the ranker are promoted together, as one pair: the ranker is trained on the
retriever's scores and ranks, so a ranker next to a retriever it was not trained with would
score candidates on features whose distribution it never saw. The encoder (`vitrine-encoder`),
when the embeddings stage registers one, moves with the pair for the same reason: the retriever's
item vectors were computed with it.

Example:
    >>> policy = PromotionPolicy()
    >>> d = decide({"retriever.recall_at_100": 0.30, "ranker.ndcg_at_10": 0.20},
    ...            {"retriever.recall_at_100": 0.25, "ranker.ndcg_at_10": 0.20}, policy)
    >>> d.promote
    True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:  # mlflow is imported where the registry is used, so that `vitrine --help` stays fast
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

from vitrine.tracking import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    PREVIOUS_ALIAS,
    RANKER_MODEL,
    RETRIEVER_MODEL,
    VALIDATED_ALIAS,
)

# Tags of a refit version: the challenger version and MLflow run it is the refit of.
REFIT_OF_VERSION = "refit_of.version"
REFIT_OF_RUN = "refit_of.run_id"


@dataclass(frozen=True)
class MetricRule:
    """One agreed comparison between challenger and champion on the same split.

    The rule passes when `challenger - champion >= min_gain` (signs flipped when lower is better).
    A positive `min_gain` demands a real improvement, a negative one tolerates a small drop
    (a guard-rail metric), zero accepts a tie.
    """

    # Key in the metric tables, "<model>.<metric>" as the pipeline's evaluate step names them.
    metric: str
    # Smallest absolute improvement that counts (metrics are fractions in [0, 1]).
    min_gain: float
    # Recall/NDCG: higher is better. A latency or loss metric would set False.
    higher_is_better: bool = True


# Retrieval is judged on Recall@100, the size of the candidate list the ranker sees; half a point
# keeps evaluation noise on a small shop from flipping the champion back and forth every day.
DEFAULT_RETRIEVER_RULE = MetricRule("retriever.recall_at_100", min_gain=0.005)
# The ranker must not give back more than one point of NDCG@10 for the retriever's gain: the pair
# is promoted together, and a better retriever feeding a worse final order is not better.
DEFAULT_RANKER_RULE = MetricRule("ranker.ndcg_at_10", min_gain=-0.01)


@dataclass(frozen=True)
class PromotionPolicy:
    """What a challenger must show to replace the champion. Every rule must pass."""

    # The agreed comparisons; configurable from the pipeline config / CLI.
    rules: tuple[MetricRule, ...] = (DEFAULT_RETRIEVER_RULE, DEFAULT_RANKER_RULE)
    # With no champion yet, the first challenger is promoted (a shop must serve something).
    promote_when_no_champion: bool = True


@dataclass(frozen=True)
class RuleOutcome:
    """How one rule came out: both values, the difference and the verdict."""

    metric: str
    challenger: float | None
    champion: float | None
    gain: float | None
    min_gain: float
    passed: bool
    why: str


@dataclass(frozen=True)
class Decision:
    """The promotion decision with everything needed to audit it later."""

    promote: bool
    reason: str
    challenger: dict[str, float]
    champion: dict[str, float] | None
    outcomes: tuple[RuleOutcome, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _judge(rule: MetricRule, challenger: Mapping[str, float], champion: Mapping[str, float]) -> RuleOutcome:
    new, old = challenger.get(rule.metric), champion.get(rule.metric)
    if new is None:
        # A challenger that cannot show the agreed metric has not shown it is better.
        return RuleOutcome(rule.metric, None, old, None, rule.min_gain, False, "challenger lacks this metric")
    if old is None:
        # The champion was never measured on it (older code): nothing to beat on this rule.
        return RuleOutcome(rule.metric, new, None, None, rule.min_gain, True, "champion lacks this metric")
    gain = (new - old) if rule.higher_is_better else (old - new)
    passed = gain >= rule.min_gain
    why = f"gain {gain:+.4f} {'>=' if passed else '<'} required {rule.min_gain:+.4f}"
    return RuleOutcome(rule.metric, new, old, gain, rule.min_gain, passed, why)


def decide(
    challenger: Mapping[str, float], champion: Mapping[str, float] | None, policy: PromotionPolicy
) -> Decision:
    """Promote the challenger iff every rule of `policy` passes against the champion.

    Args:
        challenger: metrics of the newly trained models on the latest split, "<model>.<metric>" keys.
        champion: the current champion's metrics on the same split, or None when there is none.
        policy: the agreed rules.

    Example:
        >>> decide({"retriever.recall_at_100": 0.1}, None, PromotionPolicy()).promote
        True
    """
    new = {k: float(v) for k, v in challenger.items()}
    if champion is None:
        reason = "no champion yet" if policy.promote_when_no_champion else "no champion and policy forbids bootstrapping"
        return Decision(policy.promote_when_no_champion, reason, new, None)
    old = {k: float(v) for k, v in champion.items()}
    outcomes = tuple(_judge(rule, new, old) for rule in policy.rules)
    failed = [o for o in outcomes if not o.passed]
    if failed:
        reason = "kept champion: " + "; ".join(f"{o.metric} {o.why}" for o in failed)
        return Decision(False, reason, new, old, outcomes)
    return Decision(True, "challenger beats champion: " + "; ".join(f"{o.metric} {o.why}" for o in outcomes), new, old, outcomes)


def champion_version(client: "MlflowClient", model: str, alias: str = CHAMPION_ALIAS) -> "ModelVersion | None":
    """The version `model@alias` points to, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _ranker_last(models: Iterable[str]) -> list[str]:
    """Models in the order aliases move: the ranker, which serving reads last, moves last."""
    return sorted(models, key=lambda name: (name == RANKER_MODEL, name))


def promote(
    client: "MlflowClient",
    challengers: Mapping[str, str],
    decision: Decision,
    *,
    pipeline_run_id: str | None = None,
) -> dict[str, str]:
    """Apply `decision` in the registry and record it on every challenger version.

    Every challenger gets `@challenger` and a `promotion.decision` tag; when the decision is to
    promote, the old champion (if any) becomes `@previous` and each challenger becomes `@champion`.
    Aliases move one model at a time; MLflow has no multi-model transaction, so the ranker, which
    serving reads last, moves last.

    Args:
        client: registry client (tracking store of the pipeline).
        challengers: registered model name -> version just trained, e.g. {"vitrine-retriever": "3"}.
        decision: from `decide`.
        pipeline_run_id: the pipeline's parent run, tagged on every version for lineage.

    Returns:
        model name -> version that is `@champion` after the call ("" when a model has none).
    """
    order = _ranker_last(challengers)
    verdict = "promoted" if decision.promote else "rejected"
    for name in order:
        version = challengers[name]
        client.set_registered_model_alias(name, CHALLENGER_ALIAS, version)
        client.set_model_version_tag(name, version, "promotion.decision", verdict)
        client.set_model_version_tag(name, version, "promotion.reason", decision.reason[:5000])
        if pipeline_run_id:
            client.set_model_version_tag(name, version, "pipeline_run_id", pipeline_run_id)
    champions: dict[str, str] = {}
    for name in order:
        current = champion_version(client, name)
        if decision.promote:
            if current is not None and str(current.version) != str(challengers[name]):
                client.set_registered_model_alias(name, PREVIOUS_ALIAS, current.version)
            client.set_registered_model_alias(name, CHAMPION_ALIAS, challengers[name])
            champions[name] = str(challengers[name])
        else:
            champions[name] = str(current.version) if current is not None else ""
    return champions


def install_refit(client: "MlflowClient", refits: Mapping[str, str], validated: Mapping[str, str]) -> dict[str, str]:
    """Serve the refit pair: `@champion` -> each refit version, `@validated` -> the version it was refit from.

    Called after `promote` moved `@champion` to the challenger (and the old champion to `@previous`,
    which stays: rolling back means the champion before this run). Each refit version is tagged
    `promotion.decision = refit`.

    Args:
        client: registry client.
        refits: model name -> refit version, e.g. {"vitrine-retriever": "4"}.
        validated: model name -> the promoted challenger version each was refit from.

    Returns:
        model name -> version that is `@champion` after the call.
    """
    for name in _ranker_last(refits):
        client.set_registered_model_alias(name, VALIDATED_ALIAS, validated[name])
        client.set_model_version_tag(name, refits[name], "promotion.decision", "refit")
        client.set_model_version_tag(name, refits[name], REFIT_OF_VERSION, validated[name])
        client.set_registered_model_alias(name, CHAMPION_ALIAS, refits[name])
    return {name: str(refits[name]) for name in refits}


def champion_to_evaluate(
    client: "MlflowClient", models: tuple[str, ...] = (RETRIEVER_MODEL, RANKER_MODEL)
) -> tuple[str, str]:
    """The alias whose pair stands for the champion on a new split, and a note on the choice.

    A refit champion trained on the days a new split tests, so scoring it there would favour it:
    its `@validated` twin (the challenger it was refit from, which never saw them) is scored
    instead, when `@validated` is that very version for every model. Otherwise `@champion` itself.
    """
    for name in models:
        champion = champion_version(client, name)
        refit_of = champion.tags.get(REFIT_OF_VERSION) if champion is not None else None
        if not refit_of:
            return CHAMPION_ALIAS, ""
        twin = champion_version(client, name, VALIDATED_ALIAS)
        if twin is None or str(twin.version) != str(refit_of):
            return CHAMPION_ALIAS, (f"{name}@{CHAMPION_ALIAS} is a refit of v{refit_of}, which is not @{VALIDATED_ALIAS}: "
                                    "the refit itself was scored (it has seen some test days)")
    return VALIDATED_ALIAS, f"champion is a refit: its validated versions (@{VALIDATED_ALIAS}) were scored in its place"
