"""`vitrine demo` (what `make demo` runs): the whole system once, end to end, on the default shop.

1. If neither `data/shop` nor `data/incoming` holds a shop, generate the default one (`DEMO`, ending yesterday)
   into `data/incoming/`; the pipeline's `validate` step ingests it.
2. Run the training pipeline once (`training.pipeline.run_pipeline`): embed, features, Feast,
   retriever, ranker, evaluation, promotion, refit.
3. Print recommendations for a regular user (the most active one) and for a new, unknown user,
   with item titles, through the serving API (`ranking.recommender.Recommender`), in this process:
   nothing is left running.
4. Print where to look in MLflow.

Example:
    $ make demo            # or: vitrine demo --data-dir data
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pyarrow.dataset as ds
from rich.console import Console
from rich.table import Table
from rich.text import Text

from training.pipeline import PipelineConfig, PipelineResult, run_pipeline
from vitrine.paths import DataDir

# Recommendations shown per user: one screen.
DEMO_K = 10
# An id no shop has: what a first-time visitor looks like to the service.
NEW_USER_ID = "new-visitor-0001"
# Encoder epochs in the demo: the stage's default (25) took 8 of the demo's 23 minutes on the shared
# 2-core machine; the validation loss flattens after about 10 (1.78 at epoch 12 vs 1.34 at 25).
DEMO_ENCODER_EPOCHS = 10
# Ranker training requests in the demo: the default 20,000 took 8 minutes; 5,000 still gives
# LightGBM thousands of query groups.
DEMO_RANKER_REQUESTS = 5_000


def demo_config() -> PipelineConfig:
    """The pipeline as the demo runs it: the stages' defaults, with the two slowest trimmed."""
    from embeddings.train_encoder import TrainEncoderConfig
    from training.ranker_dataset import DatasetConfig
    from training.train_ranker import RankerTrainConfig

    return PipelineConfig(stage_configs={
        "encoder": TrainEncoderConfig(epochs=DEMO_ENCODER_EPOCHS),
        "ranker": RankerTrainConfig(dataset=DatasetConfig(max_requests=DEMO_RANKER_REQUESTS)),
    })


def most_active_user(data: DataDir) -> str:
    """The user with the most events: a regular with a long history."""
    table = ds.dataset(str(data.events), format="parquet", partitioning="hive").to_table(columns=["user_id"])
    counts = table.column("user_id").value_counts()
    best = max(range(len(counts)), key=lambda i: counts[i]["counts"].as_py())
    return str(counts[best]["values"].as_py())


def ensure_shop(data: DataDir, console: Console) -> dict[str, float | int] | None:
    """Generate the default shop into `data/incoming` when neither the shop nor incoming/ holds one."""
    if data.items.exists() and data.events.exists():
        console.print(f"[dim]shop already in {data.shop}: not regenerated[/]")
        return None
    if any(data.incoming.glob("items.*")):
        console.print(f"[dim]a shop waits in {data.incoming}: the pipeline ingests it[/]")
        return None
    from vitrine.shop.generate import generate_shop
    from vitrine.shop.spec import DEMO, ending_yesterday

    # The shop's history ends yesterday, as a live shop's does: serving judges features against their
    # view's ttl at the current time, so a shop that ended months ago would serve everyone cold-start.
    spec = replace(DEMO, start=ending_yesterday(DEMO.days))
    console.print(f"[bold]generating the default shop[/] ({spec.users:,} users, {spec.items:,} items, {spec.days} days "
                  f"from {spec.start}) into {data.incoming}")
    return generate_shop(data, spec, progress=True)


def print_pipeline_summary(console: Console, result: PipelineResult) -> None:
    """Step timings and the promotion decision of one pipeline run."""
    table = Table(title=f"pipeline run {result.parent_run_id}" + (" (resumed)" if result.resumed else ""))
    for column in ("step", "status", "seconds", "MLflow run"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for name, record in result.steps.items():
        status = "skipped (done before)" if name in result.skipped else record.status
        table.add_row(name, status, f"{record.seconds:.1f}", record.run_id)
    console.print(table)
    decision = result.decision
    if decision:
        verdict = "[bold green]promoted[/]" if decision.get("promote") else "[bold yellow]kept the champion[/]"
        console.print(f"promotion: {verdict}: {decision.get('reason', '')}")
        refit = result.steps["refit"].outputs if "refit" in result.steps else {}
        champions = refit.get("champions") or decision.get("champions", {})
        if champions:
            of = refit.get("refit_of", {})
            console.print("champions now: " + ", ".join(
                f"{name}@champion = v{v}" + (f" (refit of v{of[name]} on every day)" if name in of else "")
                for name, v in champions.items()))


def print_recommendations(data: DataDir, console: Console) -> None:
    """Recommendations for the most active user and for an unknown one, with titles."""
    from ranking.recommender import Recommender

    recommender = Recommender.from_data(data)
    for label, user in (("regular user", most_active_user(data)), ("new user", NEW_USER_ID)):
        recs = recommender.recommend(user, k=DEMO_K)
        flags = ", ".join(flag for flag, on in (("cold start", recs.cold_start), ("degraded", recs.degraded)) if on)
        table = Table(title=f"{label} {user}" + (f" ({flags})" if flags else ""))
        if recs.degraded and recs.reason:
            table.caption = f"degraded: {recs.reason}"
        for column in ("#", "item", "title", "score", "source", "top reason"):
            table.add_column(column)
        for position, rec in enumerate(recs, start=1):
            reason = rec.reasons[0].feature if rec.reasons else "-"
            # Shop text is shown as text: a title like "[link=...]" must not become rich markup.
            table.add_row(str(position), Text(rec.item_id), Text(rec.title), f"{rec.score:.3f}", rec.source, reason)
        console.print(table)


def print_mlflow_pointers(data: DataDir, result: PipelineResult, console: Console) -> None:
    uri = result.tracking_uri
    if uri.startswith("sqlite:///"):
        shown = Path(uri.removeprefix("sqlite:///"))
        try:
            shown = shown.relative_to(Path.cwd())
        except ValueError:
            pass
        uri = f"sqlite:///{shown}"
    console.print("\n[bold]MLflow[/]: every step is a child run of the pipeline run, with lineage tags and plots")
    console.print(f"  mlflow ui --backend-store-uri {uri}     # then open http://127.0.0.1:5000")
    console.print(f"  pipeline (parent) run: {result.parent_run_id}")
    for name, record in result.steps.items():
        console.print(f"    {name:<10} {record.run_id}")
    console.print("  registered models: vitrine-encoder, vitrine-retriever, vitrine-ranker (alias @champion)")


def run_demo(data: DataDir, console: Console, config: PipelineConfig | None = None) -> PipelineResult:
    """Generate (if needed), run the pipeline once, recommend for two users, point at MLflow."""
    began = time.perf_counter()
    ensure_shop(data, console)
    result = run_pipeline(data, config or demo_config())
    print_pipeline_summary(console, result)
    print_recommendations(data, console)
    print_mlflow_pointers(data, result, console)
    console.print(f"\ndemo finished in {time.perf_counter() - began:.0f}s; nothing left running")
    return result
