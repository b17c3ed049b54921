"""RemoteBackend's behaviour when the service is away, busy, strict or old: timeouts, retries only
where they are safe, and errors that say what to do. Answers come from httpx.MockTransport or a
port on 127.0.0.1 that nothing listens on."""

from __future__ import annotations

import socket

import httpx
import pytest

from backend.errors import (
    Busy,
    InvalidRequest,
    LimitExceeded,
    NotImplementedYet,
    OutOfMemory,
    RemoteUnavailable,
    Unauthorized,
)
from backend.protocol import Backend
from backend.http.remote import RemoteBackend
from backend.schemas import AnalyzeRequest, CatalogResult, UnloadRequest
from backend.http.wire import protocol_methods

REQ = AnalyzeRequest(model="demo", sae_set="res", text="hello", k=2)


def scripted(*answers):
    """A transport answering each request with the next of `answers` (a response or an exception)."""
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), seen


def busy() -> httpx.Response:
    return httpx.Response(503, json=Busy("The GPU is busy: busy, retry.").to_wire())


def catalog_json(backend) -> dict:
    return backend.catalog().model_dump(mode="json")


def test_it_is_a_backend_with_every_protocol_method():
    remote = RemoteBackend("http://127.0.0.1:9")
    assert isinstance(remote, Backend) and remote.kind == "remote"
    for name in protocol_methods():
        assert callable(getattr(remote, name))


def test_unreachable_is_retried_and_then_says_where_and_what_to_check():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    remote = RemoteBackend(f"http://127.0.0.1:{port}", retries=2, backoff_s=0)
    with pytest.raises(RemoteUnavailable) as err:
        remote.catalog()
    assert f"127.0.0.1:{port}" in err.value.message and "FEATURESCOPE_REMOTE_URL" in err.value.message


def test_busy_is_retried_for_idempotent_calls_only(backend):
    transport, seen = scripted(busy(), busy(), httpx.Response(200, json=catalog_json(backend)))
    remote = RemoteBackend("http://svc", "k", retries=2, backoff_s=0, transport=transport)
    assert isinstance(remote.catalog(), CatalogResult) and len(seen) == 3
    assert all(r.headers["x-api-key"] == "k" for r in seen)

    transport, seen = scripted(busy(), busy(), busy())
    remote = RemoteBackend("http://svc", retries=2, backoff_s=0, transport=transport)
    with pytest.raises(Busy, match="busy, retry"):
        remote.analyze(REQ)
    assert len(seen) == 3

    transport, seen = scripted(busy())
    remote = RemoteBackend("http://svc", retries=2, backoff_s=0, transport=transport)
    with pytest.raises(Busy):
        remote.unload(UnloadRequest(model="demo"))  # not idempotent: never sent twice
    assert len(seen) == 1


def test_out_of_memory_and_read_timeouts_are_not_retried():
    transport, seen = scripted(httpx.Response(503, json=OutOfMemory("The GPU ran out of memory.").to_wire()))
    remote = RemoteBackend("http://svc", retries=3, backoff_s=0, transport=transport)
    with pytest.raises(OutOfMemory):
        remote.analyze(REQ)
    assert len(seen) == 1
    transport, seen = scripted(httpx.ReadTimeout("slow"))
    remote = RemoteBackend("http://svc", retries=3, backoff_s=0, timeout_s=7, transport=transport)
    with pytest.raises(RemoteUnavailable, match="did not answer within 7 s"):
        remote.analyze(REQ)
    assert len(seen) == 1


def test_errors_from_the_service_are_rebuilt_and_others_say_what_happened():
    limit = LimitExceeded("k", 500, 100, "Ask for fewer.")
    cases = [
        (httpx.Response(413, json=limit.to_wire()), LimitExceeded, "k is 500; the limit is 100"),
        (
            httpx.Response(401, json={"error": "unauthorized", "message": "x"}),
            Unauthorized,
            "needs an API key",
        ),
        (httpx.Response(403, text="Forbidden"), Unauthorized, "refused the API key"),
        (httpx.Response(404, json={"detail": "Not Found"}), NotImplementedYet, "not a Featurescope service"),
        (
            httpx.Response(
                404, json={"error": "not_found", "message": "no route", "details": {"route": "/api/x"}}
            ),
            NotImplementedYet,
            "older version",
        ),
        (httpx.Response(500, text="<html>Internal Server Error</html>"), RemoteUnavailable, "HTTP 500"),
    ]
    for response, cls, words in cases:
        transport, _ = scripted(response)
        remote = RemoteBackend("http://svc", retries=0, transport=transport)
        with pytest.raises(cls) as err:
            remote.analyze(REQ)
        assert words in err.value.message, (cls, err.value.message)


def test_a_gateway_error_page_is_retried_then_reported(backend):
    transport, seen = scripted(
        httpx.Response(502, text="Bad gateway"), httpx.Response(200, json=catalog_json(backend))
    )
    remote = RemoteBackend("http://svc", retries=1, backoff_s=0, transport=transport)
    assert remote.catalog().default_model == "demo" and len(seen) == 2


def test_extra_headers_for_modal_proxy_auth_are_sent_and_urls_are_checked(backend):
    transport, seen = scripted(httpx.Response(200, json=catalog_json(backend)))
    remote = RemoteBackend(
        "https://ws--featurescope.modal.run/",
        "k",
        transport=transport,
        headers={"Modal-Key": "wk-1", "Modal-Secret": "ws-2"},
    )
    remote.catalog()
    assert seen[0].headers["modal-key"] == "wk-1" and seen[0].headers["modal-secret"] == "ws-2"
    assert str(seen[0].url) == "https://ws--featurescope.modal.run/api/catalog"
    for bad in ("ftp://host", "localhost:8000", ""):
        with pytest.raises(InvalidRequest, match="FEATURESCOPE_REMOTE_URL"):
            RemoteBackend(bad)


def test_modal_proxy_headers_come_from_the_environment(backend, monkeypatch):
    from backend.settings import Settings

    monkeypatch.setenv("FEATURESCOPE_REMOTE_HEADERS", '{"Modal-Key": "wk-env", "Modal-Secret": "ws-env"}')
    settings = Settings()
    assert "ws-env" not in repr(settings), "secrets stay hidden in reprs and logs"
    transport, seen = scripted(httpx.Response(200, json=catalog_json(backend)))
    RemoteBackend("https://svc.example", settings=settings, transport=transport).catalog()
    assert seen[0].headers["modal-key"] == "wk-env" and seen[0].headers["modal-secret"] == "ws-env"
