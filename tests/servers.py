"""Real servers the tests start on loopback: a free port, a private redis-server."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

# How long a fresh redis-server may take to answer PING (it starts in milliseconds; 5 s covers a loaded box).
REDIS_START_TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(port: int, workdir: Path) -> None:
    """A daemonised redis-server on 127.0.0.1:`port` that keeps nothing on disk; returns once it answers."""
    subprocess.run(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "yes",
         "--enable-debug-command", "local", "--dir", str(workdir)],
        check=True,
        timeout=10,
    )  # fmt: skip
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() == "PONG":
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not start on {port}")


def stop(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if `process` has not exited within `grace_s` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
