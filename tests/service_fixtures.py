"""Servers for the service tests: uvicorn in a thread or in a subprocess on 127.0.0.1, a spy backend,
and a local HTTPS receiver for signed-URL uploads. Nothing here listens beyond the loopback."""

from __future__ import annotations

import contextlib
import http.server
import socket
import ssl
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from tests.servers import free_port, running


class Spy:
    """A backend that records every protocol call and delegates to `inner`, unless `overrides`
    names a replacement for the method."""

    def __init__(self, inner: Any, **overrides: Callable[..., Any]) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.overrides = overrides
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        target = self.overrides.get(name) or getattr(self.inner, name)
        if not callable(target) or name.startswith("_"):
            return target

        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return target(*args, **kwargs)

        return recorded


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """uvicorn serving `app` on a socket bound (and listening) before the thread starts, so the
    first request cannot race the start-up; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@dataclass
class ServiceProcess:
    url: str
    key: str
    proc: subprocess.Popen
    log: deque = field(default_factory=lambda: deque(maxlen=200))

    def log_text(self) -> str:
        return "".join(self.log)


@contextlib.contextmanager
def service_process(
    env: dict[str, str], key: str, startup_timeout_s: float = 180
) -> Iterator[ServiceProcess]:
    """`python -m backend.http.service --host 127.0.0.1 --port N` in a subprocess, ready when uvicorn
    says it is running (read from its log, no polling)."""
    port = free_port()
    args = ["-m", "backend.http.service", "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    log: deque = deque(maxlen=200)
    with running(args, {**env, "FEATURESCOPE_API_KEY": key}, "Uvicorn running on", log,
                 startup_timeout_s) as proc:
        yield ServiceProcess(url=f"http://127.0.0.1:{port}", key=key, proc=proc, log=log)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    gpu_locked: bool | None = None


@contextlib.contextmanager
def https_receiver(
    tmp: Path, status: int = 200, on_request: Callable[[], bool | None] | None = None
) -> Iterator[tuple[str, ssl.SSLContext, list]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate (made by Debian's openssl) that
    records each PUT; yields (base URL, a client SSL context trusting it, the received list)."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    received: list[Received] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 (http.server's naming)
            n = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(n)
            received.append(
                Received(
                    "PUT",
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    on_request() if on_request else None,
                )
            )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    httpd.socket = server_ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(cert))
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", client_ctx, received
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
