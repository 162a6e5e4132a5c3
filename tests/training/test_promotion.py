"""Champion/challenger decision and the registry alias moves (real MLflow registry on SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from training.promotion import (
    REFIT_OF_VERSION,
    MetricRule,
    PromotionPolicy,
    champion_to_evaluate,
    champion_version,
    decide,
    install_refit,
    promote,
)
from vitrine.tracking import CHALLENGER_ALIAS, CHAMPION_ALIAS, PREVIOUS_ALIAS, RANKER_MODEL, RETRIEVER_MODEL, VALIDATED_ALIAS

POLICY = PromotionPolicy()


def metrics(recall: float, ndcg: float) -> dict[str, float]:
    return {"retriever.recall_at_100": recall, "ranker.ndcg_at_10": ndcg}


def test_first_challenger_is_promoted_when_there_is_no_champion() -> None:
    decision = decide(metrics(0.1, 0.1), None, POLICY)
    assert decision.promote and decision.champion is None


def test_no_champion_and_bootstrapping_forbidden_keeps_nothing() -> None:
    assert not decide(metrics(0.1, 0.1), None, PromotionPolicy(promote_when_no_champion=False)).promote


def test_challenger_that_beats_champion_by_the_threshold_is_promoted() -> None:
    decision = decide(metrics(0.31, 0.20), metrics(0.30, 0.20), POLICY)
    assert decision.promote
    assert [o.passed for o in decision.outcomes] == [True, True]
    assert decision.outcomes[0].gain == pytest.approx(0.01)


def test_gain_below_the_threshold_keeps_the_champion() -> None:
    decision = decide(metrics(0.302, 0.25), metrics(0.300, 0.20), POLICY)
    assert not decision.promote
    assert "retriever.recall_at_100" in decision.reason


def test_better_retriever_with_a_much_worse_ranker_keeps_the_champion() -> None:
    decision = decide(metrics(0.40, 0.10), metrics(0.30, 0.20), POLICY)
    assert not decision.promote
    assert [o.metric for o in decision.outcomes if not o.passed] == ["ranker.ndcg_at_10"]


def test_small_ranker_drop_within_tolerance_still_promotes() -> None:
    assert decide(metrics(0.40, 0.195), metrics(0.30, 0.20), POLICY).promote


def test_challenger_missing_an_agreed_metric_is_not_promoted() -> None:
    decision = decide({"retriever.recall_at_100": 0.9}, metrics(0.3, 0.2), POLICY)
    assert not decision.promote


def test_lower_is_better_rule_flips_the_comparison() -> None:
    policy = PromotionPolicy(rules=(MetricRule("ranker.latency_ms", min_gain=0.0, higher_is_better=False),))
    assert decide({"ranker.latency_ms": 1.0}, {"ranker.latency_ms": 2.0}, policy).promote
    assert not decide({"ranker.latency_ms": 3.0}, {"ranker.latency_ms": 2.0}, policy).promote


def test_decision_serialises_both_metric_tables() -> None:
    text = decide(metrics(0.4, 0.2), metrics(0.3, 0.2), POLICY).to_json()
    assert '"challenger"' in text and '"champion"' in text and "0.3" in text


@pytest.fixture
def client(tmp_path: Path) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in (RETRIEVER_MODEL, RANKER_MODEL):
        registry.create_registered_model(name)
    return registry


def new_versions(client: MlflowClient, tmp_path: Path) -> dict[str, str]:
    return {
        name: str(client.create_model_version(name, source=str(tmp_path / name)).version)
        for name in (RETRIEVER_MODEL, RANKER_MODEL)
    }


def test_promote_moves_champion_and_keeps_previous_for_rollback(client: MlflowClient, tmp_path: Path) -> None:
    first = new_versions(client, tmp_path)
    assert champion_version(client, RETRIEVER_MODEL) is None
    assert promote(client, first, decide(metrics(0.2, 0.2), None, POLICY), pipeline_run_id="p1") == first

    second = new_versions(client, tmp_path)
    promote(client, second, decide(metrics(0.3, 0.2), metrics(0.2, 0.2), POLICY))
    for name in (RETRIEVER_MODEL, RANKER_MODEL):
        assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == second[name]
        assert str(client.get_model_version_by_alias(name, PREVIOUS_ALIAS).version) == first[name]
    assert client.get_model_version(RETRIEVER_MODEL, first[RETRIEVER_MODEL]).tags["pipeline_run_id"] == "p1"


def test_rejected_challenger_leaves_champion_untouched_and_is_tagged(client: MlflowClient, tmp_path: Path) -> None:
    first = new_versions(client, tmp_path)
    promote(client, first, decide(metrics(0.3, 0.2), None, POLICY))
    worse = new_versions(client, tmp_path)
    champions = promote(client, worse, decide(metrics(0.1, 0.2), metrics(0.3, 0.2), POLICY))
    assert champions == first
    for name in (RETRIEVER_MODEL, RANKER_MODEL):
        assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == first[name]
        assert str(client.get_model_version_by_alias(name, CHALLENGER_ALIAS).version) == worse[name]
        assert client.get_model_version(name, worse[name]).tags["promotion.decision"] == "rejected"


def test_champion_version_of_an_unknown_model_is_none(client: MlflowClient) -> None:
    assert champion_version(client, "vitrine-encoder") is None


def test_a_refit_serves_and_its_validated_twin_is_what_the_next_run_scores(client: MlflowClient, tmp_path: Path) -> None:
    old = new_versions(client, tmp_path)
    promote(client, old, decide(metrics(0.2, 0.2), None, POLICY))
    assert champion_to_evaluate(client) == (CHAMPION_ALIAS, "")  # not a refit: scored as it is

    challenger = new_versions(client, tmp_path)
    promote(client, challenger, decide(metrics(0.3, 0.2), metrics(0.2, 0.2), POLICY))
    refit = new_versions(client, tmp_path)
    assert install_refit(client, refit, challenger) == refit
    for name in (RETRIEVER_MODEL, RANKER_MODEL):
        assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == refit[name]
        assert str(client.get_model_version_by_alias(name, VALIDATED_ALIAS).version) == challenger[name]
        assert str(client.get_model_version_by_alias(name, PREVIOUS_ALIAS).version) == old[name]  # rollback: before this run
        assert client.get_model_version(name, refit[name]).tags[REFIT_OF_VERSION] == challenger[name]
    alias, note = champion_to_evaluate(client)
    assert alias == VALIDATED_ALIAS and "refit" in note

    # @validated no longer the refit's twin (moved by hand): the refit itself is scored, and the note says so.
    client.set_registered_model_alias(RANKER_MODEL, VALIDATED_ALIAS, old[RANKER_MODEL])
    alias, note = champion_to_evaluate(client)
    assert alias == CHAMPION_ALIAS and "not @validated" in note
