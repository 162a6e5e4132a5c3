"""The repo works with the stock `feast` CLI (both configurations) and with `vitrine features`."""

from __future__ import annotations

import json
import sys

import pandas as pd
import redis
from click.testing import CliRunner as ClickRunner
from feast.cli.cli import cli as feast_cli

from feature_repo import store as fs
from feature_repo.snapshots.build import build
from tests.conftest import CliRunner
from tests.shops import HAND_MADE_DAYS as DAYS
from tests.shops import HAND_MADE_START as START
from tests.shops import hand_made
from vitrine.paths import DataDir

END = (START + pd.Timedelta(days=DAYS + 1)).strftime("%Y-%m-%dT%H:%M:%S")
BEGIN = (START - pd.Timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")


def _feast(data: DataDir, *args: str, redis_url: str | None = None) -> str:
    """Run the stock `feast` command line (Feast's own click group, in-process: a subprocess would
    spend most of its time importing Feast) from inside feature_repo/."""
    env = {"VITRINE_DATA_DIR": str(data.root), "VITRINE_REDIS": redis_url or "127.0.0.1:6379"}
    sys.modules.pop("definitions", None)  # Feast imports the repo's files by module name
    try:
        done = ClickRunner().invoke(feast_cli, ["--chdir", str(fs.REPO_DIR), *args], env=env, catch_exceptions=False)
    finally:
        sys.modules.pop("definitions", None)
    assert done.exit_code == 0, done.output
    return done.output


def test_stock_feast_cli_in_both_configurations(tmp_path, redis_db: redis.Redis) -> None:
    data = hand_made(DataDir.resolve(tmp_path))
    build(data)
    _feast(data, "apply")
    _feast(data, "materialize", BEGIN, END, "--views", "user_stats")
    assert (data.feast / "registry.db").exists() and (data.feast / "online_store.db").exists()
    # Continues the view from its last materialized end.
    assert "user_stats" in _feast(data, "materialize-incremental", END, "--views", "user_stats")
    sqlite_row = fs.online_features(fs.open_store(data, "sqlite"), "ranker", {"user_id": ["U001"]})

    url = "127.0.0.1:6379,db=13"
    _feast(data, "-f", "feature_store.redis.yaml", "apply", redis_url=url)
    _feast(data, "-f", "feature_store.redis.yaml", "materialize", BEGIN, END, "--views", "user_stats", redis_url=url)
    assert redis_db.dbsize() > 0
    redis_row = fs.online_features(fs.open_store(data, "redis"), "ranker", {"user_id": ["U001"]})
    assert sqlite_row["events_30d"].tolist() == redis_row["events_30d"].tolist() and sqlite_row["events_30d"].notna().all()


def test_vitrine_features_commands_print_json(tmp_path, redis_db: redis.Redis, vitrine_cli: CliRunner) -> None:
    data = hand_made(DataDir.resolve(tmp_path))
    code, out, err = vitrine_cli("features", "build", "--data-dir", str(data.root), "--json")
    assert code == 0, err
    assert json.loads(out)["rows"]["user_stats"] > 0
    # redis_db points $VITRINE_REDIS at the tests' private db.
    code, out, err = vitrine_cli("features", "materialize", "--data-dir", str(data.root), "--online", "redis", "--start", BEGIN,
                                 "--end", END, "--view", "item_stats", "--json")
    assert code == 0, err
    assert list(json.loads(out)["views"]) == ["item_stats"]
    assert redis_db.dbsize() == 30  # one key per item


def test_feast_ui_serves_the_registry(tmp_path) -> None:
    """`feast ui` (a real process on loopback) lists the project and its feature views."""
    import os
    import socket
    import subprocess
    import time
    import urllib.request

    data = hand_made(DataDir.resolve(tmp_path))
    build(data)
    _feast(data, "apply")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "VITRINE_DATA_DIR": str(data.root), "VITRINE_REDIS": "127.0.0.1:6379"}
    feast = os.path.join(os.path.dirname(sys.executable), "feast")
    server = subprocess.Popen(
        [feast, "ui", "--host", "127.0.0.1", "--port", str(port)],
        cwd=fs.REPO_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90  # Feast imports slowly on 2 busy cores
        projects = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/projects-list.json", timeout=2) as reply:
                    projects = json.load(reply)
                break
            except OSError:
                time.sleep(0.5)
        assert projects is not None, server.stderr.read().decode()[-2000:] if server.poll() is not None else "no answer"
        assert [p["id"] for p in projects["projects"]] == ["vitrine"]
    finally:
        server.terminate()
        server.wait(timeout=10)
