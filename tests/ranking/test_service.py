"""The HTTP service: FastAPI TestClient over the real app, and a real `vitrine serve` process on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from ranking.recommender import MAX_K
from ranking.service import ServiceConfig, create_app
from tests.servers import free_port, stop
from tests.shops import served_shop
from vitrine.paths import DataDir

# A cold uvicorn process imports torch, torchrec, Feast and MLflow and loads both models: allow for
# a busy CI machine.
SERVER_START_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def data() -> DataDir:
    return served_shop()


@pytest.fixture(scope="module")
def replayed() -> tuple[DataDir, datetime]:
    """A shop whose features end long before today (older than the ttl), and the moment to replay."""
    from tests.shops import replayed_shop

    return replayed_shop()


@pytest.fixture(scope="module")
def similar_engine(data: DataDir):
    """The embeddings stage's ProductSearch over the shop's vectors (similar() needs no text encoder)."""
    from embeddings.encode import read_item_embeddings
    from embeddings.search import ProductSearch

    item_ids, vectors, _, meta = read_item_embeddings(data)
    return ProductSearch(item_ids, vectors, encoder=None, model_version=meta.get("vitrine.model_version", "test"))


@pytest.fixture(scope="module")
def client(data: DataDir, similar_engine) -> Iterator[TestClient]:
    app = create_app(ServiceConfig(data_dir=data.root, watch=False), search_engine=similar_engine)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def known_user(client: TestClient, data: DataDir) -> str:
    from vitrine.shop.store import read_events

    for user in read_events(data)["user_id"].value_counts().index[:50]:
        if not client.get(f"/recommend/{user}?k=1").json()["cold_start"]:
            return str(user)
    raise AssertionError("no user with fresh features in the served shop")


def test_health_readiness_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "as_of": None, "stale_features": []}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] and body["last_error"] is None and set(body["versions"]) == {"retriever", "ranker", "items"}
    assert body["stale_features"] == [] and body["as_of"] is None
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/recommend/{user_id}", "/search", "/similar/{item_id}", "/healthz", "/readyz", "/metrics"} <= set(paths)


def test_recommend_returns_ranked_items(client: TestClient, known_user: str) -> None:
    response = client.get(f"/recommend/{known_user}", params={"k": 7})
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == known_user and body["k"] == 7 and not body["cold_start"] and not body["degraded"]
    assert body["reason"] is None
    assert len(body["items"]) == 7 and len({i["item_id"] for i in body["items"]}) == 7
    first = body["items"][0]
    assert first["source"] == "ranked" and first["retriever_score"] is not None and first["reasons"]
    assert [i["score"] for i in body["items"]] == sorted((i["score"] for i in body["items"]), reverse=True)


def test_reasons_can_be_skipped_and_the_ranking_stays_the_same(client: TestClient, known_user: str) -> None:
    explained = client.get(f"/recommend/{known_user}?k=5").json()["items"]
    bare = client.get(f"/recommend/{known_user}?k=5&explain=false").json()["items"]
    assert [i["item_id"] for i in bare] == [i["item_id"] for i in explained]
    assert any(i["reasons"] for i in explained) and not any(i["reasons"] for i in bare)


def test_unknown_user_gets_a_flagged_cold_start_list(client: TestClient) -> None:
    body = client.get("/recommend/U-brand-new", params={"k": 5}).json()
    assert body["cold_start"] and len(body["items"]) == 5
    assert {i["source"] for i in body["items"]} == {"popular"}


@pytest.mark.parametrize(
    "url",
    [
        "/recommend/U%201",  # space
        "/recommend/" + "a" * 65,  # overlong
        "/recommend/U1%2A",  # *
        "/recommend/..%5C..%5Cetc",  # backslashes
        "/recommend/U1%0D%0AFLUSHALL",  # CRLF injection
        "/recommend/",  # empty
        "/recommend/U1?k=0",
        f"/recommend/U1?k={MAX_K + 1}",
        "/recommend/U1?k=ten",
        "/search?q=",
        "/similar/I%20000001",
    ],
)
def test_bad_input_is_a_clear_422(client: TestClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "InvalidInput" and body["detail"]
    assert "Traceback" not in response.text


def test_similar_items_and_search_without_an_encoder(client: TestClient, data: DataDir) -> None:
    from vitrine.shop.store import read_items

    item = str(read_items(data)["item_id"].iloc[0])
    body = client.get(f"/similar/{item}", params={"k": 4}).json()
    assert len(body["items"]) == 4 and item not in {h["item_id"] for h in body["items"]}
    assert all(h["title"] for h in body["items"])
    # A well-formed id of no item is not found (404); a malformed one or a bad k is a bad request (422).
    missing = client.get("/similar/I-not-in-catalog", params={"k": 199})
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound" and "I-not-in-catalog" in missing.json()["detail"]
    assert client.get(f"/similar/{item}", params={"k": 0}).status_code == 422


def test_search_is_503_with_a_reason_when_no_encoder_is_trained(data: DataDir) -> None:
    app = create_app(ServiceConfig(data_dir=data.root, watch=False))
    with TestClient(app) as test_client:
        response = test_client.get("/search", params={"q": "red scarf"})
    assert response.status_code == 503
    assert response.json()["error"] == "ModelUnavailable" and "encoder" in response.json()["detail"]


def test_metrics_count_requests_stages_fallbacks_and_versions(client: TestClient, known_user: str) -> None:
    client.get(f"/recommend/{known_user}")
    client.get("/recommend/U-metrics-cold")
    text = client.get("/metrics").text
    assert 'vitrine_requests_total{endpoint="/recommend/{user_id}",status="200"}' in text
    assert 'vitrine_stage_latency_seconds_bucket{le="0.005",stage="retrieve"}' in text
    assert 'vitrine_request_latency_seconds_count{endpoint="/recommend/{user_id}"}' in text
    cold = [line for line in text.splitlines() if line.startswith('vitrine_fallbacks_total{reason="cold_start"}')]
    assert cold and float(cold[0].split()[-1]) >= 1
    assert "vitrine_model_info{" in text and "vitrine_ready 1.0" in text


def test_unexpected_errors_are_500_without_internals(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    recommender = client.app.state.serving.recommender  # type: ignore[attr-defined]

    def explode(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(recommender, "recommend", explode)
    response = client.get("/recommend/U1")
    assert response.status_code == 500
    assert "secret" not in response.text and "Traceback" not in response.text


def test_not_ready_until_models_exist_and_says_why(tmp_path: Path) -> None:
    app = create_app(ServiceConfig(data_dir=tmp_path / "empty", watch=False))
    with TestClient(app) as test_client:
        ready = test_client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["last_error"]
        response = test_client.get("/recommend/U1")
        assert response.status_code == 503 and response.json()["error"] == "ModelUnavailable"
        assert test_client.get("/healthz").status_code == 200


def test_real_uvicorn_process_on_loopback(data: DataDir, known_user: str) -> None:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "vitrine.cli", "serve", "--port", str(port), "--data-dir", str(data.root)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:] if server.stderr else "server exited"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.5)
        with httpx.Client(base_url=base, timeout=10) as http:
            body = http.get(f"/recommend/{known_user}", params={"k": 5}).json()
            assert len(body["items"]) == 5 and not body["cold_start"]
            latencies = []
            for _ in range(20):
                started = time.perf_counter()
                assert http.get(f"/recommend/{known_user}").status_code == 200
                latencies.append(time.perf_counter() - started)
            assert np.median(latencies) < 1.0  # sanity only; benchmarks/http_load.py measures
            assert http.get("/recommend/bad%20id").status_code == 422
    finally:
        stop(server)


def metric(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (labels matched as given, in any order, extra ones allowed)."""
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.split()[-1])
    raise AssertionError(f"no {name}{labels} in /metrics")


def test_stale_features_are_named_by_health_readiness_metrics_and_every_answer(replayed) -> None:
    data, end = replayed
    from vitrine.shop.store import read_events

    user = str(read_events(data)["user_id"].value_counts().index[0])
    with TestClient(create_app(ServiceConfig(data_dir=data.root, watch=False))) as stale:
        ready = stale.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"]  # it serves; the answers say what is wrong
        named = {view["view"]: view for view in ready.json()["stale_features"]}
        assert set(named) == {"user_stats", "user_recent_items", "item_stats"}
        assert named["user_stats"]["age_s"] > named["user_stats"]["ttl_s"] == 30 * 86_400
        assert named["user_stats"]["materialized_to"] == end.isoformat()
        health = stale.get("/healthz").json()
        assert health["status"] == "degraded" and {view["view"] for view in health["stale_features"]} == set(named)
        body = stale.get(f"/recommend/{user}", params={"k": 4}).json()
        assert body["degraded"] and body["cold_start"] and len(body["items"]) == 4
        assert "user_stats" in body["reason"] and "vitrine features materialize" in body["reason"]
        text = stale.get("/metrics").text
        assert metric(text, "vitrine_feature_age_seconds", view="user_stats") > metric(text, "vitrine_feature_ttl_seconds", view="user_stats")
        assert metric(text, "vitrine_feature_ttl_seconds", view="item_embedding") == 0

    with TestClient(create_app(ServiceConfig(data_dir=data.root, watch=False, as_of=end))) as replay:
        ready = replay.get("/readyz").json()
        assert ready["stale_features"] == [] and ready["as_of"] == end.isoformat()
        body = replay.get(f"/recommend/{user}", params={"k": 4}).json()
        assert not body["degraded"] and not body["cold_start"] and body["reason"] is None
        assert metric(replay.get("/metrics").text, "vitrine_feature_age_seconds", view="user_stats") == 0


def test_worker_config_travels_through_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`vitrine serve --workers N` rebuilds the config from VITRINE_* in each worker; a bad value is refused."""
    from prometheus_client import generate_latest

    from ranking.service import Metrics, app_from_environment
    from vitrine.errors import InvalidInput

    monkeypatch.setenv("VITRINE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("VITRINE_SERVE_WATCH", "0")
    for bad in ("0", "-5", "soon", "nan"):
        monkeypatch.setenv("VITRINE_SERVE_POLL_S", bad)
        with pytest.raises(InvalidInput, match="VITRINE_SERVE_POLL_S"):
            app_from_environment()
    monkeypatch.setenv("VITRINE_SERVE_POLL_S", "2.5")
    monkeypatch.setenv("VITRINE_AS_OF", "yesterday")
    with pytest.raises(InvalidInput, match="VITRINE_AS_OF"):
        app_from_environment()
    monkeypatch.setenv("VITRINE_AS_OF", "2026-03-02T06:00:00")  # no zone: UTC
    assert app_from_environment().state.serving.as_of == datetime(2026, 3, 2, 6, tzinfo=timezone.utc)
    monkeypatch.delenv("VITRINE_AS_OF")
    # Importing Feast switches prometheus_client into multiprocess mode, where counters of one name share
    # their value within a process: count from what earlier apps in this process left behind.
    before = load_failures(generate_latest(Metrics().registry).decode())
    with TestClient(app_from_environment()) as test_client:
        assert test_client.get("/readyz").status_code == 503
        assert load_failures(test_client.get("/metrics").text) == before + 1  # one refused start, counted once


def load_failures(metrics_text: str) -> float:
    lines = [line for line in metrics_text.splitlines() if line.startswith("vitrine_model_load_failures_total ")]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_apps_in_one_process_count_on_their_own_even_after_feast_turned_multiprocess_mode_on(tmp_path: Path, monkeypatch) -> None:
    from prometheus_client import generate_latest, values

    from ranking.service import Metrics

    # What importing feast.metrics first does: prometheus_client's values in files per pid and metric name.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    first = Metrics()
    first.events.inc(3)
    second = Metrics()  # a later app in the same process (the next test, or a reloaded app)
    second.events.inc(1)
    assert "vitrine_events_accepted_total 1.0" in generate_latest(second.registry).decode()
