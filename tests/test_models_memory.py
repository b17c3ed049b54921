"""Loading under a memory budget: refusals that name the figures, LRU eviction, unloading."""

from __future__ import annotations

import pytest

from backend import compute
from backend.errors import DoesNotFit, NotFound
from backend.local import LocalBackend
from backend.schemas import AnalyzeRequest, EstimateRequest, UnloadRequest
from backend.settings import Settings


def test_refuses_a_model_that_cannot_fit_with_the_figures(hf_cache):
    be = LocalBackend(Settings(memory_budget_gb=0.0001))
    with pytest.raises(DoesNotFit) as err:
        be.analyze(AnalyzeRequest(model="gpt2-small", sae_set="res-jb", text="hello", layers=[0]))
    msg = err.value.message
    entry = be.model_entry("gpt2-small")
    need = compute.estimate_memory(entry, seq_len=512, batch_size=1, dtype=be.dtype_for(entry),
                                  device=be.device).total_gb
    assert f"{need:.2f} GB" in msg, msg
    assert "the budget is 0.00 GB" in msg
    assert "FEATURESCOPE_MEMORY_BUDGET_GB" in msg
    assert be.models.resident() == [], "nothing may be loaded after a refusal"


def test_lru_unloads_the_least_recently_used_model(hf_cache):
    be = LocalBackend(Settings(max_loaded_models=1))
    be.analyze(AnalyzeRequest(model="demo", sae_set="res", text="first"))
    assert [m.entry.id for m in be.models.resident()] == ["demo"]
    be.analyze(AnalyzeRequest(model="gpt2-small", sae_set="res-jb", text="second", layers=[1]))
    assert [m.entry.id for m in be.models.resident()] == ["gpt2-small"]
    info = be.unload(UnloadRequest(model="gpt2-small"))
    assert info.loaded == []
    with pytest.raises(NotFound, match="not loaded"):
        be.unload(UnloadRequest(model="gpt2-small"))


def test_info_reports_loaded_models_and_their_memory(backend):
    backend.analyze(AnalyzeRequest(model="gpt2-small", sae_set="res-jb", text="x", layers=[0, 1]))
    info = backend.info()
    gpt2 = next(m for m in info.loaded if m.model == "gpt2-small")
    loaded = backend.models.get(backend.model_entry("gpt2-small"), "float32")
    params = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    assert gpt2.memory_gb * compute.GB >= params
    assert {0, 1} <= set(gpt2.sae_layers["res-jb"])
    assert info.device.kind == backend.device and info.device.total_gb > 0
    assert info.versions["sae-lens"] != "not installed"
    assert info.limits["max_prompt_tokens"] == backend.limits.max_prompt_tokens


def test_estimate_matches_a_hand_computation(backend):
    e = backend.estimate(EstimateRequest(model="gpt2-small", seq_len=512, sae_set="res-jb"))
    gb = 1024**3
    weights = 124_439_808 * 4 / gb
    per_layer = 512 * 768 + (4 * 512 * 12 * 64 + 12 * 512 * 512) + 2 * 512 * 3072
    acts = 12 * per_layer * 4 / gb
    saes = 12 * (2 * 768 * 24576 + 2 * 24576 + 768) * 4 / gb
    assert e.weights_gb == pytest.approx(weights, abs=1e-3)
    assert e.activations_gb == pytest.approx(acts, abs=1e-3)
    assert e.saes_gb == pytest.approx(saes, abs=1e-3)
    assert e.total_gb == pytest.approx(weights + acts + saes, abs=2e-3)
    big = backend.estimate(EstimateRequest(model="llama-3.1-8b", seq_len=2048, dtype="bfloat16"))
    assert big.weights_gb == pytest.approx(8_030_261_248 * 2 / gb, abs=1e-3)
    assert big.recommended_gpu == compute.recommend_gpu(big.total_gb)


def test_recommend_gpu_ladder():
    assert compute.recommend_gpu(1.0).startswith("NVIDIA T4")
    assert "24 GB" in compute.recommend_gpu(16.0)
    assert "80 GB" in compute.recommend_gpu(60.0)
    assert compute.recommend_gpu(500.0) is None


@pytest.mark.parametrize("env,kind", [
    ({"SPACE_ID": "me/featurescope"}, "hf_space"),
    ({"MODAL_TASK_ID": "ta-1"}, "modal"),
    ({"RUNPOD_POD_ID": "abc"}, "runpod"),
    ({"COLAB_RELEASE_TAG": "x"}, "colab"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "kaggle"),
    ({"VAST_CONTAINERLABEL": "C.1"}, "vast"),
])
def test_environment_detection(env, kind):
    info = compute.detect_environment(env)
    assert info.kind == kind
    assert set(info.details) <= set(env)


def test_demo_transcoders_load_as_dictionaries_matching_circuit_tracer(backend):
    """The pack's transcoders through the ModelManager: encode is circuit-tracer's, hooks are
    resid_mid in, mlp_out out, and they are accounted beside the SAEs."""
    import torch
    from circuit_tracer.transcoder.single_layer_transcoder import load_relu_transcoder

    entry = backend.model_entry("demo")
    tc_set = entry.transcoder_set("demo")
    loaded = backend.load("demo")
    (d,) = backend.models.transcoders(loaded, tc_set, [1])
    assert (d.hook_name, d.out_hook_name) == ("blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out")
    assert "tc:demo" in loaded.loaded_layers()
    ref = load_relu_transcoder(str(backend.pack().transcoder_paths("demo")[1]), 1, device=torch.device(backend.device),
                               lazy_encoder=False, lazy_decoder=False)
    x = torch.randn(5, d.d_in, device=backend.device)
    assert torch.allclose(d.encode(x), ref.encode(x))
    assert torch.allclose(d.decode(d.encode(x)), ref.decode(ref.encode(x)), atol=1e-6)
    assert d.w_dec.shape == (d.d_sae, d.d_in)
