"""`vitrine train retriever` and `vitrine evaluate retriever`, named in `vitrine.cli`, which imports them when they run.

Several processes: `torchrun --nproc_per_node 2 -m training.train_retriever [--epochs N]` runs the
same training code (see training.train_retriever).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from vitrine.options import DataDirOption, JsonOption, data_dir, print_json

console = Console()


def train(
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the examples (default: TrainConfig).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per batch (default: TrainConfig).")] = None,
    validation_days: Annotated[Optional[int], typer.Option(help="Last days held out for per-epoch validation.")] = None,
    history_days: Annotated[Optional[int], typer.Option(min=1, help="Learn from the last N event days only (default: the whole log).")] = None,
    id_only: Annotated[bool, typer.Option(help="Train the ID-only baseline (no CLIP vectors, no features).")] = False,
    register: Annotated[bool, typer.Option(help="Register the model as vitrine-retriever.")] = True,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train the two-tower retriever (DMP), save it, log it to MLflow and register it as vitrine-retriever."""
    from ranking.two_tower import TwoTowerConfig
    from training.train_retriever import TrainConfig, train_retriever

    config = TrainConfig()
    overrides: dict[str, Any] = {"epochs": epochs, "batch_size": batch_size, "validation_days": validation_days,
                                 "history_days": history_days}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    model = TwoTowerConfig(use_content=False, use_features=False) if id_only else TwoTowerConfig()
    run = train_retriever(data_dir(data_dir_option), config, model, register=register, show_progress=not as_json)
    summary = run.summary()
    if as_json:
        print_json(summary)
        return
    table = Table("epoch", *[k for k in summary["epochs"][-1]] if summary["epochs"] else [], title="vitrine-retriever")
    for n, figures in enumerate(summary["epochs"], start=1):
        table.add_row(str(n), *[f"{v:.4g}" for v in figures.values()])
    console.print(table)
    console.print(f"saved {summary['model_dir']}  run {summary['run_id']}  registered version {summary['version']}")


def evaluate(
    protocol: Annotated[str, typer.Option(help="time, leave-last-out or both.")] = "both",
    epochs: Annotated[Optional[int], typer.Option(help="Tower epochs (default: TrainConfig).")] = None,
    test_days: Annotated[Optional[int], typer.Option(help="Days the time protocol tests on.")] = None,
    tune_als: Annotated[bool, typer.Option(help="Grid-search ALS on an inner split.")] = True,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Popularity, ALS, ID-only and multimodal two-tower: Recall@20/100/500, NDCG@10, cold start, coverage."""
    from training.evaluate_retriever import PROTOCOLS, EvaluationConfig, evaluate_retriever, with_epochs
    from vitrine.errors import InvalidInput

    protocols = PROTOCOLS if protocol == "both" else (protocol,)
    if protocol != "both" and protocol not in PROTOCOLS:
        raise InvalidInput(f"--protocol: {protocol!r}; choose time, leave-last-out or both")
    config = with_epochs(EvaluationConfig(protocols=protocols, tune_als=tune_als), epochs)
    if test_days is not None:
        config = replace(config, test_days=test_days)
    report = evaluate_retriever(data_dir(data_dir_option), config, show_progress=not as_json)
    if as_json:
        print_json(report)
        return
    for name, result in report["protocols"].items():
        table = Table("model", "R@20", "R@100", "R@500", "NDCG@10", "cold R@100", "cold R@500", "cov@100", title=f"{name}: {result['split']}")
        for model, figures in result["models"].items():
            o, c = figures["overall"], figures["cold_start"]
            table.add_row(
                model, *[f"{o[k]:.4f}" for k in ("recall@20", "recall@100", "recall@500", "ndcg@10")],
                f"{c['recall@100']:.4f}", f"{c['recall@500']:.4f}", f"{o['coverage@100']:.3f}",
            )  # fmt: skip
        console.print(table)
