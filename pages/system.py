"""System: the device, what is loaded, what would fit, and a diagnostics block."""

from __future__ import annotations

import streamlit as st

from backend.schemas import EstimateRequest, UnloadRequest
from components import state
from components.system_views import (
    diagnostics_text,
    estimates_frame,
    loaded_frame,
    render_backend,
    render_device,
    render_estimate,
)


def main() -> None:
    st.title("System")
    backend = state.call(state.backend)
    if backend is None:
        return
    s = state.settings()
    health = state.call(backend.health) if backend.kind == "remote" else None
    render_backend(backend.kind, s.remote_url, health)
    info = state.call(backend.info)
    if info is None:
        return
    render_device(info)

    st.subheader("Loaded models")
    if info.loaded:
        st.dataframe(loaded_frame(info), hide_index=True, width="stretch")
        c1, c2 = st.columns([2, 1])
        target = c1.selectbox("Model to unload", [m.model for m in info.loaded], key="sys_unload_model")
        if c2.button("Unload", key="sys_unload"):
            if state.call(backend.unload, UnloadRequest(model=target)) is not None:
                st.toast(f"Unloaded {target}")
                st.rerun()
        if st.button("Unload all", key="sys_unload_all"):
            if state.call(backend.unload, UnloadRequest(model=None)) is not None:
                st.rerun()
    else:
        st.caption("No model is loaded yet; the first analysis loads one.")

    st.subheader("Memory before loading")
    cat = state.catalog()
    if cat is None:
        return
    seq_len = st.number_input("Sequence length (tokens)", 1, 131072, 512, step=128, key="sys_seq_len")
    estimates = {}
    for m in cat.models:
        sae = m.sae_sets[0].id if m.sae_sets else None
        e = state.call(backend.estimate, EstimateRequest(model=m.id, seq_len=int(seq_len), sae_set=sae))
        if e is not None:
            estimates[m.id] = e
    st.dataframe(estimates_frame(cat.models, estimates), hide_index=True, width="stretch")
    st.caption("Totals count the weights, a full activation cache at this length, and every layer of the "
               "model's first SAE set. Choose a model for details.")
    names = {m.id: m.display_name for m in cat.models}
    pick = st.selectbox("Model", list(names), format_func=names.get, key="sys_estimate_model")
    model = next(m for m in cat.models if m.id == pick)
    c1, c2 = st.columns(2)
    sae_ids = [s.id for s in model.sae_sets]
    sae = c1.selectbox("SAE set", ["none", *sae_ids], key=f"sys_sae::{pick}")
    layers = None
    if sae != "none":
        all_layers = next(s.layers for s in model.sae_sets if s.id == sae)
        n = c2.slider("SAE layers loaded", 1, max(1, len(all_layers)), len(all_layers), key=f"sys_nl::{pick}")
        layers = all_layers[:n]
    e = state.call(backend.estimate, EstimateRequest(model=pick, seq_len=int(seq_len),
                                                     sae_set=None if sae == "none" else sae, sae_layers=layers))
    if e is not None:
        render_estimate(e)

    st.subheader("Diagnostics")
    st.caption("Copy this block into a bug report (the copy button is at its top right).")
    st.code(diagnostics_text(info), language="text")


main()
