"""HTTP load on `vitrine serve` from a separate process, loopback only: p50/p99, throughput, errors. Prints JSON.

    python benchmarks/http_load.py --data-dir /data/scale --rate 200 --duration 30 --workers 2
    python benchmarks/http_load.py --url http://127.0.0.1:8000 --users-from /data/scale --rate 200

Without `--url` it starts `vitrine serve` on a free 127.0.0.1 port itself (and stops it at the end).
The load is open-loop: request i is due at i / rate seconds, whether or not earlier ones have answered,
and its latency counts from when it was due (so a stalled server cannot hide its queueing: no
coordinated omission). At most `--concurrency` requests are in flight; a request that would exceed
it waits and its wait counts. Each request has a `--timeout`; a timeout or any non-200 is an error.
Only loopback targets are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from recommend_latency import request_users  # benchmarks/ is sys.path[0]; it puts the repo root on the path

# Requests in flight at most: 200 req/s x 25 ms = 5 in flight when healthy; 64 leaves room for
# stalls without letting the load generator open thousands of sockets.
DEFAULT_CONCURRENCY = 64
# Per-request timeout: far above the 25 ms goal, so slow answers are measured, not dropped.
REQUEST_TIMEOUT_S = 5.0
# Waiting for a freshly started server to load its models (imports torch, Feast, MLflow).
SERVER_START_TIMEOUT_S = 300.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(data_dir: str, port: int, workers: int, online: str) -> subprocess.Popen[bytes]:
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "vitrine.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--online", online, "--data-dir", data_dir]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(base: str, server: subprocess.Popen[bytes] | None, workers: int) -> float:
    import httpx

    started = time.monotonic()
    ready_answers = 0
    while time.monotonic() - started < SERVER_START_TIMEOUT_S:
        if server is not None and server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:] if server.stderr else ''}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                ready_answers += 1
                # With several workers each loads its own models: ask a few times so that most are warm.
                if ready_answers >= 2 * workers:
                    return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{base} not ready after {SERVER_START_TIMEOUT_S} s")


def stop_server(server: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if the server has not exited within `grace_s` seconds."""
    server.terminate()
    try:
        server.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=5)


class Connections:
    """Keep-alive HTTP/1.1 connections to one loopback server, for GETs of small JSON answers.

    A hand-rolled client on purpose: the generator shares the server's 2 cores, and httpx spent about
    a millisecond of CPU per request, time taken from the server it measures. This one parses only
    the status line and Content-Length (what uvicorn sends for JSON), a few microseconds.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> int:
        reader, writer = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self.idle.append((reader, writer))
        return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def load(base: str, users: list[str], rate: float, concurrency: int, k: int, explain: bool) -> dict[str, Any]:
    target = urlparse(base)
    connections = Connections(target.hostname or "127.0.0.1", target.port or 80)
    query = f"?k={k}&explain={'true' if explain else 'false'}"
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    slots = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    origin = loop.time() + 0.1

    async def one(i: int, user: str) -> None:
        due = origin + i / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        async with slots:
            try:
                status = str(await asyncio.wait_for(connections.get(f"/recommend/{user}{query}"), REQUEST_TIMEOUT_S))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                status = type(exc).__name__
        latencies.append((loop.time() - due) * 1000.0)
        statuses[status] = statuses.get(status, 0) + 1

    began, cpu_began = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i, user) for i, user in enumerate(users)))
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu_began
    connections.close()
    array = np.asarray(latencies)
    errors = sum(count for status, count in statuses.items() if status != "200")
    return {
        "requests": len(users),
        "seconds": round(seconds, 2),
        "throughput_rps": round(len(users) / seconds, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(array, 50)), 2),
            "p90": round(float(np.percentile(array, 90)), 2),
            "p99": round(float(np.percentile(array, 99)), 2),
            "max": round(float(array.max()), 2),
        },
        "errors": errors,
        "statuses": statuses,
        # What the generator itself took from the shared cores.
        "client_cpu_ms_per_request": round(cpu_seconds * 1000.0 / len(users), 3),
    }


def run_loop(coroutine: Any) -> Any:
    """Run on uvloop (cheaper per request than asyncio's default loop), as uvicorn does."""
    import uvloop

    return uvloop.run(coroutine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="served shop; the benchmark starts `vitrine serve` on it")
    parser.add_argument("--url", help="an already running server (loopback only)")
    parser.add_argument("--users-from", help="with --url: the data dir to draw user ids from")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (open loop)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (one per core)")
    parser.add_argument("--online", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--explain", action=argparse.BooleanOptionalAction, default=True, help="ask for reasons (the API default)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON only (the default output is JSON too)")
    args = parser.parse_args()
    if not args.url and not args.data_dir:
        parser.error("give --data-dir (start a server) or --url (use a running one)")

    server = None
    if args.url:
        host = urlparse(args.url).hostname or ""
        if host not in LOOPBACK:
            parser.error(f"--url must be a loopback address, got {host!r}")
        base = args.url.rstrip("/")
        source = args.users_from or args.data_dir
        if not source:
            parser.error("--url needs --users-from DATA_DIR for user ids")
    else:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        source = args.data_dir
        server = start_server(args.data_dir, port, args.workers, args.online)
    try:
        startup = wait_ready(base, server, args.workers)
        n = int(args.rate * args.duration)
        from vitrine.paths import DataDir

        # The same traffic as the in-process benchmark: shop users plus a share of unknown ids.
        ids = request_users(DataDir.resolve(source), n + int(args.rate * args.warmup), args.seed)
        if args.warmup > 0:
            run_loop(load(base, ids[n:], args.rate, args.concurrency, args.k, args.explain))
        report = run_loop(load(base, ids[:n], args.rate, args.concurrency, args.k, args.explain))
        report.update(
            {
                "target": base,
                "rate_rps": args.rate,
                "duration_s": args.duration,
                "workers": args.workers if server else None,
                "online": args.online,
                "explain": args.explain,
                "server_start_s": round(startup, 1),
                "load_average_1m": os.getloadavg()[0],
                "cpu_count": os.cpu_count(),
            }
        )
        print(json.dumps(report, indent=2))
    finally:
        if server is not None:
            stop_server(server)


if __name__ == "__main__":
    main()
