"""Faults while `vitrine serve` is under load: a real server process, real Redis, real MLflow registry.

Each case keeps two threads of requests going, breaks one thing, mends it, and checks that no request
failed, that the answers said what was wrong while it was wrong, and that the service came back
without a restart.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.reliability.load import Answer, Traffic, served, server_log
from tests.servers import free_port, start_redis
from tests.shops import replayed_shop, served_next_item_shop, tiny_next_item_config
from vitrine.paths import DataDir

pytestmark = pytest.mark.slow

# After Redis is back, the reader's breaker retries within REDIS_RETRY_AFTER_S (1 s); allow for a busy box.
RECOVERY_S = 5.0
# The Redis reader's breaker stays open this long after a failed read (REDIS_RETRY_AFTER_S), plus slack.
BREAKER_S = 1.5
# At most this share of a healthy phase's answers may come back degraded (see the test).
SPURIOUS_SHARE = 0.35
# A new champion is picked up at the next poll (0.5 s here) plus its load time.
SWAP_S = 30.0
# Load per phase: long enough for a few hundred requests on 2 shared cores.
PHASE_S = 3.0


def users(data: DataDir, n: int = 20) -> list[str]:
    from vitrine.shop.store import read_events

    counts = read_events(data)["user_id"].value_counts()
    return [str(u) for u in counts.index[:n]]


def paths_of(data: DataDir) -> list[str]:
    """Known users, an unknown one and a cold-start filter: what a shop's front end asks for."""
    known = users(data)
    return [f"/recommend/{u}?k=10" for u in known] + ["/recommend/U-never-seen?k=10", f"/recommend/{known[0]}?k=10&explain=false"]


def failed(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.status != 200]


def pair(answer: Answer) -> tuple[str, str]:
    """The (retriever, ranker) registry versions that gave an answer."""
    versions = dict(answer.versions)
    return versions.get("retriever", "").split("/")[-1], versions.get("ranker", "").split("/")[-1]


def record(record_property, answers: list[Answer], outcome: str) -> None:
    record_property("requests", len(answers))
    record_property("failed_requests", len(failed(answers)))
    record_property("outcome", outcome)


@pytest.fixture
def copy_of(tmp_path: Path):
    def copy(data: DataDir) -> DataDir:
        target = DataDir.resolve(tmp_path / "data")
        shutil.copytree(data.root, target.root, ignore=shutil.ignore_patterns("*.partial", "serve-*.log"))
        return target

    return copy


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    """A private redis-server that keeps a dump in tmp_path, so a restart comes back with its data (as in production)."""
    port = free_port()
    start_redis(port, tmp_path)
    yield port
    subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=10)


def test_redis_stopped_and_restarted_degrades_then_recovers_without_restart(copy_of, redis_port: int, tmp_path: Path, record_property) -> None:
    from feature_repo import store as feature_store

    data = copy_of(served_next_item_shop())
    env = {"VITRINE_REDIS": f"127.0.0.1:{redis_port}"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VITRINE_REDIS", env["VITRINE_REDIS"])
        feature_store.apply(data, online="redis")
        now = datetime.now(timezone.utc)
        feature_store.materialize(data, now - timedelta(days=90), now, online="redis")
    with served(data.root, env, online="redis") as base, Traffic(base, paths_of(data)) as traffic:
        # The first reads open the connections; on a busy box one may pass the 50 ms timeout and open the breaker.
        healthy_from = traffic.wait_for(lambda a: a.status == 200 and not a.degraded and "U-never" not in a.path, 0.0, 30)
        assert healthy_from is not None, "never a personalised answer"
        time.sleep(PHASE_S)  # a phase of healthy traffic
        # SHUTDOWN SAVE writes the dump a restart loads: the data survives, the connections do not.
        subprocess.run(["redis-cli", "-p", str(redis_port), "shutdown", "save"], capture_output=True, timeout=10)
        down_at = traffic.elapsed()
        assert traffic.wait_for(lambda a: a.degraded, down_at, 10) is not None, "no answer said the store was down"
        time.sleep(PHASE_S)
        start_redis(redis_port, tmp_path)
        up_at = traffic.elapsed()
        recovered = traffic.wait_for(lambda a: a.status == 200 and not a.degraded and "U-never" not in a.path, up_at, RECOVERY_S * 3)
        time.sleep(PHASE_S)
    answers = traffic.answers
    before = [a for a in answers if healthy_from + BREAKER_S <= a.at < down_at]
    during = [a for a in answers if down_at + 0.5 <= a.at < up_at]
    settled = [a for a in answers if recovered is not None and a.at >= up_at + recovered + 1.0]
    record(record_property, answers, f"{len(during)} answers while down, all degraded; recovered {recovered:.2f} s after restart"
           if recovered is not None else "did not recover")  # fmt: skip
    assert failed(answers) == [], failed(answers)[:5]
    # Not traced yet: now and then one read of a healthy phase fails ("Connection reset by peer", which the
    # Redis log does not show as a closed client) and the breaker degrades the next second of answers. A
    # phase mostly degraded is a failure; that second is recorded (README, Known gaps).
    spurious = [a for a in before if a.degraded and "U-never" not in a.path]
    record_property("degraded_while_healthy", len(spurious))
    assert before and len(spurious) <= SPURIOUS_SHARE * len(before), {(round(a.at, 2), a.reason) for a in spurious}
    assert during and all(a.degraded and a.reason for a in during), [a for a in during if not a.degraded][:3]
    assert recovered is not None and recovered <= RECOVERY_S, recovered
    assert settled and not any(a.degraded for a in settled)


def test_new_champion_mid_load_fails_no_request_and_never_mixes_versions(copy_of, record_property) -> None:
    import mlflow

    from training.promotion import _ranker_last
    from training.train_next_item import train_next_item
    from vitrine.tracking import CHAMPION_ALIAS, configure

    data = copy_of(served_next_item_shop())
    configure(data)
    client = mlflow.MlflowClient()
    old = {name: str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) for name in ("vitrine-retriever", "vitrine-ranker")}
    with served(data.root) as base, Traffic(base, paths_of(data)) as traffic:
        time.sleep(PHASE_S)
        # A new fit while the old one serves, then its aliases move one model at a time, the ranker last, as `promote` does.
        new = train_next_item(data, tiny_next_item_config(), show_progress=False).versions
        swap_at = traffic.elapsed()
        for name in _ranker_last(new):
            client.set_registered_model_alias(name, CHAMPION_ALIAS, new[name])
        new_pair = (new["vitrine-retriever"], new["vitrine-ranker"])
        swapped = traffic.wait_for(lambda a: pair(a) == new_pair, swap_at, SWAP_S)
        time.sleep(PHASE_S)
    answers = traffic.answers
    pairs = {pair(a) for a in answers if a.status == 200}
    record(record_property, answers, f"new champion served {swapped:.2f} s after the aliases moved; pairs seen: {len(pairs)}"
           if swapped is not None else "new champion never served")  # fmt: skip
    record_property("versions_lost", 0 if swapped is not None else 1)
    assert failed(answers) == [], failed(answers)[:5]
    assert swapped is not None
    old_pair = (old["vitrine-retriever"], old["vitrine-ranker"])
    assert pairs == {old_pair, new_pair}, pairs  # no answer from a retriever of one fit and a ranker of another
    last = max(a.at for a in answers if pair(a) == old_pair)
    assert all(pair(a) == new_pair for a in answers if a.at > last), "the old pair came back after the new one served"


def test_aliases_naming_two_fits_keep_the_old_pair_serving(copy_of, record_property) -> None:
    """The moment between the two alias moves of a promotion, held still: the watcher must not serve it."""
    import mlflow

    from feature_repo.store import open_store
    from ranking.model_watcher import ModelWatcher, ServingState
    from training.train_next_item import train_next_item
    from vitrine.tracking import CHAMPION_ALIAS, configure

    data = copy_of(served_next_item_shop())
    state = ServingState()
    watcher = ModelWatcher(data, open_store(data), state)
    assert watcher.poll_once() and state.recommender is not None
    serving = dict(state.recommender.bundle.versions)
    new = train_next_item(data, tiny_next_item_config(), show_progress=False).versions
    configure(data)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("vitrine-retriever", CHAMPION_ALIAS, new["vitrine-retriever"])
    assert not watcher.poll_once()
    assert state.recommender.bundle.versions == serving
    assert "waiting for both aliases to name one fit" in (state.last_error or "")
    assert len(state.recommender.recommend(users(data)[0], k=5)) == 5
    client.set_registered_model_alias("vitrine-ranker", CHAMPION_ALIAS, new["vitrine-ranker"])
    assert watcher.poll_once()
    versions = state.recommender.bundle.versions
    assert (versions["retriever"].split("/")[-1], versions["ranker"].split("/")[-1]) == (new["vitrine-retriever"], new["vitrine-ranker"])
    assert state.last_error is None
    record_property("versions_lost", 0)
    record_property("outcome", "retriever alias moved alone: refused, old pair served; ranker moved too: the new pair served")


def test_stale_features_are_flagged_under_load_and_cleared_by_materializing(copy_of, record_property) -> None:
    from feature_repo import store as feature_store

    replayed, _ = replayed_shop()
    data = copy_of(replayed)
    with served(data.root) as base, Traffic(base, paths_of(data)) as traffic:
        time.sleep(PHASE_S)
        stale = [a for a in traffic.since(0.0) if a.status == 200]
        readyz = httpx.get(f"{base}/readyz", timeout=5).json()
        # The nightly job catches up while the service serves.
        now = pd.Timestamp.now(tz="UTC").to_pydatetime()
        feature_store.materialize(data, now - timedelta(days=400), now)
        fresh_at = traffic.elapsed()
        cleared = traffic.wait_for(lambda a: a.status == 200 and not a.degraded, fresh_at, SWAP_S)
        time.sleep(PHASE_S)
    answers = traffic.answers
    settled = [a for a in answers if cleared is not None and a.at > fresh_at + cleared + 1.0]
    record(record_property, answers, f"{len(stale)} stale answers flagged; cleared {cleared:.2f} s after materializing"
           if cleared is not None else "never cleared")  # fmt: skip
    assert failed(answers) == [], failed(answers)[:5]
    assert stale and all(a.degraded and (a.reason or "").startswith("stale features") for a in stale), stale[:2]
    assert readyz["stale_features"] and readyz["ready"]
    assert cleared is not None
    assert settled and not any(a.degraded for a in settled), server_log(data.root)[-2000:]
