"""Offline, tiny, shared fixtures.

The environment is fixed here, before anything imports huggingface_hub: no network, a private
Hugging Face cache (filled by `hf_cache` with tiny models under real repo names) and a private
Featurescope data directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_ROOT = Path(tempfile.mkdtemp(prefix="featurescope-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_ROOT / "hf")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["FEATURESCOPE_DATA_DIR"] = str(_ROOT / "data")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _name in list(os.environ):
    if _name.startswith("FEATURESCOPE_") and _name != "FEATURESCOPE_DATA_DIR":
        del os.environ[_name]
# The demo model's corpus store is built on first use from the pack's corpus: a few thousand tokens
# are enough for the tests, whatever the size of the installed pack's corpus.
os.environ["FEATURESCOPE_DEMO_STORE_MAX_TOKENS"] = "12000"
# The app's background build of the demo stores at start-up would race the tests' own backend for
# the same store files; tests build them on first use.
os.environ["FEATURESCOPE_UI_PREBUILD_STORES"] = "0"

import pytest  # noqa: E402

from tests import hf_fixtures  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "test-output"


@pytest.fixture(scope="session")
def test_root() -> Path:
    return _ROOT


@pytest.fixture(scope="session")
def hf_cache() -> Path:
    """The hub cache with tiny `gpt2` and res-jb SAEs (built once per session)."""
    hub = Path(os.environ["HF_HOME"]) / "hub"
    if not (hub / "models--gpt2").exists():
        hf_fixtures.build_tiny_gpt2(hub)
        hf_fixtures.build_res_jb_saes(hub)
    return hub


@pytest.fixture(scope="session")
def topk_catalog(test_root: Path) -> Path:
    """A user catalog adding the Modal design's TopK SAE (layer 8, k=8, 64-token windows) to GPT-2."""
    ckpt = test_root / "topk" / "sae_e32_k32-final.pt"
    hf_fixtures.write_topk_checkpoint(ckpt, hf_fixtures.TINY_GPT2["n_embd"], 128)
    path = test_root / "topk-catalog.yaml"
    path.write_text(
        "models:\n"
        "  gpt2-small:\n"
        "    sae_sets:\n"
        "      topk-l8:\n"
        "        display_name: TopK SAE, layer 8 (Modal design)\n"
        "        source: topk_checkpoint\n"
        f"        path: {ckpt}\n"
        "        hook: blocks.{layer}.hook_resid_pre\n"
        "        layers: [8]\n"
        "        d_sae: 128\n"
        "        k: 8\n"
        "        window: 64\n"
        "        prepend_bos: false\n"
    )
    return path


@pytest.fixture(scope="session")
def backend(hf_cache: Path, topk_catalog: Path):
    """One LocalBackend for the session (models load once), with the TopK set in its catalog."""
    from backend.local import LocalBackend
    from backend.settings import Settings

    return LocalBackend(Settings(catalog_path=topk_catalog))


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT


@pytest.fixture(scope="session")
def remote_service(backend, topk_catalog: Path):
    """`python -m backend.http.service` on 127.0.0.1 in a subprocess, with the same catalog, HF cache and
    data dir as the `backend` fixture (whose demo pack it reuses), and a random API key."""
    import secrets

    from tests.service_fixtures import service_process

    backend.pack()  # build the tiny demo pack here first, so both processes read the same one
    env = {"FEATURESCOPE_CATALOG_PATH": str(topk_catalog)}
    with service_process(env, key=secrets.token_urlsafe(24)) as server:
        yield server


# ------------------------------------------------- the app in Chromium (for the browser tests)
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def server(hf_cache):
    """The real app (`streamlit run app.py`) on a free loopback port, one per test module."""
    from tests.servers import streamlit_server

    with streamlit_server() as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium through Playwright, one per test module."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install Debian's chromium (make test does: `make browser`)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()
