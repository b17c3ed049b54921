"""`python -m backend ...` prints the protocol's result models as JSON."""

from __future__ import annotations

import json
import subprocess
import sys

from backend.schemas import AnalyzeResult, CatalogResult, InfoResult


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True, timeout=300)


def test_info_and_catalog(hf_cache):
    info = run_cli("info")
    assert info.returncode == 0, info.stderr
    from backend.compute import resolve_device
    from backend.settings import Settings

    assert InfoResult.model_validate_json(info.stdout).device.kind == resolve_device(Settings().device)
    cat = run_cli("catalog")
    assert cat.returncode == 0, cat.stderr
    models = {m.id: m for m in CatalogResult.model_validate_json(cat.stdout).models}
    assert {"demo", "gpt2-small", "gemma-2-2b", "gemma-2-2b-it", "llama-3.1-8b"} <= set(models)
    assert models["gpt2-small"].available, "the tiny gpt2 is in the local cache"
    assert not models["llama-3.1-8b"].available and "HF_HUB_OFFLINE" in models["llama-3.1-8b"].availability


def test_analyze_one_layer_matches_the_backend(backend):
    from backend.schemas import AnalyzeRequest, LayerFeature

    text = "Offline <b>tokens</b> & more"
    out = run_cli("analyze", "--model", "gpt2-small", "--text", text, "--layer", "4", "--k", "3",
                  "--track", "4:9")
    assert out.returncode == 0, out.stderr
    got = AnalyzeResult.model_validate_json(out.stdout)
    want = backend.analyze(AnalyzeRequest(model="gpt2-small", sae_set="res-jb", text=text, layers=[4], k=3,
                                          track=[LayerFeature(layer=4, index=9)]))
    assert got.tokens == want.tokens
    assert got.layers == want.layers
    assert got.tracked == want.tracked
    assert "Loading" in out.stderr, "progress goes to stderr"


def test_errors_are_json_on_stderr_with_status_2(hf_cache):
    out = run_cli("analyze", "--model", "nope", "--text", "hi")
    assert out.returncode == 2
    err = json.loads(out.stderr.strip().splitlines()[-1])
    assert err["error"] == "not_found" and "gpt2-small" in err["message"]
    bad = run_cli("analyze", "--model", "demo", "--text", "hi", "--k", "0")
    assert bad.returncode == 2
    assert json.loads(bad.stderr.strip().splitlines()[-1])["error"] == "invalid_request"


def test_a_blank_or_bad_request_says_which_field_and_what_to_do(hf_cache):
    """Issue 12 (4): `analyze --text ""` is one JSON line naming the field and the fix, not pydantic's
    multi-line dump; the input itself is never echoed. (Whitespace is text the model can read: the
    CLI analyses it, as the service does.)"""
    for args in (("--text", ""), ("--text", "hi", "--k", "0")):
        out = run_cli("analyze", "--model", "demo", *args)
        assert out.returncode == 2
        (line,) = [ln for ln in out.stderr.strip().splitlines() if ln.startswith("{")]
        err = json.loads(line)
        assert err["error"] == "invalid_request"
        field = args[-2].removeprefix("--")
        assert err["message"].startswith(f"The request is malformed — {field}: ")
        assert "See --help" in err["message"] and "validation error" not in err["message"]
        assert err["details"]["errors"][0]["loc"] == [field]
    long = "z" * 100_000
    out = run_cli("analyze", "--model", "demo", "--text", long, "--k", "0")
    assert out.returncode == 2 and "z" * 81 not in out.stderr
