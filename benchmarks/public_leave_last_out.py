"""Next-item recommendation under the public leave-last-out protocol: baselines, SASRec and Vitrine, as JSON.

    .venv/bin/python benchmarks/public_leave_last_out.py ../shared/data/amazon-toys-2014 --json
    .venv/bin/python benchmarks/public_leave_last_out.py ../shared/data/amazon-giftcards-2018 --json --skip-recbole
    .venv/bin/python benchmarks/public_leave_last_out.py --generate --json --work-dir /tmp/llo-demo

DATA_DIR is a shop in the data contract (items + events, CSV or Parquet) or an Amazon Reviews 2018
folder (`<Category>_5.json`, `meta_<Category>.json`, optional `images/`); `--generate` takes the
default synthetic shop instead. It goes through the project's own import and ingest into a fresh
data dir under the work dir (its MLflow store is kept, so reruns line up in one experiment), then:

1. the stored events become positive interactions (`feature_repo.sequences.positive_interactions`),
   each user's distinct items in order (`Sequences`) and the two tasks of `LeaveLastOut`;
2. rows: popularity, item-kNN and implicit ALS (`training.next_item_baselines`), RecBole's SASRec
   (`benchmarks/recbole_sasrec.py`, on the split written as files; `--skip-recbole` leaves it out);
3. Vitrine: the held-in events (every event but each scored user's test item) become a shop of
   their own, `vitrine pipeline run` trains, evaluates, promotes and refits on it as on any shop,
   and `Recommender.recommend_batch` serves every scored user as of the day after the held-in
   events (`--as-of`): that list is the `vitrine` row. The ablation rows read the same served
   models: the tower's list alone, each source alone, and their union without the reranker
   (`training.next_item_evaluation.system_rows`);
4. per row: the test figures of `evaluate_lists`, the validation Recall@10/NDCG@10 of the chosen
   setting, the setting, seconds; the best baseline by test Recall@10 and Vitrine's lift over it.

Only the JSON goes to stdout (everything else, library output included, goes to stderr; progress
bars only on a terminal). With `--tracking` the figures, the report and a recall@K plot go to
MLflow, experiment `public-leave-last-out` of the work dir's data dir (`vitrine.tracking`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import pandas as pd
import typer

from feature_repo.sequences import Sequences, positive_interactions
from training.leave_last_out import CUTOFFS, MIN_ITEMS, LeaveLastOut, Task, evaluate_lists
from training.next_item_baselines import LIST_DEPTH, run_baselines
from vitrine.options import print_json
from vitrine.paths import DataDir
from vitrine.shop.store import read_events, read_items

EXPERIMENT = "public-leave-last-out"
# The row Vitrine's lift is measured for, and the word no baseline's name may contain.
VITRINE_ROW = "vitrine"
# Name of the default synthetic shop in the report (vitrine.shop.generate.DEMO).
GENERATED_NAME = "synthetic-demo"
# Where a work dir goes without --work-dir: one per data set, so reruns replace their own shop.
DEFAULT_WORK_ROOT = Path(tempfile.gettempdir()) / "vitrine-public-leave-last-out"
PROTOCOL = {
    "name": "leave-last-out",
    "sequence": "each user's distinct positive items in the order first met (timestamp, then log order)",
    "test": "target = last item, history = all before it",
    "validation": "target = second to last item, history = all before it; settings are chosen here only",
    "refit": "the chosen setting is refit on every user's test history, then scored on the test targets",
    "scored_users": f"users with at least {MIN_ITEMS} items (shorter users only train)",
    "ranking": "full ranking over the whole catalog, the user's history excluded",
    "metrics": f"ranx Recall and NDCG at {', '.join(map(str, CUTOFFS))}, one target per user; catalog coverage of the top-10 lists",
}

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to stderr for the duration (libraries print; stdout carries only the JSON)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def is_amazon_reviews(source: Path) -> bool:
    """An Amazon Reviews 2018 folder: `<Category>_5.json` and `meta_<Category>.json`."""
    return any(source.glob("*_5.json")) and any(source.glob("meta_*.json"))


def fresh_data_dir(work: Path) -> DataDir:
    """`work/data` emptied of any earlier shop; its MLflow store stays."""
    data = DataDir.resolve(work / "data")
    if data.root.exists():
        for child in data.root.iterdir():
            if child != data.mlflow:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    return data


def load_shop(data: DataDir, source: Path | None, show_progress: bool) -> dict[str, Any]:
    """Import or generate the shop into `data` through the project's own ingest; what it did."""
    from vitrine.shop.ingest import ingest

    if source is None:
        from vitrine.shop.generate import generate_shop
        from vitrine.shop.spec import DEMO

        generated = generate_shop(data, DEMO, progress=show_progress)
        return {"kind": "generated", "spec": asdict(DEMO), "generate": generated, "ingest": ingest(data).to_dict()}
    if is_amazon_reviews(source):
        from vitrine.shop.amazon import import_amazon_reviews

        reviews = sorted(source.glob("*_5.json"))[0]
        meta = sorted(source.glob("meta_*.json"))[0]
        images = source / "images" if (source / "images").is_dir() else None
        result = import_amazon_reviews(data, reviews, meta, images)
        return {"kind": "amazon-reviews-2018", **result.to_dict()}
    return {"kind": "contract", "ingest": ingest(data, source).to_dict()}


def ingest_summary(loaded: dict[str, Any]) -> dict[str, Any]:
    """Accepted and rejected rows per table: the part of the ingest report worth printing."""
    tables = loaded["ingest"]["tables"]
    return {name: {k: tables[name][k] for k in ("read", "accepted", "rejected", "reasons")} for name in tables}


def dataset_counts(name: str, split: LeaveLastOut, events: int) -> dict[str, Any]:
    seqs = split.sequences
    return {
        "name": name,
        "users": len(seqs.user_ids),
        "items": seqs.n_items,
        "events": events,
        "interactions": len(seqs.items),
        "scored_users": len(split.test.users),
        "mean_sequence_length": round(float(seqs.lengths.mean()), 3),
        "mean_scored_sequence_length": round(float(seqs.lengths[split.test.users].mean()), 3) if len(split.test.users) else 0.0,
    }


def headline(figures: dict[str, Any]) -> dict[str, float]:
    """Recall@10 and NDCG@10 of a figures dict."""
    return {name: figures[name] for name in ("recall@10", "ndcg@10") if name in figures}


def settings_of(config: Any) -> dict[str, Any]:
    return asdict(config) if is_dataclass(config) and not isinstance(config, type) else {}


def baseline_rows(split: LeaveLastOut, show_progress: bool) -> dict[str, dict[str, Any]]:
    rows = {}
    for name, tuned in run_baselines(split, show_progress=show_progress).items():
        rows[name] = {
            "test": evaluate_lists(tuned.test_top, split.test.targets, split.sequences.n_items),
            "validation": headline(tuned.validation),
            "settings": settings_of(tuned.config),
            "seconds": round(tuned.seconds, 1),
            "validation_grid": [{**settings_of(config), **headline(figures)} for config, figures in tuned.grid]
            if len(tuned.grid) > 1 else [],
        }
    return rows


def write_task(task: Task, folder: Path, name: str) -> None:
    """`<name>_train.tsv` (user, item, position: every user's train items) and `<name>_targets.tsv` (user, item)."""
    task.train.interactions().to_csv(folder / f"{name}_train.tsv", sep="\t", index=False)
    pd.DataFrame({"user": task.users, "item": task.targets}).to_csv(folder / f"{name}_targets.tsv", sep="\t", index=False)


def write_split(split: LeaveLastOut, folder: Path) -> Path:
    """The split as the files `benchmarks/recbole_sasrec.py` reads (integer row codes throughout)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_task(split.validation, folder, "validation")
    write_task(split.test, folder, "test")
    (folder / "n_items.txt").write_text(f"{split.sequences.n_items}\n")
    return folder


def as_lists(lists: list[list[int]]) -> np.ndarray:
    """[users, LIST_DEPTH] from per-user lists, short ones padded with -1 (a miss)."""
    top = np.full((len(lists), LIST_DEPTH), -1, dtype=np.int64)
    for row, items in zip(top, lists):
        items = list(items)[:LIST_DEPTH]
        row[: len(items)] = items
    return top


def recbole_rows(split: LeaveLastOut, split_dir: Path, cache_dir: Path | None, show_progress: bool) -> dict[str, dict[str, Any]]:
    import recbole_sasrec  # benchmarks/ is sys.path[0]

    result = recbole_sasrec.sasrec_top20(write_split(split, split_dir), cache_dir or recbole_sasrec.DEFAULT_CACHE,
                                         show_progress=show_progress)
    n_items, targets = split.sequences.n_items, split.test.targets
    common = {"validation": headline(result["validation"]), "settings": result["settings"], "seconds": result["seconds"]}
    return {
        "sasrec_recbole": {"test": evaluate_lists(as_lists(result["top20_refit"]), targets, n_items), **common},
        "sasrec_recbole_before_refit": {"test": evaluate_lists(as_lists(result["top20_before_refit"]), targets, n_items), **common},
    }


def held_in_shop(data: DataDir, split: LeaveLastOut, root: Path) -> DataDir:
    """A new data dir whose shop is `data`'s without each scored user's test item (all its events): what the served models may learn from.

    Nothing of an earlier run stays, its registry included: the pipeline starts as on a new shop.
    """
    from vitrine.shop.store import write_events, write_items

    shutil.rmtree(root, ignore_errors=True)
    served = DataDir.resolve(root / "data")
    sequences = split.sequences
    test_pairs = pd.DataFrame({"user_id": sequences.user_ids[split.test.users].astype(str),
                               "item_id": sequences.item_ids[split.test.targets].astype(str), "test": True})
    events = read_events(data)
    events = events.assign(user_id=events["user_id"].astype(str), item_id=events["item_id"].astype(str))
    marked = events.merge(test_pairs, on=["user_id", "item_id"], how="left")
    write_items(served, read_items(data))
    if data.users.exists():
        shutil.copy2(data.users, served.users)
    if data.images.exists():
        shutil.copytree(data.images, served.images, dirs_exist_ok=True)
    write_events(served, marked[marked["test"].isna()].drop(columns=["test"]))
    return served


# Users a served batch recommends for at once: a few hundred thousand candidate rows of features.
SERVE_BATCH = 1_000


def served_rows(data: DataDir, split: LeaveLastOut, root: Path, show_progress: bool) -> dict[str, dict[str, Any]]:
    """Vitrine's rows from the models `vitrine pipeline run` serves after learning from the held-in events only."""
    from ranking.recommender import Recommender
    from training.next_item_evaluation import system_rows
    from training.pipeline import PipelineConfig, run_pipeline
    from training.train_next_item import elapsed_days

    began = time.perf_counter()
    served = held_in_shop(data, split, root)
    result = run_pipeline(served, PipelineConfig(progress=show_progress))
    pipeline_seconds = {name: round(step.seconds, 1) for name, step in result.steps.items()}
    as_of = (pd.Timestamp(read_events(served)["timestamp"].max()).normalize() + pd.Timedelta(days=1)).to_pydatetime()
    recommender = Recommender.from_data(served, as_of=as_of)
    bundle = recommender.bundle
    if bundle.sources is None:
        raise RuntimeError("the pipeline served a two-tower recommender; the benchmark scores the next-item one")
    users = split.sequences.user_ids[split.test.users].astype(str).tolist()
    began_serving = time.perf_counter()
    answers = [listed for start in range(0, len(users), SERVE_BATCH)
               for listed in recommender.recommend_batch(users[start : start + SERVE_BATCH], k=LIST_DEPTH)]
    serving_seconds = time.perf_counter() - began_serving
    catalog = pd.Index(split.sequences.item_ids.astype(str))
    top = as_lists([catalog.get_indexer([r.item_id for r in listed]).tolist() for listed in answers])
    n_items = split.sequences.n_items
    # The served sources and ranker, on the same histories, for the ablation rows (in the tower's rows).
    own = pd.Index(bundle.retriever.item_ids)
    histories = [own.get_indexer(split.sequences.item_ids[h].astype(str)) for h in split.test.history()]
    histories = [h[h >= 0] for h in histories]
    targets = own.get_indexer(split.sequences.item_ids[split.test.targets].astype(str))
    # As served: the request comes at `as_of`.
    elapsed = elapsed_days(split.test.train, split.test.users, np.full(len(users), pd.Timestamp(as_of).value))
    rows = system_rows(bundle.sources, bundle.reranker.booster, histories, targets, len(own), elapsed)
    offline = rows.pop("vitrine")
    cold = sum(listed.cold_start for listed in answers)
    rows["vitrine"] = {
        "test": evaluate_lists(top, split.test.targets, n_items),
        "served": {"as_of": as_of.isoformat(), "versions": bundle.versions, "cold_start_users": cold,
                   "users_per_second": round(len(users) / max(serving_seconds, 1e-9), 1),
                   "offline_rerank_recall@10": offline["test"]["recall@10"]},
        "candidate_recall": offline["candidate_recall"], "ranker": offline["ranker"],
        "pipeline": {"seconds": pipeline_seconds, "decision": result.decision.get("reason"),
                     "epochs": result.steps["retriever"].outputs.get("epochs"), "rounds": result.steps["retriever"].outputs.get("rounds"),
                     "learning_rate": result.steps["retriever"].outputs.get("learning_rate"),
                     "ranker_rates": (result.steps["retriever"].outputs.get("holdout") or {}).get("ranker_rates"),
                     "challenger": result.steps["evaluate"].outputs.get("challenger")},
        "seconds": round(time.perf_counter() - began, 1),
    }
    return rows


def comparison(rows: dict[str, dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The best baseline by test Recall@10, and the `vitrine` row's relative lift over it."""
    baselines = {name: row for name, row in rows.items() if VITRINE_ROW not in name}
    if not baselines:
        return None, None
    name = max(baselines, key=lambda n: (baselines[n]["test"]["recall@10"], baselines[n]["test"]["ndcg@10"]))
    best = {"name": name, **headline(baselines[name]["test"])}
    if VITRINE_ROW not in rows:
        return best, None
    mine = rows[VITRINE_ROW]["test"]
    lift = {metric: round(mine[metric] / best[metric] - 1, 4) if best[metric] else None for metric in ("recall@10", "ndcg@10")}
    return best, {"over": name, **lift}


def recall_plot(rows: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """Recall@K (K = the protocol's cut-offs) of every row, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, row in rows.items():
        axis.plot(CUTOFFS, [row["test"][f"recall@{k}"] for k in CUTOFFS], marker="o", label=name,
                  linewidth=2.5 if VITRINE_ROW in name else 1.2)
    axis.set_xticks(CUTOFFS)
    axis.set_xlabel("K")
    axis.set_ylabel("test recall@K")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def log_to_mlflow(data: DataDir, report: dict[str, Any], work: Path) -> dict[str, str]:
    """One run in EXPERIMENT: lineage tags, counts and settings as params, every figure, the report and the plot."""
    import mlflow

    from vitrine.tracking import configure, lineage

    uri = configure(data, EXPERIMENT)
    dataset = report["dataset"]
    with mlflow.start_run(run_name=f"{dataset['name']}-leave-last-out") as run:
        mlflow.set_tags({**lineage(data), "dataset": dataset["name"], "protocol": PROTOCOL["name"]})
        params = {f"dataset.{k}": v for k, v in dataset.items() if k != "name"}
        for name, row in report["models"].items():
            params.update({f"{name}.{k}": v for k, v in (row.get("settings") or {}).items() if not isinstance(v, (dict, list))})
        mlflow.log_params(params)
        metrics = {}
        for name, row in report["models"].items():
            for part in ("test", "validation"):
                for metric, value in (row.get(part) or {}).items():
                    if isinstance(value, (int, float)) and metric != "users":
                        metrics[f"{name}.{part}.{metric.replace('@', '_at_')}"] = float(value)
        mlflow.log_metrics(metrics)
        mlflow.log_dict(report, "report.json")
        mlflow.log_artifact(str(recall_plot(report["models"], work / "recall_at_k.png", f"{dataset['name']}: leave-last-out")))
    return {"uri": uri, "experiment": EXPERIMENT, "run_id": run.info.run_id}


def benchmark(source: Path | None, work: Path, *, skip_recbole: bool, recbole_cache: Path | None, tracking: bool,
              show_progress: bool) -> dict[str, Any]:
    started = time.perf_counter()
    name = GENERATED_NAME if source is None else source.resolve().name
    data = fresh_data_dir(work)
    loaded = load_shop(data, source, show_progress)
    ingest_seconds = time.perf_counter() - started

    began = time.perf_counter()
    events, items = read_events(data), read_items(data)
    split = LeaveLastOut.of(Sequences.of(positive_interactions(events), items["item_id"]))
    split_seconds = time.perf_counter() - began

    # ranx compiles its numba kernels on its first call (about 30 s here): paid before any row is timed.
    evaluate_lists(np.zeros((1, LIST_DEPTH), dtype=np.int64), np.zeros(1, dtype=np.int64), 1)
    rows = baseline_rows(split, show_progress)
    notes: list[str] = []
    if not skip_recbole:
        rows.update(recbole_rows(split, work / "split", recbole_cache, show_progress))
    assert not any(VITRINE_ROW in row for row in rows), "a baseline's name must not contain 'vitrine'"
    rows.update(served_rows(data, split, work / "served", show_progress))
    best, lift = comparison(rows)
    report: dict[str, Any] = {
        "dataset": dataset_counts(name, split, len(events)),
        "source": {"path": None if source is None else str(source.resolve()), "kind": loaded["kind"],
                   "ingest": ingest_summary(loaded), "work_dir": str(work)},
        "protocol": PROTOCOL,
        "models": rows,
        "best_baseline": best,
        "vitrine_lift": lift,
        "notes": notes,
        "seconds": {"ingest": round(ingest_seconds, 1), "sequences": round(split_seconds, 1)},
    }
    if tracking:
        report["tracking"] = log_to_mlflow(data, report, work)
    report["seconds"]["total"] = round(time.perf_counter() - started, 1)
    return report


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    counts = report["dataset"]
    table = Table(title=f"{counts['name']}: {counts['scored_users']:,} scored users, {counts['items']:,} items (test)")
    for column in ("model", "recall@10", "ndcg@10", "recall@20", "ndcg@20", "val recall@10", "seconds"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, row in report["models"].items():
        test, val = row["test"], row.get("validation") or {}
        seconds = row.get("seconds")
        table.add_row(name, *(f"{test[m]:.4f}" for m in ("recall@10", "ndcg@10", "recall@20", "ndcg@20")),
                      f"{val['recall@10']:.4f}" if "recall@10" in val else "",
                      f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "")
    Console().print(table)


@app.command()
def main(
    data_dir: Annotated[Optional[Path], typer.Argument(help="A contract folder (items + events) or an Amazon Reviews 2018 folder.", exists=True, file_okay=False)] = None,
    generate: Annotated[bool, typer.Option("--generate", help="Use the default synthetic shop (`vitrine generate`) instead of DATA_DIR.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (else a table).")] = False,
    work_dir: Annotated[Optional[Path], typer.Option(help=f"Where the data dir and split files go (default {DEFAULT_WORK_ROOT}/<data set>).")] = None,
    skip_recbole: Annotated[bool, typer.Option("--skip-recbole", help="Leave out RecBole's SASRec rows.")] = False,
    recbole_cache: Annotated[Optional[Path], typer.Option(help="RecBole result cache (default: benchmarks/recbole_sasrec.py's, in the repo).")] = None,
    tracking: Annotated[bool, typer.Option("--tracking/--no-tracking", help="Log figures and the recall@K plot to MLflow.")] = True,
) -> None:
    """Next-item baselines, SASRec and Vitrine on one shop under the public leave-last-out protocol."""
    if generate == (data_dir is not None):
        raise typer.BadParameter("give DATA_DIR or --generate, not both or neither")
    work = (work_dir or DEFAULT_WORK_ROOT / (GENERATED_NAME if data_dir is None else data_dir.resolve().name)).resolve()
    work.mkdir(parents=True, exist_ok=True)
    with stdout_to_stderr():
        report = benchmark(data_dir, work, skip_recbole=skip_recbole, recbole_cache=recbole_cache, tracking=tracking,
                           show_progress=sys.stderr.isatty())
    if as_json:
        print_json(report)
    else:
        print_table(report)


if __name__ == "__main__":
    app()
