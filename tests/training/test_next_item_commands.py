"""`vitrine train next-item` and `vitrine evaluate next-item`: JSON on stdout, models in the registry."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow

from tests.conftest import CliRunner
from tests.shops import hand_made
from training.leave_last_out import METRICS
from training.train_next_item import RANKER_RATES, RANKER_ROUNDS
from vitrine.paths import DataDir
from vitrine.tracking import RANKER_MODEL, RETRIEVER_MODEL, configure


def test_train_registers_a_next_item_pair_and_evaluate_scores_every_row(tmp_path: Path, vitrine_cli: CliRunner) -> None:
    data = hand_made(DataDir.resolve(tmp_path / "data"))
    where = ("--data-dir", str(data.root), "--json")

    code, out, err = vitrine_cli("train", "next-item", "--max-epochs", "3", *where)
    assert code == 0, err
    trained = json.loads(out)
    assert set(trained["versions"]) == {RETRIEVER_MODEL, RANKER_MODEL} and 1 <= trained["epochs"] <= 3
    # The ranker within the tree budget, at the rate that scored best on its held-out requests of those tried.
    tried = trained["holdout"]["ranker_rates"]
    assert 1 <= trained["rounds"] <= RANKER_ROUNDS and list(tried) == [str(rate) for rate in RANKER_RATES[: len(tried)]]
    best = max(rate["ndcg@10"] for rate in tried.values())
    assert tried[str(trained["learning_rate"])]["ndcg@10"] == best == trained["holdout"]["ranker_valid_ndcg@10"]
    configure(data)
    for model, version in trained["versions"].items():
        assert mlflow.MlflowClient().get_model_version(model, version).tags["kind"] == "next-item"

    code, out, err = vitrine_cli("evaluate", "next-item", "--protocol", "leave-last-out", "--max-epochs", "3", *where)
    assert code == 0, err
    report = json.loads(out)
    assert report["protocol"] == "leave-last-out" and report["users"] == 40
    assert set(report["models"]) == {"vitrine", "vitrine_sequence", "vitrine_covisitation", "vitrine_popularity", "vitrine_content", "vitrine_sources_merged"}
    assert set(METRICS) | {"coverage@10"} <= set(report["models"]["vitrine"]["test"])

    code, _, err = vitrine_cli("evaluate", "next-item", "--protocol", "yesterday", *where)
    assert code == 2 and "--protocol" in err
