"""Issue 17's holes, against real service subprocesses on 127.0.0.1 (bounded in time):

1. the body limit holds on the bytes received, whatever the headers say;
2. numbers never give a 500 (bounds in the schema; overflow inside a run is a 4xx naming what to change);
3. non-finite input is refused, and every answer validates against its own model;
4. a well-formed graph-cache entry of the wrong shape is dropped and recomputed;
5. two services on one data dir lose no explanation edit.
(Hole 6, the gated app's protocol, is in test_hostile_app.py.)
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from backend.explanations import ExplanationStore
from backend.http.wire import protocol_methods
from backend.schemas import GraphResult
from backend.schemas.service import ErrorBody
from tests.service_fixtures import ServiceProcess, service_process

KEY = "hostile-test-key-0123456789"
TIMEOUT = httpx.Timeout(300.0, connect=10.0)
METHODS = {m.path: m for m in protocol_methods().values()}
STEER = {"model": "demo", "sae_set": "res", "prompt": "The cat sat on the", "n_tokens": 3, "top_k": 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile-data")


@pytest.fixture(scope="module")
def service(hf_cache, data_dir) -> Iterator[ServiceProcess]:
    with service_process({"FEATURESCOPE_DATA_DIR": str(data_dir)}, key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def client(service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, headers={"X-Api-Key": KEY}, timeout=TIMEOUT) as c:
        yield c


def checked(response: httpx.Response, path: str) -> httpx.Response:
    """No 5xx, and the body is the route's own model: its result, or the error body."""
    assert response.status_code < 500, f"{path} -> {response.status_code}: {response.text[:400]}"
    if response.status_code == 200:
        METHODS[path].result.model_validate_json(response.content)
    else:
        ErrorBody.model_validate_json(response.content)
    return response


def raw_request(url: str, head: bytes, body: bytes) -> tuple[int, bytes]:
    """Send `head` + `body` on one loopback connection (whatever the server does with it), then read
    the status line and what follows."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        def send() -> None:
            try:
                sock.sendall(head + body)
            except OSError:  # the server answered and closed before reading it all: fine
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + 10:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        sender.join(timeout=60)
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


# ------------------------------------------------------------------------------- 1. the body limit
def chunked(payload: bytes, size: int = 1 << 16) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(payload[i:i + size]), payload[i:i + size]) for i in range(0, len(payload), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def test_a_small_content_length_does_not_let_a_big_chunked_body_through(service):
    big = json.dumps({"model": "demo", "sae_set": "res", "text": "x" * 3_000_000}).encode()  # 3 MB > 1 MB limit
    head = (b"POST /api/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Api-Key: " + KEY.encode() +
            b"\r\nContent-Type: application/json\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n")
    status, answer = raw_request(service.url, head, chunked(big))
    assert status in (400, 413), answer[:400]
    assert b"limit_exceeded" in answer or b"Transfer-Encoding" in answer or status == 400, answer[:400]
    assert b"text length" not in answer, "the body was read and parsed: refused only at the text limit"
    # Chunked alone: read up to the limit and no further.
    head = head.replace(b"Content-Length: 10\r\n", b"")
    status, answer = raw_request(service.url, head, chunked(big))
    assert status == 413 and b"FEATURESCOPE_MAX_BODY_BYTES" in answer, answer[:400]
    # A GET carries a body too, if it says so.
    head = head.replace(b"POST /api/analyze", b"GET /api/info")
    status, answer = raw_request(service.url, head, chunked(big))
    assert status == 413 and b"FEATURESCOPE_MAX_BODY_BYTES" in answer, answer[:400]


# -------------------------------------------------------------------- 2 and 3. numbers and answers
BAD_NUMBERS = [
    ("delta-1e308-sampled",
     {**STEER, "temperature": 1.0,
      "features": [{"layer": 1, "index": 3, "delta": 1e308, "steer_all_prompt_positions": True}]},
     "delta"),
    ("seed-2**64", {**STEER, "temperature": 1.0, "seed": 2**64}, "seed"),
    ("alpha-1e308-greedy", {**STEER, "features": [{"layer": 1, "index": 3, "alpha": 1e308,
                                                   "steer_all_prompt_positions": True}]}, "alpha"),
    ("temperature-1e-300", {**STEER, "temperature": 1e-300}, "temperature"),  # valid alone; overflows inside
]


@pytest.mark.parametrize(("body", "named"), [(b, n) for _, b, n in BAD_NUMBERS], ids=[i for i, _, _ in BAD_NUMBERS])
def test_numbers_get_a_4xx_naming_what_to_change_never_a_500(client, body, named):
    response = checked(client.post("/api/steer", json=body), "/api/steer")
    assert 400 <= response.status_code < 500, response.text
    message = response.json()["message"]
    assert named in message and "Retry" not in message, message


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_numbers_are_refused_naming_the_field(client, literal):
    text = json.dumps({**STEER, "features": [{"layer": 1, "index": 3, "alpha": 123.0,
                                              "steer_all_prompt_positions": True}]}).replace("123.0", literal)
    response = checked(client.post("/api/steer", content=text, headers={"Content-Type": "application/json"}),
                       "/api/steer")
    assert response.status_code == 422 and "alpha" in response.json()["message"], response.text


@pytest.mark.parametrize("k", [True, "10", 10.5])
def test_wire_types_are_strict(client, k):
    body = {"model": "demo", "sae_set": "res", "text": "The cat sat.", "k": k}
    response = checked(client.post("/api/analyze", json=body), "/api/analyze")
    assert response.status_code == 422 and "k" in response.json()["message"], response.text


def test_malformed_json_names_the_position_and_a_wrong_content_type_says_so(client):
    response = checked(client.post("/api/analyze", content=b'{"model": "demo", sae_set: 1}',
                                   headers={"Content-Type": "application/json"}), "/api/analyze")
    assert response.status_code == 400 and "JSON decode error at character 18" in response.json()["message"]
    good = json.dumps({"model": "demo", "sae_set": "res", "text": "The cat sat."}).encode()
    response = checked(client.post("/api/analyze", content=good, headers={"Content-Type": "text/plain"}),
                       "/api/analyze")
    assert response.status_code == 400, response.text
    assert "text/plain" in response.json()["message"] and "application/json" in response.json()["message"]


def test_the_published_schema_states_the_bounds(client):
    spec = client.get("/openapi.json").json()["components"]["schemas"]
    seed = next(s for s in spec["SteerRequest"]["properties"]["seed"]["anyOf"] if s.get("type") == "integer")
    assert seed["maximum"] == float(2**63 - 1)  # FastAPI's OpenAPI models write bounds as floats
    delta = next(s for s in spec["SteerFeature"]["properties"]["delta"]["anyOf"] if s.get("type") == "number")
    assert 0 < delta["maximum"] < 1e300 and delta["minimum"] == -delta["maximum"]


# ------------------------------------------------------------------- 4. wrong-shaped cache entries
def test_a_wrong_shaped_graph_cache_entry_is_dropped_and_recomputed(client, data_dir):
    body = {"model": "demo", "prompt": "The cat sat on the", "max_feature_nodes": 64}
    first = checked(client.post("/api/attribute", json=body), "/api/attribute")
    assert first.status_code == 200, first.text
    entries = list((data_dir / "graphs" / "cache" / "results").glob("*.json.gz"))
    assert len(entries) == 1
    entries[0].write_bytes(gzip.compress(json.dumps({"slug": 1}).encode()))
    served = []
    for _ in range(2):  # recomputed once, then served from the repaired entry
        again = checked(client.post("/api/attribute", json=body), "/api/attribute")
        assert again.status_code == 200, again.text
        assert again.json()["graph"]["nodes"] == first.json()["graph"]["nodes"]
        served.append(again.json()["cached"])
    assert served == [False, True]
    repaired = GraphResult.model_validate(json.loads(gzip.decompress(entries[0].read_bytes())))
    assert [n["node_id"] for n in repaired.graph["nodes"]] == [n["node_id"] for n in first.json()["graph"]["nodes"]]


def test_feature_results_name_the_store_not_a_server_path(client, data_dir):
    ref = {"model": "demo", "sae_set": "res", "layer": 1, "index": 3}
    response = checked(client.post("/api/feature", json={"feature": ref, "n_examples": 2}), "/api/feature")
    assert response.status_code == 200, response.text
    assert response.json()["store"] == "demo--res.h5"
    assert str(data_dir) not in response.text


# ------------------------------------------------------------------ 5. two services, one data dir
def test_two_services_on_one_data_dir_keep_every_acknowledged_explanation(hf_cache, tmp_path):
    legacy = tmp_path / "explanations" / "user" / "demo" / "res.json"  # written by an earlier version
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps({"2": {"7": "legacy: kettles"}}))
    per_service, workers = 150, 6
    env = {"FEATURESCOPE_DATA_DIR": str(tmp_path)}
    with service_process(env, key=KEY) as a, service_process(env, key=KEY) as b:
        def save(job: tuple[str, int]) -> tuple[int, str, int]:
            url, i = job
            layer = 0 if url == a.url else 1
            text = f"edit {i} through layer {layer}"
            body = {"feature": {"model": "demo", "sae_set": "res", "layer": layer, "index": i}, "text": text}
            response = httpx.post(f"{url}/api/save_explanation", json=body, headers={"X-Api-Key": KEY},
                                  timeout=TIMEOUT)
            checked(response, "/api/save_explanation")
            assert response.json()["explanation"] == text, response.text
            return response.status_code, text, i

        jobs = [(s.url, i) for i in range(per_service) for s in (a, b)]
        with ThreadPoolExecutor(2 * workers) as pool:
            answers = list(pool.map(save, jobs))
    assert [status for status, _, _ in answers] == [200] * len(jobs)
    store = ExplanationStore(lambda: None, tmp_path, lambda model, sae_set: {})  # a third reader
    missing = [(layer, i) for layer in (0, 1) for i in range(per_service)
               if store.get("demo", "res", layer, i) != (f"edit {i} through layer {layer}", "user")]
    assert missing == [], f"{len(missing)} acknowledged saves are missing"
    assert store.get("demo", "res", 2, 7) == ("legacy: kettles", "user"), "the old JSON file was imported"



def test_a_non_finite_number_in_any_result_is_a_4xx_naming_where_never_a_null(backend):
    """The net under every method: whatever produced it, an inf or NaN in a result would travel as
    null and fail the method's own model, so the service answers 422 naming where it appeared."""
    from starlette.testclient import TestClient

    from backend.http.service import create_app
    from backend.schemas import AnalyzeRequest
    from backend.settings import Settings
    from tests.service_fixtures import Spy

    def analyze(req, progress=None):
        result = backend.analyze(req)
        result.layers[0].values[1][0] = float("nan")
        return result

    app = create_app(Spy(backend, analyze=analyze), settings=Settings(api_key=KEY))
    body = AnalyzeRequest(model="demo", sae_set="res", text="The cat sat.", layers=[0], k=2).model_dump(mode="json")
    response = checked(TestClient(app).post("/api/analyze", json=body, headers={"X-Api-Key": KEY}), "/api/analyze")
    assert response.status_code == 422, response.text
    assert "result.layers[0].values[1][0]" in response.json()["message"]
