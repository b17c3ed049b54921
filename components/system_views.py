"""System page pieces: device and memory figures, loaded models, estimates, diagnostics."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from backend.schemas import InfoResult, MemoryEstimate, ModelInfo
from backend.schemas.service import HealthResult


def _gb(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f} GB"


def render_backend(kind: str, remote_url: str | None, health: HealthResult | None) -> None:
    """Which backend this session uses; for a remote one, its /health."""
    if kind == "local":
        st.caption("Backend: **in-process** — models run in this app's process, on the device below.")
        return
    st.subheader("Remote backend")
    st.caption(f"Backend: **remote** — `{remote_url}`")
    if health is None:
        return
    cols = st.columns(4)
    cols[0].metric("Remote status", health.status)
    cols[1].metric("Remote device", (health.device or "?").upper(), help=health.device_name)
    cols[2].metric("Remote GPU busy", "yes" if health.busy else "no")
    cols[3].metric("Remote models loaded", len(health.loaded), help=", ".join(health.loaded) or None)
    st.caption(f"Service version {health.version} · key required: {'yes' if health.auth else 'no'}"
               + (f" · {health.message}" if health.message else ""))


def render_device(info: InfoResult) -> None:
    dev = info.device
    cols = st.columns(4)
    cols[0].metric("Device", dev.kind.upper(), help=dev.name)
    cols[1].metric("Memory used", _gb(dev.used_gb), help=f"of {_gb(dev.total_gb)}")
    cols[2].metric("Memory free", _gb(dev.free_gb))
    cols[3].metric("Environment", info.environment.kind)
    st.caption(f"**{dev.name}**" + (f" · compute capability {dev.compute_capability}" if dev.compute_capability
                                     else "") + f" · backend: {info.backend}"
               + (f" ({info.remote_url})" if info.remote_url else ""))
    st.caption(f"Model memory budget {_gb(info.memory_budget_gb)}, {_gb(info.memory_in_use_gb)} in use "
               "(FEATURESCOPE_MEMORY_BUDGET_GB).")


def loaded_frame(info: InfoResult) -> pd.DataFrame:
    return pd.DataFrame([{
        "model": m.display_name,
        "id": m.model,
        "device": m.device,
        "dtype": m.dtype,
        "memory (GB)": round(m.memory_gb, 4),
        "SAE layers": ", ".join(f"{s}: {len(ls)}" for s, ls in m.sae_layers.items()) or "—",
        "note": m.label or "",
    } for m in info.loaded])


def estimates_frame(models: Sequence[ModelInfo], estimates: dict[str, MemoryEstimate]) -> pd.DataFrame:
    rows = []
    for m in models:
        e = estimates.get(m.id)
        rows.append({
            "model": m.display_name,
            "params": f"{m.n_params / 1e9:.2f} B" if m.n_params and m.n_params >= 1e8 else
                      (f"{m.n_params / 1e6:.1f} M" if m.n_params else "—"),
            "dtype": e.dtype if e else m.dtype,
            "weights (GB)": e.weights_gb if e else None,
            "activations (GB)": e.activations_gb if e else None,
            "SAEs (GB)": e.saes_gb if e else None,
            "total (GB)": e.total_gb if e else None,
            "fits": ("yes" if e.fits else "no") if e and e.fits is not None else "?",
            "GPU needed": (e.recommended_gpu or "more than 141 GB") if e else "",
            "seed figure": m.memory_note or "",
            "availability": m.availability,
        })
    return pd.DataFrame(rows)


def render_estimate(e: MemoryEstimate) -> None:
    cols = st.columns(4)
    cols[0].metric("Weights", _gb(e.weights_gb), help=e.dtype)
    cols[1].metric("Activation cache", _gb(e.activations_gb), help=f"{e.seq_len} tokens × batch {e.batch_size}")
    cols[2].metric("SAEs", _gb(e.saes_gb), help=f"{e.sae_layers} layer(s)")
    cols[3].metric("Total", _gb(e.total_gb))
    if e.fits is True:
        st.success(f"Fits: {_gb(e.available_gb)} available on the {e.device}.", icon=":material/check:")
    elif e.fits is False:
        gpu = e.recommended_gpu or "a GPU with more than 141 GB, or several GPUs"
        st.error(f"Does not fit: needs {_gb(e.total_gb)}, {_gb(e.available_gb)} available on the {e.device}. "
                 f"It would fit on {gpu}.", icon=":material/block:")
    for note in e.notes:
        st.caption(note)


def diagnostics_text(info: InfoResult) -> str:
    """A plain-text block to paste into a bug report."""
    dev = info.device
    lines = [
        "Featurescope diagnostics",
        f"backend: {info.backend}" + (f" ({info.remote_url})" if info.remote_url else ""),
        f"environment: {info.environment.kind} {info.environment.details}",
        f"device: {dev.kind} · {dev.name} · count {dev.count}",
        f"memory: total {_gb(dev.total_gb)}, used {_gb(dev.used_gb)}, free {_gb(dev.free_gb)}",
        f"budget: {_gb(info.memory_budget_gb)}, in use {_gb(info.memory_in_use_gb)}",
        "loaded: " + (", ".join(f"{m.model} ({m.dtype}, {m.memory_gb:.3f} GB)" for m in info.loaded) or "none"),
    ]
    lines += [f"{k}: {v}" for k, v in info.versions.items()]
    lines.append("limits: " + ", ".join(f"{k}={v:g}" for k, v in info.limits.items()))
    return "\n".join(lines)
