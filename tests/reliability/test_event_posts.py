"""POST /events: what is accepted is on disk exactly once and ingests into the shop (`vitrine ingest --live`
adds it to the days the shop's export holds, once however often it runs); a spool that cannot be written
answers 503 and the rest of the service keeps serving.

Read-only and full disks are made for real where this machine allows it:
- read-only: as a normal user, chmod 0o555 on the spool folder and 0o444 on its file (EACCES). As root
  chmod changes nothing (root ignores permission bits), so the folder is bind-mounted onto itself
  and remounted read-only (EROFS, what a read-only data dir volume gives); without the right to
  mount, that case is skipped.
- full: the day's spool file is a symlink to /dev/full, whose every write fails with ENOSPC (any
  user, no mount). As root, a 16 KiB tmpfs is also filled for real, which splits a batch half way.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from ranking.event_spool import MAX_EVENT_BATCH, SPOOL_COLUMNS, EventSpool
from ranking.model_watcher import ServingState
from ranking.service import ServiceConfig, create_app
from tests.conftest import CliRunner
from tests.servers import free_port
from tests.shops import served_shop
from vitrine.paths import DataDir

Record = Callable[[str, object], None]

# Concurrent posting: threads x posts x events. 6,000 events in a few seconds on 2 shared cores.
THREADS, POSTS_PER_THREAD, EVENTS_PER_POST = 8, 25, 30
# How long the in-process uvicorn may take to accept connections, and any one request to answer.
SERVER_START_S = 10.0
REQUEST_TIMEOUT_S = 30.0


def event(user: str, item: str, kind: str = "view", **extra: Any) -> dict[str, Any]:
    return {"user_id": user, "item_id": item, "event_type": kind, **extra}


def spooled_rows(folder: Path) -> list[dict[str, str]]:
    """Every data row of every spool file (the header checked on each file)."""
    rows = []
    for path in sorted(folder.glob("events-*.csv")):
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            assert tuple(reader.fieldnames or ()) == SPOOL_COLUMNS, path
            for row in reader:
                assert None not in row and None not in row.values(), f"{path}: a broken line {row}"
                rows.append(row)
    return rows


def offline_app(data_dir: Path, spool: Path | None = None) -> TestClient:
    """The app with no models (events need none): fast, and /readyz says 503 as it should."""
    return TestClient(create_app(ServiceConfig(data_dir=data_dir, watch=False, event_spool=spool), state=ServingState()))


def contract_shop(root: Path) -> DataDir:
    """A canonical shop made by `ingest` from contract CSVs: 10 items, 30 events on 2026-01-05."""
    from vitrine.shop.ingest import ingest

    source = root / "export"
    source.mkdir(parents=True)
    (source / "items.csv").write_text("item_id,title,price\n" + "".join(f"I{i:03d},item {i},{5 + i}\n" for i in range(10)))
    (source / "events.csv").write_text(
        ",".join(SPOOL_COLUMNS) + "\n" + "".join(f"U{i % 4:03d},I{i % 10:03d},view,2026-01-05T10:{i:02d}:00Z,,,\n" for i in range(30))
    )
    data = DataDir.resolve(root / "data")
    ingest(data, source)
    return data


def test_posted_events_ingest_into_the_shop(tmp_path: Path, record_property: Record) -> None:
    from vitrine.shop.ingest import ingest
    from vitrine.shop.store import read_events

    data = contract_shop(tmp_path)
    before = read_events(data)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    batch = [
        event("U001", "I003", "purchase", timestamp=(now - timedelta(minutes=5)).isoformat(), quantity=2, price=12.5, session_id="s-1"),
        event("U002", "I004", "add_to_cart", timestamp=(now - timedelta(minutes=4)).astimezone(timezone(timedelta(hours=2))).isoformat()),
        event("U003", "I005", "click", timestamp=(now - timedelta(minutes=3)).isoformat().replace("+00:00", "Z")),
    ]
    with offline_app(data.root) as client:
        posts = [client.post("/events", json=batch), client.post("/events", json=event("U004", "I006"))]  # a list, and one event
        metrics = client.get("/metrics").text
    assert [(p.status_code, p.json()) for p in posts] == [(202, {"accepted": 3}), (202, {"accepted": 1})]
    assert "vitrine_events_accepted_total 4.0" in metrics
    assert len(list(data.live_events.glob(f"events-*-{os.getpid()}.csv"))) == 1

    report = ingest(data, data.live, append=True)

    after = read_events(data)
    new = after[after["timestamp"] >= now - timedelta(hours=1)].sort_values("timestamp")
    lost = 4 - len(new)
    record_property("requests", 2)
    record_property("failed_requests", sum(p.status_code != 202 for p in posts))
    record_property("events_lost", lost)
    record_property("outcome", f"4 posted events ingested from the spool with append=True: {len(new)} in the shop, the older {len(before)} kept")
    assert report.tables["events"].accepted == 4 and report.tables["events"].rejected == 0
    assert len(after) == len(before) + 4  # the shop's earlier days are untouched
    assert list(new["user_id"]) == ["U001", "U002", "U003", "U004"]
    first = new.iloc[0]
    assert (first["event_type"], first["quantity"], first["price"], first["session_id"]) == ("purchase", 2.0, 12.5, "s-1")
    # The +02:00 timestamp is stored as the same moment in UTC; the event without one got the server's clock.
    assert new.iloc[1]["timestamp"] == now - timedelta(minutes=4)
    assert abs(new.iloc[3]["timestamp"] - datetime.now(timezone.utc)) < timedelta(minutes=5)


def test_live_ingest_adds_posts_to_the_exports_day_once_and_moves_past_files(
    tmp_path: Path, vitrine_cli: CliRunner, record_property: Record
) -> None:
    """`vitrine ingest --live`, twice: the export's day D keeps its events and gains the posted ones, once."""
    from vitrine.shop.store import read_events

    data = contract_shop(tmp_path)  # 30 views on 2026-01-05, from the shop's export
    day = "2026-01-05"
    # Purchases on day D posted today (a tracker that flushes late): they go to today's spool file.
    posted = [event(f"U{i % 4:03d}", f"I{i:03d}", "purchase", timestamp=f"{day}T15:{i:02d}:00Z", quantity=1, price=5.5 + i) for i in range(6)]
    with offline_app(data.root) as client:
        answer = client.post("/events", json=posted)
    today = EventSpool(data.live_events).file_for(datetime.now(timezone.utc))
    # A past day's file of a worker gone since, whose last post a crash cut in two (its price "12.5" reads "1").
    old = data.live_events / "events-2026-01-06-99999.csv"
    old.write_text(
        ",".join(SPOOL_COLUMNS) + "\n"
        + "".join(f"U00{i},I00{i},add_to_cart,{day}T16:0{i}:00.000000Z,s-{i},1.0,\n" for i in (1, 2))
        + f"U003,I007,purchase,{day}T16:09:00.000000Z,s-9,1.0,1"
    )  # fmt: skip
    export = read_events(data)

    runs = [vitrine_cli("ingest", "--live", "--data-dir", str(data.root), "--json") for _ in range(2)]
    stored = read_events(data)
    first, second = (json.loads(out)["tables"]["events"] for _, out, _ in runs)

    on_day = stored[stored["timestamp"].dt.strftime("%Y-%m-%d") == day]
    kept = [(r.user_id, r.item_id, r.event_type, r.timestamp) for r in on_day.itertuples()]
    expected = [(r.user_id, r.item_id, r.event_type, r.timestamp) for r in export.itertuples()]
    expected += [(e["user_id"], e["item_id"], "purchase", pd.Timestamp(e["timestamp"])) for e in posted]
    expected += [(f"U00{i}", f"I00{i}", "add_to_cart", pd.Timestamp(f"{day}T16:0{i}:00Z")) for i in (1, 2)]
    lost = sum(1 for row in expected if row not in kept)
    record_property("requests", 1)
    record_property("failed_requests", int(answer.status_code != 202))
    record_property("events_lost", lost)
    record_property(
        "outcome",
        f"6 posts and 2 spooled lines merged into the export's day of 30 by `ingest --live`: {len(on_day)} on the day, "
        f"{second['already_stored']} already stored on the second run, the half line one reject",
    )
    assert answer.status_code == 202 and [code for code, _, _ in runs] == [0, 0]
    assert lost == 0 and len(on_day) == len(stored) == 30 + 6 + 2  # nothing doubled, nothing else
    assert (first["new"], first["already_stored"], first["rejected"], first["reasons"]) == (8, 0, 1, {"half_written_line": 1})
    assert (second["accepted"], second["new"], second["already_stored"], second["rejected"]) == (6, 0, 6, 0)
    assert not ((stored["user_id"] == "U003") & (stored["timestamp"] == pd.Timestamp(f"{day}T16:09:00Z"))).any()
    assert today.exists() and not old.exists() and (data.live / "ingested" / old.name).exists()
    assert json.loads(runs[0][1])["moved"] == [str(data.live / "ingested" / old.name)] and json.loads(runs[1][1])["moved"] == []


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ([event("U1", "I1"), event("U2", "I2"), event("U3", "I3", timestamp="2026-05-01T12:00:00")], 422, "events[2].timestamp"),
        ([event("U1", "I1"), event("bad id!", "I2")], 422, "events[1].user_id"),
        ([event("U1", "I1", "bought")], 422, "events[0].event_type"),
        ([event("U1", "I1", "purchase", quantity=0)], 422, "events[0].quantity"),
        ([event("U1", "I1", "purchase", price=0)], 422, "events[0].price"),
        ([event("U1", "I1", "purchase", price="9.99")], 422, "events[0].price"),
        ([event("U1", "I1", colour="red")], 422, "events[0].colour"),
        ([{"user_id": "U1", "event_type": "view"}], 422, "events[0].item_id"),
        (event("U1", "I1", timestamp=1767225600), 422, "event.timestamp"),
        (event("U1", "I1", timestamp="2999-01-01T00:00:00Z"), 422, "event.timestamp"),
        (event("U1", "I1", timestamp="1969-12-31T23:59:59Z"), 422, "event.timestamp"),
        ([], 422, "empty list"),
        ("view", 422, "one event"),
        ([event("U1", f"I{i}") for i in range(MAX_EVENT_BATCH + 1)], 413, f"at most {MAX_EVENT_BATCH}"),
    ],
    ids=["naive-timestamp", "bad-id", "unknown-type", "quantity-0", "price-0", "price-as-text", "extra-field", "missing-field",
         "epoch-number", "far-future", "before-1970", "empty", "not-an-event", "batch-too-big"],
)
def test_a_bad_event_refuses_the_whole_post(tmp_path: Path, body: Any, status: int, named: str, record_property: Record) -> None:
    with offline_app(tmp_path) as client:
        answer = client.post("/events", json=body)
    record_property("requests", 1)
    record_property("failed_requests", int(answer.status_code != status))
    record_property("outcome", f"refused with {answer.status_code}: {answer.json()['detail'][:120]}")
    assert answer.status_code == status
    assert answer.json()["error"] in ("InvalidInput", "PayloadTooLarge") and named in answer.json()["detail"]
    assert spooled_rows(DataDir.resolve(tmp_path).live_events) == []  # not even the good events of the post


@contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on a loopback port, in a thread of this process; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_S
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=SERVER_START_S)


def test_concurrent_posts_are_each_spooled_exactly_once(tmp_path: Path, record_property: Record) -> None:
    spool = tmp_path / "spool"
    app = create_app(ServiceConfig(data_dir=tmp_path, watch=False, event_spool=spool), state=ServingState())

    def post_all(worker: int) -> list[tuple[int, list[str]]]:
        answers = []
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            for post in range(POSTS_PER_THREAD):
                tags = [f"t{worker}-p{post}-e{i}" for i in range(EVENTS_PER_POST)]
                body = [event(f"U{worker}", f"I{i}", session_id=tag) for i, tag in enumerate(tags)]
                answer = client.post(f"{base}/events", json=body)
                answers.append((answer.status_code, tags if answer.status_code == 202 else []))
        return answers

    with uvicorn_server(app) as base:
        with ThreadPoolExecutor(THREADS) as pool:
            answers = [a for worker in pool.map(post_all, range(THREADS)) for a in worker]

    accepted = [tag for status, tags in answers if status == 202 for tag in tags]
    counts = Counter(row["session_id"] for row in spooled_rows(spool))
    lost = sum(1 for tag in accepted if counts[tag] == 0)
    record_property("requests", len(answers))
    record_property("failed_requests", sum(status != 202 for status, _ in answers))
    record_property("events_lost", lost)
    record_property("outcome", f"{len(accepted)} events in {len(answers)} concurrent posts from {THREADS} threads: each in the spool once")
    assert all(status == 202 for status, _ in answers)
    assert len(accepted) == THREADS * POSTS_PER_THREAD * EVENTS_PER_POST
    assert lost == 0 and set(counts) == set(accepted) and max(counts.values()) == 1
    # Each post's events stay together, in order: no line of another post in between.
    tags = [row["session_id"] for row in spooled_rows(spool)]
    starts = [i for i, tag in enumerate(tags) if tag.endswith("-e0")]
    assert all(tags[s : s + EVENTS_PER_POST] == [f"{tags[s][:-3]}-e{i}" for i in range(EVENTS_PER_POST)] for s in starts)


# --- a spool that cannot be written ------------------------------------------------------------------


def _run(*command: str) -> bool:
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


@contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """`folder` (and the files in it) unwritable for this process while the block runs; yields the errno name expected."""
    if os.geteuid() != 0:
        files = list(folder.iterdir())
        for path in files:
            path.chmod(0o444)
        folder.chmod(0o555)
        try:
            yield "EACCES"
        finally:
            folder.chmod(0o755)
            for path in files:
                path.chmod(0o644)
        return
    # Root writes through permission bits; a read-only bind mount stops it as a read-only volume would.
    if not _run("mount", "--bind", str(folder), str(folder)):
        pytest.skip("running as root without the right to mount: no way to make a folder read-only here")
    try:
        if not _run("mount", "-o", "remount,bind,ro", str(folder)):
            pytest.skip("running as root; the bind mount cannot be made read-only here")
        yield "EROFS"
    finally:
        _run("umount", str(folder))


@pytest.fixture(scope="module")
def served_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    """The served shop's app (models loaded), with its spool in a folder of this module's own."""
    spool = tmp_path_factory.mktemp("spool")
    app = create_app(ServiceConfig(data_dir=served_shop().root, watch=False, event_spool=spool))
    with TestClient(app) as client:
        yield client, spool


def still_serving(client: TestClient) -> list[int]:
    """Statuses of the other endpoints: recommendations, probes, metrics."""
    from vitrine.shop.store import read_events

    user = str(read_events(served_shop())["user_id"].iloc[0])
    return [client.get(path).status_code for path in (f"/recommend/{user}?k=5", "/healthz", "/readyz", "/metrics")]


def test_a_read_only_spool_answers_503_and_the_service_keeps_serving(
    served_client: tuple[TestClient, Path], record_property: Record
) -> None:
    client, spool = served_client
    assert client.post("/events", json=event("U1", "I-before")).status_code == 202  # the folder and today's file exist

    with read_only(spool) as reason:
        refused = client.post("/events", json=[event("U1", "I-refused"), event("U2", "I-refused")])
        others = still_serving(client)
        metrics = client.get("/metrics").text
    after = client.post("/events", json=event("U1", "I-after"))

    items = [row["item_id"] for row in spooled_rows(spool)]
    record_property("requests", 3 + len(others))
    record_property("failed_requests", sum(s != 200 for s in others) + int(after.status_code != 202))
    record_property("events_lost", int("I-before" not in items) + int("I-after" not in items))
    record_property("outcome", f"read-only spool ({reason}): 503 naming it, the rest served, the next post after the fix stored")
    assert refused.status_code == 503
    assert refused.json()["error"] == "StorageUnavailable"
    assert str(spool) in refused.json()["detail"] and reason in refused.json()["detail"]
    assert f'vitrine_event_spool_failures_total{{reason="{reason}"}} 1.0' in metrics
    assert others == [200, 200, 200, 200]
    assert after.status_code == 202
    assert items.count("I-before") == 1 and items.count("I-after") == 1 and "I-refused" not in items


def test_a_full_disk_answers_503_and_the_next_post_after_it_succeeds(tmp_path: Path, record_property: Record) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    # /dev/full refuses every write with ENOSPC: the day's file, as this process names it, points there.
    today = EventSpool(spool).file_for(datetime.now(timezone.utc))
    today.symlink_to("/dev/full")
    with offline_app(tmp_path, spool) as client:
        full = client.post("/events", json=[event("U1", "I-refused")] * 3)
        today.unlink()  # space again
        after = client.post("/events", json=event("U1", "I-after"))
        metrics = client.get("/metrics").text
    record_property("requests", 2)
    record_property("failed_requests", int(after.status_code != 202))
    record_property("events_lost", int(after.status_code != 202))
    record_property("outcome", "a spool file on a full device: 503 ENOSPC naming it; the next post after space came back stored")
    assert full.status_code == 503 and "ENOSPC" in full.json()["detail"] and str(today) in full.json()["detail"]
    assert 'vitrine_event_spool_failures_total{reason="ENOSPC"} 1.0' in metrics
    assert after.status_code == 202
    assert [row["item_id"] for row in spooled_rows(spool)] == ["I-after"]


def test_a_disk_that_fills_half_way_through_a_post_leaves_no_partial_line(tmp_path: Path, record_property: Record) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    if os.geteuid() != 0 or not _run("mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(spool)):
        pytest.skip("a small tmpfs needs root and the right to mount; /dev/full covers a full disk without them")
    try:
        accepted, statuses = [], []
        with offline_app(tmp_path, spool) as client:
            for post in range(200):  # 16 KiB holds about 10 posts of 20 events
                tags = [f"p{post}-e{i}" for i in range(20)]
                answer = client.post("/events", json=[event("U1", "I1", session_id=tag) for tag in tags])
                statuses.append(answer.status_code)
                if answer.status_code != 202:
                    break
                accepted += tags
        counts = Counter(row["session_id"] for row in spooled_rows(spool))  # every line whole, or this fails
    finally:
        _run("umount", str(spool))
    record_property("requests", len(statuses))
    # Expected: 202 until the disk is full, then one 503; any other answer is a failed request.
    record_property("failed_requests", sum(s != 202 for s in statuses[:-1]) + int(statuses[-1] != 503))
    record_property("events_lost", sum(1 for tag in accepted if counts[tag] != 1))
    record_property("outcome", f"a 16 KiB tmpfs filled after {len(accepted)} events: 503, and the spool holds exactly the accepted events")
    assert statuses[-1] == 503 and len(accepted) > 0
    assert sorted(counts) == sorted(accepted) and set(counts.values()) == {1}
