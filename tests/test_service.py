"""backend/http/service.py: the key, the limits, the GPU lock, out-of-memory recovery, signed-URL uploads,
and the seed routes, against the session LocalBackend behind a spy."""

from __future__ import annotations

import gzip
import json
import threading

import anyio
import httpx
import pytest
import torch
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from backend.http import service as service_module
from backend.schemas import AnalyzeRequest, CatalogResult, GraphResult
from backend.schemas.service import UploadReceipt
from backend.http.service import create_app
from backend.settings import Limits, Settings
from backend.http.upload import Uploader
from backend.http.wire import protocol_methods
from tests.service_fixtures import Spy, https_receiver, serve_in_thread

KEY = "correct horse battery staple"
TEXT = "Plasma <i>confinement</i> in the tokamak."


def make(backend, *, limits: Limits | None = None, uploader=None, **overrides):
    spy = Spy(backend, **overrides)
    settings = Settings(api_key=KEY, limits=limits or Limits())
    app = create_app(spy, settings=settings, uploader=uploader)
    return app, spy


def protected_routes(client: TestClient) -> list[tuple[str, str]]:
    spec = client.get("/openapi.json").json()
    return [(verb.upper(), path) for path, ops in spec["paths"].items() for verb in ops if path != "/health"]


def strip(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "elapsed_ms"}


# ---------------------------------------------------------------------------------------------- the key
def test_every_protected_route_refuses_missing_and_wrong_keys_without_touching_the_backend(backend):
    app, spy = make(backend)
    client = TestClient(app)
    routes = protected_routes(client)
    assert len(routes) == len(protocol_methods()) + 5
    body = {"model": "demo", "sae_set": "res", "text": TEXT}
    for verb, path in routes:
        kwargs = {"json": body} if verb == "POST" else {}
        missing = client.request(verb, path, **kwargs)
        assert missing.status_code == 401, (path, missing.text)
        assert missing.json()["error"] == "unauthorized" and "X-Api-Key" in missing.json()["message"]
        for header in ("X-Api-Key", "x-secret-key"):
            wrong = client.request(verb, path, headers={header: KEY + "x"}, **kwargs)
            assert wrong.status_code == 403, (path, header)
        short = client.request(verb, path, headers={"X-Api-Key": ""}, **kwargs)
        assert short.status_code == 403
    assert spy.calls == []
    for header in ("X-Api-Key", "x-secret-key"):
        ok = client.get("/api/catalog", headers={header: KEY})
        assert ok.status_code == 200
        assert CatalogResult.model_validate(ok.json()).default_model == "demo"
    assert client.get("/health").status_code == 200 and client.get("/docs").status_code == 200


def asgi_call(
    app, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, dict, int]:
    """Call the ASGI app directly; returns (status, JSON body, how many times it read the body)."""
    reads = 0
    sent: list[dict] = []

    async def receive():
        nonlocal reads
        reads += 1
        i = reads - 1
        if i < len(chunks):
            return {"type": "http.request", "body": chunks[i], "more_body": i < len(chunks) - 1}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    anyio.run(app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), reads


def test_key_and_body_size_are_decided_before_the_body_is_read(backend):
    app, spy = make(backend, limits=Limits(max_body_bytes=4096))
    big = json.dumps({"model": "demo", "sae_set": "res", "text": "x" * 10_000}).encode()
    status, _, reads = asgi_call(app, "/api/analyze", [(b"content-length", str(len(big)).encode())], [big])
    assert (status, reads) == (401, 0)
    status, _, reads = asgi_call(
        app, "/api/analyze", [(b"x-api-key", b"nope"), (b"content-length", b"5")], [b"{}"]
    )
    assert (status, reads) == (403, 0)
    status, body, reads = asgi_call(
        app,
        "/api/analyze",
        [(b"x-api-key", KEY.encode()), (b"content-length", str(len(big)).encode())],
        [big],
    )
    assert (status, reads) == (413, 0)
    assert body["error"] == "limit_exceeded" and "FEATURESCOPE_MAX_BODY_BYTES" in body["message"]
    assert f"{len(big):,}" in body["message"] and "4,096" in body["message"]
    # Without a Content-Length the body is read only until it passes the limit.
    chunks = [big[i : i + 1000] for i in range(0, len(big), 1000)]
    status, body, reads = asgi_call(app, "/api/analyze", [(b"x-api-key", KEY.encode())], chunks)
    assert status == 413 and reads == 5 < len(chunks)
    assert spy.calls == []


# ------------------------------------------------------------------------------------------- the limits
LIMIT_CASES = [
    (
        "/api/analyze",
        {"model": "demo", "sae_set": "res", "text": "x" * 20_001},
        "The text length (characters)",
    ),
    ("/features/topk", {"model_id": "demo", "text": "word " * 5000}, "The text length (characters)"),
    ("/api/analyze", {"model": "demo", "sae_set": "res", "text": TEXT, "k": 101}, "k is 101"),
    (
        "/api/analyze",
        {
            "model": "demo",
            "sae_set": "res",
            "text": TEXT,
            "track": [{"layer": 0, "index": i} for i in range(65)],
        },
        "tracked features",
    ),
    ("/steer", {"model_id": "demo", "prompt": TEXT, "n_tokens": 257}, "FEATURESCOPE_MAX_NEW_TOKENS"),
    (
        "/api/steer",
        {"model": "demo", "sae_set": "res", "prompt": "p" * 20_001},
        "FEATURESCOPE_MAX_TEXT_CHARS",
    ),
    (
        "/api/steer",
        {
            "model": "demo",
            "sae_set": "res",
            "prompt": TEXT,
            "features": [{"layer": 0, "index": i, "ablate": True, "steer_all_prompt_positions": True}
                         for i in range(33)],
        },
        "FEATURESCOPE_MAX_STEER_FEATURES",
    ),
    (
        "/generate-graph",
        {"model_id": "demo", "prompt": TEXT, "max_feature_nodes": 10_001},
        "FEATURESCOPE_MAX_FEATURE_NODES",
    ),
    (
        "/generate-graph",
        {"model_id": "demo", "prompt": TEXT, "batch_size": 257},
        "FEATURESCOPE_MAX_BATCH_SIZE",
    ),
    ("/compare", {"models": ["demo", "m1", "m2", "m3", "m4"], "sentences": [TEXT]}, "FEATURESCOPE_MAX_COMPARE_MODELS"),
    ("/compare", {"models": ["demo"], "sentences": [TEXT] * 33}, "FEATURESCOPE_MAX_COMPARE_SENTENCES"),
    (
        "/api/feature",
        {"feature": {"model": "demo", "sae_set": "res", "layer": 0, "index": 1}, "n_examples": 201},
        "FEATURESCOPE_MAX_EXAMPLES",
    ),
]


@pytest.mark.parametrize(("path", "body", "named"), LIMIT_CASES, ids=[f"{p}-{n}" for p, _, n in LIMIT_CASES])
def test_each_limit_is_refused_before_any_work_with_a_message_naming_it(backend, path, body, named):
    app, spy = make(backend)
    response = TestClient(app).post(path, json=body, headers={"X-Api-Key": KEY})
    assert response.status_code == 413, response.text
    payload = response.json()
    assert payload["error"] == "limit_exceeded" and named in payload["message"]
    assert f"the limit is {payload['details']['limit']:,}" in payload["message"]
    long_methods = {m.name for m in protocol_methods().values() if m.long}
    assert not long_methods & set(spy.calls), "refused before the backend did any work"


def test_token_limit_comes_from_the_backend_and_malformed_requests_name_the_field(backend):
    app, _ = make(backend)
    client = TestClient(app)
    over = client.post(
        "/api/analyze",
        json={"model": "demo", "sae_set": "res", "text": "token " * 1100},
        headers={"X-Api-Key": KEY},
    )
    assert over.status_code == 413 and "The text (tokens)" in over.json()["message"]
    bad = client.post(
        "/api/analyze",
        json={"model": "demo", "sae_set": "res", "text": TEXT, "k": 0},
        headers={"X-Api-Key": KEY},
    )
    assert (
        bad.status_code == 422 and bad.json()["error"] == "invalid_request" and "k:" in bad.json()["message"]
    )
    junk = client.post(
        "/api/analyze", content=b"{not json", headers={"X-Api-Key": KEY, "Content-Type": "application/json"}
    )
    assert junk.status_code == 400 and junk.json()["error"] == "invalid_request"  # as the OpenAPI documents
    assert "JSON decode error at character 1" in junk.json()["message"]


# ---------------------------------------------------------------------------------------- the GPU lock
def test_a_request_waiting_too_long_for_the_gpu_gets_503_busy_and_the_next_one_works(backend):
    entered, release = threading.Event(), threading.Event()

    def slow_analyze(req, progress=None):
        entered.set()
        release.wait(60)
        return backend.analyze(req, progress)

    app, spy = make(backend, limits=Limits(lock_timeout_s=0.05), analyze=slow_analyze)
    req = {"model": "demo", "sae_set": "res", "text": TEXT, "k": 3}
    with (
        serve_in_thread(app) as url,
        httpx.Client(base_url=url, headers={"X-Api-Key": KEY}, timeout=60) as client,
    ):
        holder: dict = {}
        first = threading.Thread(target=lambda: holder.update(r=client.post("/api/analyze", json=req)))
        first.start()
        assert entered.wait(60)
        busy = client.post("/api/analyze", json=req)
        health = client.get("/health").json()
        catalog = client.get("/api/catalog")  # methods without GPU work do not wait for the lock
        release.set()
        first.join(60)
        after = client.post("/api/analyze", json=req)
    assert busy.status_code == 503 and busy.json()["error"] == "busy"
    assert "busy, retry" in busy.json()["message"] and busy.headers["Retry-After"]
    assert health["busy"] is True and catalog.status_code == 200
    want = backend.analyze(AnalyzeRequest(**req)).model_dump(mode="json")
    assert strip(holder["r"].json()) == strip(want) == strip(after.json())


def test_cuda_out_of_memory_frees_the_cache_answers_503_and_the_next_request_works(backend, monkeypatch):
    freed: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(True))
    failures = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")]

    def analyze(req, progress=None):
        if failures:
            raise failures.pop()
        return backend.analyze(req, progress)

    app, _ = make(backend, analyze=analyze)
    client = TestClient(app)
    req = {"model": "demo", "sae_set": "res", "text": TEXT, "k": 2}
    oom = client.post("/api/analyze", json=req, headers={"X-Api-Key": KEY})
    assert oom.status_code == 503 and oom.json()["error"] == "out_of_memory" and oom.json()["retryable"]
    assert "cache was freed" in oom.json()["message"] and freed == [True]
    assert not app.app.state.service.gpu.locked()
    ok = client.post("/api/analyze", json=req, headers={"X-Api-Key": KEY})
    assert ok.status_code == 200
    assert strip(ok.json()) == strip(backend.analyze(AnalyzeRequest(**req)).model_dump(mode="json"))


def test_an_unexpected_exception_is_a_500_without_a_traceback(backend):
    def broken(req, progress=None):
        raise KeyError("secret internal detail")

    app, _ = make(backend, analyze=broken)
    r = TestClient(app).post(
        "/api/analyze", json={"model": "demo", "sae_set": "res", "text": TEXT}, headers={"X-Api-Key": KEY}
    )
    assert r.status_code == 500 and "KeyError" in r.json()["message"]
    assert "secret internal detail" not in r.text and "Traceback" not in r.text


# ------------------------------------------------------------------------------------------ signed URL
GRAPH = {
    "metadata": {"slug": "count-1-2", "prompt_tokens": ["1", " 2"]},
    "nodes": [{"node_id": "0_1_1"}] * 3,
    "links": [{"source": "0_1_1", "target": "0_1_1", "weight": 0.5}],
}


def fake_attribute(req, progress=None):
    return GraphResult(slug=req.slug_identifier or "graph", n_nodes=3, n_edges=1, graph=GRAPH)


@pytest.mark.parametrize("compress", [True, False])
def test_generate_graph_uploads_to_an_https_signed_url_outside_the_gpu_lock(backend, tmp_path, compress):
    state: dict = {}
    with https_receiver(tmp_path, on_request=lambda: state["service"].gpu.locked()) as (base, ctx, received):
        app, spy = make(backend, attribute=fake_attribute, uploader=Uploader(30, verify=ctx))
        state["service"] = app.app.state.service
        signed = f"{base}/bucket/count-1-2.json?X-Amz-Signature=s3cr3t&X-Amz-Expires=60"
        r = TestClient(app).post(
            "/generate-graph",
            headers={"x-secret-key": KEY},
            json={
                "prompt": "1 2 ",
                "model_id": "demo",
                "slug_identifier": "count-1-2",
                "signed_url": signed,
                "compress": compress,
            },
        )
    assert r.status_code == 200, r.text
    receipt = UploadReceipt.model_validate(r.json())
    (put,) = received
    assert put.path == "/bucket/count-1-2.json?X-Amz-Signature=s3cr3t&X-Amz-Expires=60"
    body = gzip.decompress(put.body) if compress else put.body
    assert json.loads(body) == GRAPH and put.headers["content-type"] == "application/json"
    assert (put.headers.get("content-encoding") == "gzip") is compress
    assert put.gpu_locked is False, "the upload runs after the GPU lock is released"
    assert receipt.bytes == len(put.body) and receipt.compressed is compress and receipt.n_nodes == 3
    assert "s3cr3t" not in r.text and receipt.url == f"{base}/bucket/count-1-2.json"
    assert spy.calls.count("attribute") == 1


def test_signed_url_must_be_https_and_a_refused_upload_is_a_502(backend, tmp_path):
    app, spy = make(backend, attribute=fake_attribute)
    client = TestClient(app)
    for url in ("http://127.0.0.1:9/x.json", "file:///etc/passwd", "not a url"):
        r = client.post(
            "/generate-graph",
            headers={"X-Api-Key": KEY},
            json={"prompt": "1 2", "model_id": "demo", "signed_url": url},
        )
        assert r.status_code == 422 and "https://" in r.json()["message"], url
    assert "attribute" not in spy.calls
    with https_receiver(tmp_path, status=403) as (base, ctx, received):
        app, _ = make(backend, attribute=fake_attribute, uploader=Uploader(30, verify=ctx))
        r = TestClient(app).post(
            "/api/attribute",
            headers={"X-Api-Key": KEY},
            json={
                "prompt": "1 2",
                "model": "demo",
                "transcoder_set": "demo",
                "signed_url": f"{base}/g.json?sig=1",
            },
        )
    assert r.status_code == 502 and r.json()["error"] == "upload_failed" and "403" in r.json()["message"]
    assert len(received) == 1


def test_generate_graph_without_signed_url_answers_the_graph_json_itself(backend):
    app, _ = make(backend, attribute=fake_attribute)
    r = TestClient(app).post(
        "/generate-graph",
        headers={"X-Api-Key": KEY},
        json={"prompt": "1 2", "model_id": "demo", "slug_identifier": "s"},
    )
    assert r.status_code == 200 and r.json() == GRAPH


# ---------------------------------------------------------------------------------------- seed routes
def test_features_topk_is_analyze_under_the_seed_field_names(backend):
    app, _ = make(backend)
    client = TestClient(app)
    r = client.post(
        "/features/topk",
        headers={"X-Api-Key": KEY},
        json={
            "model_id": "someorg/GPT2-Small",
            "text": TEXT,
            "layer": 4,
            "k": 3,
            "include_descriptions": False,
        },
    )
    assert r.status_code == 200, r.text
    want = backend.analyze(
        AnalyzeRequest(
            model="gpt2-small", sae_set="res-jb", text=TEXT, layers=[4], k=3, include_explanations=False
        )
    )
    assert strip(r.json()) == strip(want.model_dump(mode="json"))
    every = client.post("/features/topk", headers={"X-Api-Key": KEY}, json={"model_id": "demo", "text": TEXT})
    assert [lt["layer"] for lt in every.json()["layers"]] == [
        lt.layer for lt in backend.analyze(AnalyzeRequest(model="demo", sae_set="res", text=TEXT)).layers
    ]
    models = client.get("/models", headers={"X-Api-Key": KEY}).json()
    assert [m["id"] for m in models["models"]] == [m.id for m in backend.catalog().models]
    unknown = client.post(
        "/features/topk", headers={"X-Api-Key": KEY}, json={"model_id": "gpt5", "text": "x"}
    )
    assert unknown.status_code == 404 and "gpt2-small" in unknown.json()["message"]


def test_steer_and_generate_graph_take_the_seed_fields_and_fill_in_the_set(backend):
    seen = {}

    def record(name):
        def method(req, progress=None):
            seen[name] = req
            seen[name + ".result"] = getattr(backend, name)(req, progress)
            return seen[name + ".result"]

        return method

    app, _ = make(backend, steer=record("steer"), attribute=record("attribute"))
    client = TestClient(app)
    client.post(
        "/steer",
        headers={"X-Api-Key": KEY},
        json={
            "model_id": "demo",
            "prompt": "Fait: Michael Jordan joue au",
            "n_tokens": 3,
            "top_k": 2,
            "features": [
                {"layer": 1, "index": 5, "token_active_position": 2, "steer_position": 2, "ablate": True},
                {"layer": 1, "index": 7, "steer_generated_tokens": True, "delta": 350},
            ],
        },
    )
    client.post(
        "/generate-graph",
        headers={"X-Api-Key": KEY},
        json={
            "prompt": "1 2 ",
            "model_id": "demo",
            "batch_size": 4,
            "max_n_logits": 5,
            "desired_logit_prob": 0.9,
            "node_threshold": 0.8,
            "edge_threshold": 0.85,
            "slug_identifier": "count",
            "max_feature_nodes": 100,
        },
    )
    steer, graph = seen["steer"], seen["attribute"]
    # A missing set is resolved by the backend, as on /api/steer: the model's transcoders (issue 14).
    assert (steer.model, steer.sae_set, steer.n_tokens, steer.top_k) == ("demo", None, 3, 2)
    transcoders = [t.id for t in next(m for m in backend.catalog().models if m.id == "demo").transcoder_sets]
    assert seen["steer.result"].sae_set == transcoders[0]
    assert seen["attribute.result"].transcoder_set == transcoders[0]
    assert (
        steer.features[0].ablate
        and steer.features[1].delta == 350
        and steer.features[1].steer_generated_tokens
    )
    assert (graph.model, graph.transcoder_set, graph.batch_size, graph.max_feature_nodes) == (
        "demo",
        None,
        4,
        100,
    )
    assert graph.slug_identifier == "count" and graph.desired_logit_prob == 0.9


# ---------------------------------------------------------------------------------------- start-up
def test_refuses_to_serve_beyond_loopback_without_a_secret(backend, capsys, monkeypatch):
    for host in ("0.0.0.0", "::", "192.0.2.10"):
        assert service_module.main(["--host", host, "--port", "1"]) == 2
        assert "without a secret" in capsys.readouterr().err
    for weak in ("   ", "short-key"):  # blank is no key; a guessable one is refused too
        monkeypatch.setattr(service_module, "get_settings", lambda weak=weak: Settings(api_key=weak))
        assert service_module.main(["--host", "0.0.0.0", "--port", "1"]) == 2
        assert "FEATURESCOPE_API_KEY to at least 16" in capsys.readouterr().err
    app = create_app(Spy(backend), settings=Settings(api_key=" "))
    assert app.key_digest is None, "a blank key is no key (and main() refuses it beyond loopback)"


def test_websockets_are_refused(backend):
    app, _ = make(backend)
    with pytest.raises(WebSocketDisconnect):
        with TestClient(app).websocket_connect("/api/info", headers={"X-Api-Key": KEY}):
            pass
