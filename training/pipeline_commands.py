"""`vitrine pipeline run` (the scheduled job) and `vitrine demo` (what `make demo` runs).

Both are thin: the pipeline is `training.pipeline`, the demo is `training.demo`.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from rich.console import Console

from training.promotion import DEFAULT_RANKER_RULE, DEFAULT_RETRIEVER_RULE, MetricRule, PromotionPolicy
from vitrine.errors import InvalidInput, VitrineError
from vitrine.options import DataDirOption, JsonOption, OnlineOption, data_dir, online_store, print_json

out = Console()
err = Console(stderr=True)

SinceOption = Annotated[
    Optional[str],
    typer.Option(
        "--since",
        help="Process only data from this UTC day on: YESTERDAY or YYYY-MM-DD (ingest append, incremental "
        "features, new items). Default (or `all`): a full run.",
        show_default=False,
    ),
]
ResumeOption = Annotated[
    bool,
    typer.Option("--resume/--no-resume", help="Continue the newest unfinished run from its failed step."),
]
WaitOption = Annotated[
    float,
    typer.Option(
        "--wait",
        help="Seconds to wait for another pipeline run on the same data dir to finish. Default 0: refuse at once "
        "(exit 6), naming the running one's pid and start time.",
    ),
]
RecommenderOption = Annotated[
    str,
    typer.Option("--recommender", help="next-item (sequence tower + co-visitation + content + popular, reranked) or two-tower."),
]
RuleOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--rule",
        help="Promotion rule METRIC=MIN_GAIN (repeatable; replaces the defaults), e.g. "
        f"--rule {DEFAULT_RETRIEVER_RULE.metric}={DEFAULT_RETRIEVER_RULE.min_gain} "
        f"--rule {DEFAULT_RANKER_RULE.metric}={DEFAULT_RANKER_RULE.min_gain}. "
        "The challenger is promoted only if every metric gains at least MIN_GAIN over the champion.",
        show_default=False,
    ),
]


def parse_rules(texts: list[str] | None) -> PromotionPolicy:
    """`--rule METRIC=MIN_GAIN ...` as a policy; the default policy when none is given.

    Example:
        >>> parse_rules(["retriever.recall_at_100=0.01"]).rules[0].min_gain
        0.01
    """
    if not texts:
        return PromotionPolicy()
    rules = []
    for text in texts:
        metric, sep, gain = text.partition("=")
        try:
            rules.append(MetricRule(metric.strip(), float(gain)))
        except ValueError:
            sep = ""
        if not sep or not metric.strip():
            raise InvalidInput(f"--rule {text!r}: expected METRIC=MIN_GAIN, e.g. retriever.recall_at_100=0.005")
    return PromotionPolicy(rules=tuple(rules))


def run_command(
    data_dir_option: DataDirOption = None,
    since: SinceOption = None,
    resume: ResumeOption = True,
    rule: RuleOption = None,
    online: OnlineOption = "sqlite",
    recommender: RecommenderOption = "next-item",
    wait: WaitOption = 0.0,
    as_json: JsonOption = False,
) -> None:
    """Validate new data, embed, build + materialize features, train, evaluate, promote if better, refit.

    One run per data dir at a time: a second one refuses (or waits `--wait` seconds).
    """
    from training.pipeline import RECOMMENDERS, PipelineConfig, StepFailed, resolve_since, run_pipeline

    if recommender not in RECOMMENDERS:
        raise InvalidInput(f"--recommender: {recommender!r} is not one of {', '.join(RECOMMENDERS)}")
    data = data_dir(data_dir_option)
    config = PipelineConfig(since=resolve_since(since), resume=resume, policy=parse_rules(rule), progress=not as_json,
                            online=online_store(online), recommender=recommender, wait_s=wait)  # type: ignore[arg-type]
    try:
        result = run_pipeline(data, config)  # with --json, `vitrine.cli` keeps stdout for the JSON
    except StepFailed as failed:
        cause = failed.__cause__
        err.print(f"[bold red]error:[/] {failed}")
        if as_json:
            print_json({"failed_step": failed.step, "parent_run_id": failed.parent_run_id,
                        "state_path": str(failed.state_path), "error": str(cause)})
        sys.exit(cause.exit_code if isinstance(cause, VitrineError) else 1)
    if as_json:
        print_json(result.to_dict())
        return
    from training.demo import print_pipeline_summary

    print_pipeline_summary(out, result)


def demo_command(data_dir_option: DataDirOption = None) -> None:
    """End to end on the default shop: generate + ingest if empty, run the pipeline once, recommend."""
    from training.demo import run_demo

    run_demo(data_dir(data_dir_option), out)
