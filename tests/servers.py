"""Servers the tests start on a free loopback port: the real app (`streamlit run app.py`) and, via
tests/service_fixtures.py, the HTTP service. Each is ready when its log says so (no polling)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str], ready_marker: str, log: deque,
            timeout_s: float = 180) -> Iterator[subprocess.Popen]:
    """`python <args>` in the repository with `env` added, yielded once a line of its output holds
    `ready_marker`; its output goes to `log` (so a chatty server never blocks on a full pipe)."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    ready = threading.Event()

    def drain() -> None:
        for line in proc.stdout:
            log.append(line)
            if ready_marker in line:
                ready.set()
        ready.set()  # the process ended

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not ready.wait(timeout_s) or proc.poll() is not None:
            raise RuntimeError(f"{' '.join(args[:3])} did not start:\n{''.join(log)}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def streamlit_server(**env: str) -> Iterator[str]:
    """A fresh app server (no session has run app.py yet) with `env` added; yields its URL."""
    port = free_port()
    args = ["-m", "streamlit", "run", str(REPO / "app.py"), "--server.port", str(port),
            "--server.address", "127.0.0.1", "--server.headless", "true"]
    with running(args, {"STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false", **env}, "URL:", deque(maxlen=200)):
        yield f"http://127.0.0.1:{port}"
