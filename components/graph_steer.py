"""Steering from the pinned subgraph: pick pinned features (or a supernode's) and an operation, and
run the Backend protocol's `steer` on the graph's own prompt, each feature at the position of its
node. The request is the one the steering page sends for the same edits (a link from a graph node
ablates the feature at its position, with `token_active_position` there), so the numbers agree;
the answer is shown with the steering page's own views (DEFAULT vs STEERED, ΔCE, KL, moved
logits, next-token probabilities).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from backend.schemas import SteerFeature, SteerRequest
from components import state
from components.graph_display import FEATURE, DisplayNode
from components.graph_view import node_title
from components.steer_views import render_metrics, render_side_by_side, topk_frame

S = st.session_state
OPERATIONS = {"ablate": "ablate (set to 0)", "alpha": "scale by", "delta": "add", "set_value": "set to"}
DEFAULTS = {"n_tokens": 16, "temperature": 0.0, "top_k": 5, "freq_penalty": 0.0, "seed": 0,
            "freeze_attention": False}  # the steering page's defaults


def steer_edits(nodes: list[DisplayNode], operation: str, amount: float | None, sae_set: str) -> list[SteerFeature]:
    """One intervention per feature node, at its own position (where it is active)."""
    edits = []
    for n in nodes:
        if n.kind != FEATURE or n.index is None:
            continue
        op: dict[str, Any] = {"ablate": True} if operation == "ablate" else {operation: float(amount or 0.0)}
        edits.append(SteerFeature(layer=n.layer, index=n.index, sae_set=sae_set, steer_positions=[n.pos],
                                  token_active_position=n.pos, **op))
    return edits


def steer_request(prompt: str, origin: tuple[str, str], nodes: list[DisplayNode], operation: str,
                  amount: float | None, n_tokens: int) -> SteerRequest:
    model, tc = origin
    return SteerRequest(model=model, sae_set=tc, prompt=prompt, features=steer_edits(nodes, operation, amount, tc),
                        **{**DEFAULTS, "n_tokens": n_tokens})


def render_subgraph_steering(prompt: str, origin: tuple[str, str] | None, pinned: list[str],
                             supernodes: list[list[str]], by_id: dict[str, DisplayNode],
                             tokens: list[str], doc_id: str) -> None:
    """The 'steer from the subgraph' form and its answer."""
    st.markdown("**Steer from the subgraph** — on the graph's own prompt, each feature at its node's "
                "position")
    if origin is None:
        st.caption("This graph's model and transcoders are not in this catalog, so it cannot be steered here.")
        return
    if not prompt.strip():
        st.caption("This graph file carries no prompt to steer on.")
        return
    features = [i for i in pinned if i in by_id and by_id[i].kind == FEATURE]
    choices = features + [f"supernode::{k}" for k, sn in enumerate(supernodes)
                          if any(m in by_id and by_id[m].kind == FEATURE for m in sn[1:])]
    if not choices:
        st.caption("Pin feature nodes (or group them into a supernode) to steer them.")
        return

    def name(choice: str) -> str:
        if choice.startswith("supernode::"):
            sn = supernodes[int(choice.split("::", 1)[1])]
            return f"supernode {sn[0]} ({len(sn) - 1})"
        return node_title(by_id[choice], tokens)

    picked = st.multiselect("Features to steer", choices, default=choices[:1], key="graph_steer_pick",
                            format_func=name)
    c = st.columns([2, 1, 1, 1])
    operation = c[0].selectbox("Operation", list(OPERATIONS), key="graph_steer_op",
                               format_func=OPERATIONS.get)
    amount = c[1].number_input("Amount", value=0.0 if operation != "alpha" else 2.0, step=0.5,
                               key=f"graph_steer_amount_{operation}", disabled=operation == "ablate")
    most = state.limits().max_new_tokens  # the backend's bound, not the page's
    n_tokens = int(c[2].number_input("Tokens", 1, most, min(DEFAULTS["n_tokens"], most), key="graph_steer_tokens"))
    run = c[3].button("Steer", key="graph_steer_run", type="primary", disabled=not picked)
    if run:
        nodes: list[DisplayNode] = []
        for choice in picked:
            ids = supernodes[int(choice.split("::", 1)[1])][1:] if choice.startswith("supernode::") else [choice]
            nodes += [by_id[i] for i in ids if i in by_id and by_id[i] not in nodes]
        req = steer_request(prompt, origin, nodes, operation, None if operation == "ablate" else amount, n_tokens)
        with state.progress("Steering on the graph's prompt…") as progress:
            result = state.call(state.backend().steer, req, progress=progress)
        S["graph_steer"] = (doc_id, req, result) if result is not None else None
    kept = S.get("graph_steer")
    if not kept or kept[0] != doc_id:  # an answer belongs to the graph it was asked of
        return
    _, req, result = kept
    st.caption(f"{len(req.features)} intervention(s): " + ", ".join(
        f"{f.layer}:{f.index}@{f.steer_positions[0]} {f.operation}"
        + ("" if f.amount is None else f" {f.amount:g}") for f in req.features))
    render_side_by_side(result)
    render_metrics(result)
    st.markdown("**Top next-token probabilities at every position**")
    st.dataframe(topk_frame(result), hide_index=True, width="stretch", key="graph_steer_topk")
