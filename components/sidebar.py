"""The shared sidebar: which backend, which model, which SAE set. The choice lives in the URL."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from backend.schemas import ModelInfo
from components import state


@dataclass(frozen=True)
class Selection:
    model: ModelInfo
    sae_set: str | None


def _model_label(m: ModelInfo) -> str:
    size = f" · {m.memory_note}" if m.memory_note else ""
    flag = "" if m.available else " (unavailable)"
    return f"{m.display_name}{size}{flag}"


BACKENDS = {"local": "In-process", "remote": "Remote"}


def render_backend_switch() -> None:
    """In-process or Remote. The remote's URL and key come from settings, secrets or the environment.
    The choice lives in `backend_kind` (read by `state.backend()`), outside the widget's own state."""
    s = state.settings()
    if st.session_state.get("backend_kind") not in BACKENDS:
        st.session_state["backend_kind"] = s.backend
    kinds = list(BACKENDS)
    kind = st.radio("Backend", kinds, index=kinds.index(st.session_state["backend_kind"]),
                    key="backend_switch", format_func=BACKENDS.get, horizontal=True,
                    disabled=not s.remote_url and st.session_state["backend_kind"] == "local",
                    help="In-process: models run here, on this machine's GPU or CPU. Remote: on the "
                         "Featurescope service at FEATURESCOPE_REMOTE_URL (Modal, RunPod, a GPU server).")
    st.session_state["backend_kind"] = kind
    if kind == "remote":
        st.caption(f"Remote service: `{s.remote_url}`" if s.remote_url else
                   "Set FEATURESCOPE_REMOTE_URL to the service's address.")
    elif not s.remote_url:
        st.caption("For a remote GPU, set FEATURESCOPE_REMOTE_URL and FEATURESCOPE_API_KEY.")


def render_sidebar() -> Selection | None:
    """Backend switch, model and SAE-set pickers; returns the current choice (None if the catalog failed)."""
    with st.sidebar:
        render_backend_switch()
    cat = state.catalog()
    if cat is None:
        return None
    models = {m.id: m for m in cat.models}
    if st.session_state.get("model") not in models:  # first run, or a backend without the chosen model
        wanted = state.query_param("model", cat.default_model)
        st.session_state["model"] = wanted if wanted in models else cat.default_model
    with st.sidebar:
        model_id = st.selectbox("Model", list(models), key="model",
                                format_func=lambda mid: _model_label(models[mid]))
        model = models[model_id]
        if not model.available:
            st.warning(model.availability, icon=":material/cloud_off:")
        elif model.label:
            st.info(model.label, icon=":material/science:")
        else:
            st.caption(model.availability)
        sets = [s.id for s in model.sae_sets]
        sae_set = None
        if sets:
            key = f"sae_set::{model_id}"
            if key not in st.session_state:
                wanted = state.query_param("sae_set")
                st.session_state[key] = wanted if wanted in sets else sets[0]
            names = {s.id: s.display_name for s in model.sae_sets}
            sae_set = st.selectbox("SAE set", sets, key=key, format_func=lambda s: names[s])
        else:
            st.caption("This model has no SAE set in the catalog.")
    state.set_query_params(model=model_id, sae_set=sae_set)
    return Selection(model=model, sae_set=sae_set)
