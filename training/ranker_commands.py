"""`vitrine train ranker` and `vitrine evaluate ranker`, named in `vitrine.cli`, which imports them when they run."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from vitrine.options import DataDirOption, JsonOption, data_dir, print_json

if TYPE_CHECKING:
    from training.train_ranker import RankerTrainConfig

console = Console()


def train(
    retriever_alias: Annotated[str, typer.Option("--retriever-alias", help="Registered vitrine-retriever alias whose candidates to train on.")] = "champion",
    train_days: Annotated[Optional[int], typer.Option(help="Days of training requests (default: RankerTrainConfig).")] = None,
    valid_days: Annotated[Optional[int], typer.Option(help="Last days of validation requests (early stopping).")] = None,
    candidates: Annotated[Optional[int], typer.Option(help="Retriever candidates per request.")] = None,
    max_requests: Annotated[Optional[int], typer.Option(help="Sample at most this many requests.")] = None,
    max_rounds: Annotated[Optional[int], typer.Option(help="Most boosting rounds (early stopping ends sooner).")] = None,
    inject_positives: Annotated[Optional[bool], typer.Option("--inject-positives/--no-inject-positives", help="Add missed positives (and as many random negatives) to training requests.", show_default=False)] = None,
    register: Annotated[bool, typer.Option(help="Register the model as vitrine-ranker.")] = True,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train the LightGBM LambdaRank reranker on the retriever's candidates, log it to MLflow, register it as vitrine-ranker."""
    from training.train_ranker import load_retriever, train_ranker

    data = data_dir(data_dir_option)
    config = _config(train_days, valid_days, candidates, max_requests, max_rounds, inject_positives)
    result = train_ranker(data, config, retriever=load_retriever(data, retriever_alias), register=register, progress=not as_json)
    summary = result.as_dict()
    if as_json:
        print_json(summary)
        return
    table = Table("set", "requests", "rows", "positive rows", "purchase rows", "injected rows", title="vitrine-ranker")
    for name, part in (("train", result.train_summary), ("valid", result.valid_summary)):
        table.add_row(name, *[f"{part[key]:.0f}" for key in ("requests", "rows", "positive_rows", "purchase_rows", "injected_rows")])
    console.print(table)
    console.print(
        f"best iteration {result.best_iteration}  valid NDCG@10 {result.valid_ndcg_at_10:.4f}  "
        f"saved {result.model_dir}  run {result.run_id}  registered version {result.registered_version}  ({result.seconds:.0f} s)"
    )


def evaluate(
    test_days: Annotated[Optional[int], typer.Option(help="Days after T to test on (the retriever's time protocol).")] = None,
    retriever: Annotated[str, typer.Option(help="'split': train a retriever before T here; else a registered alias.")] = "split",
    retriever_epochs: Annotated[Optional[int], typer.Option(help="Epochs of the split retriever.")] = None,
    out_of_sample: Annotated[bool, typer.Option("--out-of-sample/--in-sample", help="Train the ranker on a retriever trained before the ranker's window (default), or on the test retriever.")] = True,
    test_requests: Annotated[Optional[int], typer.Option(help="Test requests scored (a seeded sample).")] = None,
    train_days: Annotated[Optional[int], typer.Option(help="Days of ranker training requests before T.")] = None,
    candidates: Annotated[Optional[int], typer.Option(help="Retriever candidates per request.")] = None,
    max_requests: Annotated[Optional[int], typer.Option(help="Ranker training requests sampled.")] = None,
    inject_positives: Annotated[Optional[bool], typer.Option("--inject-positives/--no-inject-positives", help="Add missed positives (and as many random negatives) to training requests.", show_default=False)] = None,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Retriever order vs reranked vs popularity on identical candidate lists after the split time T."""
    from training.evaluate_ranker import RankerEvaluationConfig, evaluate_ranker

    config = RankerEvaluationConfig(train=_config(train_days, None, candidates, max_requests, None, inject_positives), retriever=retriever,
                                    retriever_epochs=retriever_epochs, out_of_sample=out_of_sample)  # fmt: skip
    if test_days is not None:
        config = replace(config, test_days=test_days)
    if test_requests is not None:
        config = replace(config, test_requests=test_requests)
    report = evaluate_ranker(data_dir(data_dir_option), config, progress=not as_json)
    if as_json:
        print_json(report)
        return
    k = report["k"]
    table = Table("order", f"NDCG@{k}", f"Recall@{k}", f"purchases@{k}", f"revenue@{k}",
                  title=f"ranker after {report['split']['cutoff']} ({report['test']['requests']} requests, {report['candidates']} candidates)")  # fmt: skip
    for name, figures in report["orders"].items():
        table.add_row(name, *[f"{figures[f'{m}_at_{k}']:.4f}" for m in ("ndcg", "recall", "purchases", "revenue")])
    console.print(table)


def _config(
    train_days: int | None,
    valid_days: int | None,
    candidates: int | None,
    max_requests: int | None,
    max_rounds: int | None,
    inject_positives: bool | None,
) -> "RankerTrainConfig":
    """RankerTrainConfig with the CLI's overrides (None keeps the default)."""
    from training.train_ranker import RankerTrainConfig

    config = RankerTrainConfig()
    dataset = config.dataset
    if candidates is not None:
        dataset = replace(dataset, candidates=candidates)
    if max_requests is not None:
        dataset = replace(dataset, max_requests=max_requests)
    if inject_positives is not None:
        dataset = replace(dataset, inject_positives=inject_positives)
    overrides = {"train_days": train_days, "valid_days": valid_days, "max_rounds": max_rounds}
    return replace(config, dataset=dataset, **{k: v for k, v in overrides.items() if v is not None})

