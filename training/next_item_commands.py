"""`vitrine train next-item` and `vitrine evaluate next-item`, named in `vitrine.cli`, which imports them when they run."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from vitrine.errors import InvalidInput
from vitrine.options import DataDirOption, JsonOption, bar_shown, data_dir, print_json

console = Console()
PROTOCOLS = ("leave-last-out", "time")


def _config(max_epochs: int | None, max_users: int | None = None) -> Any:
    from training.train_next_item import NextItemConfig

    config = replace(NextItemConfig(), max_train_users=max_users)
    return config if max_epochs is None else replace(config, train=replace(config.train, max_epochs=max_epochs))


def train(
    epochs: Annotated[Optional[int], typer.Option(help="Train the tower exactly this many epochs (default: chosen on each user's last item).")] = None,
    rounds: Annotated[Optional[int], typer.Option(help="Boosting rounds of the ranker (default: chosen on each user's last item).")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(min=0.0, help="The ranker's learning rate with --rounds (default: the first rate the fit tries).")] = None,
    max_epochs: Annotated[Optional[int], typer.Option(min=1, help="Most epochs while choosing (default: SequenceTrainConfig).")] = None,
    max_users: Annotated[Optional[int], typer.Option(min=1, help="Train the tower on a seeded sample of this many users (default: all).")] = None,
    register: Annotated[bool, typer.Option(help="Register the tower and the ranker as vitrine-retriever and vitrine-ranker.")] = True,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fit the next-item recommender (sequence tower, co-visitation, content and popular sources, LightGBM reranker) and register it."""
    from training.train_next_item import train_next_item

    run = train_next_item(data_dir(data_dir_option), _config(max_epochs, max_users), epochs=epochs, rounds=rounds, learning_rate=learning_rate, register=register,
                          show_progress=bar_shown(not as_json))
    summary = run.summary()
    if as_json:
        print_json(summary)
        return
    tower = summary["holdout"].get("tower") or {}
    console.print(f"tower: {summary['epochs']} epochs (held-out recall@10 {tower.get('recall@10', float('nan')):.4f}); "
                  f"ranker: {summary['rounds']} rounds at {summary['learning_rate']}; candidates hold the target for {summary['holdout']['candidate_recall']:.1%}")
    console.print(f"saved {summary['model_dir']}  run {summary['run_id']}  registered {summary['versions'] or 'nothing'}")


def evaluate(
    protocol: Annotated[str, typer.Option(help="leave-last-out (each user's last item) or time (each user's next item after the latest split).")] = "leave-last-out",
    max_epochs: Annotated[Optional[int], typer.Option(min=1, help="Most tower epochs while choosing (default: SequenceTrainConfig).")] = None,
    data_dir_option: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recall and NDCG at 5/10/20 and coverage of the next-item recommender, its tower and each source alone."""
    from training.next_item_evaluation import evaluate_next_item

    if protocol not in PROTOCOLS:
        raise InvalidInput(f"--protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    report = evaluate_next_item(data_dir(data_dir_option), protocol, _config(max_epochs), show_progress=bar_shown(not as_json))
    if as_json:
        print_json(report)
        return
    table = Table("model", "recall@5", "recall@10", "ndcg@10", "recall@20", "coverage@10", title=f"next-item, {protocol}: {report['users']:,} users")
    for name, row in report["models"].items():
        test = row["test"]
        table.add_row(name, *(f"{test[m]:.4f}" for m in ("recall@5", "recall@10", "ndcg@10", "recall@20", "coverage@10")))
    console.print(table)
