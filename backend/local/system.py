"""`info`, `catalog`, `estimate` and `unload`: what runs where, what the catalog offers, what would fit."""

from __future__ import annotations

import os

from backend import compute
from backend.catalog import ModelEntry
from backend.local.runtime import Runtime
from backend.schemas import (
    CatalogResult,
    EstimateRequest,
    InfoResult,
    LoadedModelInfo,
    MemoryEstimate,
    ModelInfo,
    UnloadRequest,
)

GB = compute.GB


def availability(rt: Runtime, entry: ModelEntry) -> tuple[bool, str]:
    if entry.source == "demo":
        return True, rt.pack().label or "Offline demo pack (assets/demo)."
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(entry.hf_repo or entry.tl_name, "config.json"), str)
    if cached:
        return True, "In the local Hugging Face cache."
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False, "Not in the local Hugging Face cache, and HF_HUB_OFFLINE=1."
    gated = " Gated: needs HF_TOKEN with access." if entry.gated else ""
    return True, f"Downloads from the Hugging Face hub on first load.{gated}"


def model_info(rt: Runtime, entry: ModelEntry, loaded: bool) -> ModelInfo:
    """The catalog entry as the UI sees it: every SAE and transcoder set with its real layers."""
    layers = {(f.kind, f.id): list(f.layers) for f in entry.feature_sets()}
    available, why = availability(rt, entry)
    return ModelInfo.model_validate({
        **entry.model_dump(exclude={"sae_sets", "transcoder_sets"}),
        "sae_sets": [{**s.model_dump(), "layers": layers[("sae", s.id)]} for s in entry.sae_sets.values()],
        "transcoder_sets": [{**t.model_dump(), "layers": layers[("transcoder", t.id)]}
                            for t in entry.transcoder_sets.values()],
        "loaded": loaded, "available": available, "availability": why,
        "label": rt.pack().label if entry.source == "demo" else None,
    })


def catalog(rt: Runtime) -> CatalogResult:
    loaded = {m.entry.id for m in rt.models.resident()}
    models = rt.catalog_entries().models
    infos = [model_info(rt, entry, entry.id in loaded) for entry in models.values()]
    default = rt.settings.default_model
    return CatalogResult(models=infos, default_model=default if default in models else "demo")


def info(rt: Runtime) -> InfoResult:
    loaded = [
        LoadedModelInfo(model=m.entry.id, display_name=m.entry.display_name, device=m.device,
                        dtype=m.dtype, memory_gb=round(m.nbytes() / GB, 4),
                        sae_layers=m.loaded_layers(), label=m.label)
        for m in rt.models.resident()
    ]
    return InfoResult(
        backend="local",
        device=compute.device_info(rt.device),
        environment=compute.detect_environment(),
        loaded=loaded,
        memory_budget_gb=round(rt.models.budget_bytes / GB, 3),
        memory_in_use_gb=round(sum(m.memory_gb for m in loaded), 4),
        versions={**compute.versions(), **compute.cuda_details()},
        limits={k: float(v) for k, v in rt.limits.model_dump().items()},
    )


def estimate(rt: Runtime, req: EstimateRequest) -> MemoryEstimate:
    entry = rt.model_entry(req.model)
    dtype = req.dtype or rt.dtype_for(entry)
    n_layers, d_sae = 0, None
    if req.sae_set:
        s = entry.sae_set(req.sae_set)
        n_layers = len(req.sae_layers) if req.sae_layers is not None else len(s.layers or ())
        d_sae = s.d_sae
    free = rt.models.device_free_bytes()
    room = rt.models.budget_bytes - rt.models.in_use_bytes()
    available = room if free is None else min(room, free)
    return compute.estimate_memory(entry, seq_len=req.seq_len, batch_size=req.batch_size, dtype=dtype,
                                   device=rt.device, sae_layers=n_layers, d_sae=d_sae,
                                   available_gb=max(available, 0) / GB)


def unload(rt: Runtime, req: UnloadRequest) -> InfoResult:
    rt.models.unload(req.model)
    return info(rt)
