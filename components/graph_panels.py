"""Panels beside the graph view: the selected node, pins and supernodes, the pinned subgraph, saving.

The view state (pins, supernodes, selection) lives in `st.session_state` under the `graph_*` keys
set by pages/graph.py, and is written into the graph JSON's qParams when saved.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from components.graph_display import (
    FEATURE,
    DisplayGraph,
    DisplayNode,
    n_layers_of,
    node_edges,
    subgraph,
    to_display_node,
)
from backend.graphfile import graph_bytes, safe_file_name, with_view_state
from backend.schemas import GraphEstimate
from components import state
from components.graph_view import node_title
from components.text import plot_label, visible

MAX_SUBGRAPH_EDGES = 300  # the strongest edges between pinned groups that are drawn


def render_estimate(est: GraphEstimate) -> None:
    """What a graph will cost, before it runs."""
    with st.container(border=True):
        c = st.columns(4)
        c[0].metric("Tokens", f"{est.n_tokens}" + ("" if est.tokens_exact else " (at most)"))
        c[1].metric("Expected time", f"~{est.seconds:.0f} s" if est.seconds >= 1 else "< 1 s")
        c[2].metric(f"Memory on {est.device}", f"{est.device_gb:.2f} GB")
        c[3].metric("Host memory", f"{est.host_gb:.2f} GB")
        avail = "unknown" if est.available_device_gb is None else f"{est.available_device_gb:.2f} GB"
        fits = {True: "fits", False: "does not fit", None: "fit unknown"}[est.fits]
        st.caption(f"{est.feature_rows:,} feature nodes at most, {est.backward_passes} backward passes of "
                   f"batch {est.batch_size}; available: {avail} ({fits}). Time: {est.seconds_basis}."
                   + (" Cached: opening it costs nothing." if est.cached else ""))
        for note in est.notes:
            st.caption(note)


def nodes_frame(graph: DisplayGraph) -> pd.DataFrame:
    rows = [{"id": n.id, "type": n.kind, "layer": n.layer, "pos": n.pos,
             "token": visible(graph.tokens[n.pos]) if n.pos < len(graph.tokens) else "",
             "feature": n.index, "activation": n.activation, "influence": n.influence,
             "explanation": n.clerp, "pinned": n.pinned} for n in graph.nodes]
    return pd.DataFrame(rows, columns=["id", "type", "layer", "pos", "token", "feature", "activation",
                                       "influence", "explanation", "pinned"])


def _edge_rows(pairs: list[tuple[str, float]], by_id: dict[str, DisplayNode], tokens: list[str],
               shown: set[tuple[str, str]], node_id: str, inputs: bool) -> pd.DataFrame:
    rows = []
    for other, w in pairs:
        n = by_id.get(other)
        edge = (other, node_id) if inputs else (node_id, other)
        rows.append({"node": node_title(n, tokens) if n else other, "id": other, "weight": round(w, 5),
                     "shown": edge in shown})
    return pd.DataFrame(rows, columns=["node", "id", "weight", "shown"])


def render_node_panel(doc: dict[str, Any], graph: DisplayGraph, node_id: str, *,
                      origin: tuple[str, str] | None, pinned: list[str],
                      on_pin: Callable[[str], None]) -> None:
    """The selected node: what it is, its strongest input and output edges, and where to go with it."""
    n_layers = n_layers_of(doc)
    all_nodes = {str(n["node_id"]): to_display_node(n, n_layers) for n in doc["nodes"]}
    node = all_nodes.get(node_id)
    if node is None:
        return
    with st.container(border=True):
        c1, c2 = st.columns([3, 2])
        c1.markdown(f"**Selected: `{html.escape(node_title(node, graph.tokens))}`**")
        facts = [f"id `{node.id}`", f"type {node.kind}", f"position {node.pos}"]
        if node.activation is not None:
            facts.append(f"activation {node.activation:.4f}")
        if node.influence is not None:
            facts.append(f"cumulative influence {node.influence:.4f}")
        c1.caption(" · ".join(facts))
        if node.clerp:
            c1.text(node.clerp)
        is_pinned = node_id in pinned
        if c2.button("Unpin" if is_pinned else "Pin", key="graph_pin_toggle", icon=":material/push_pin:"):
            on_pin(node_id)
        if node.kind == FEATURE and node.index is not None and origin is not None:
            model, tc = origin
            params = {"model": model, "sae_set": tc, "feature": f"{node.layer}:{node.index}"}
            browser, steer = state.page("features"), state.page("steer")
            if browser is not None:
                c2.page_link(browser, label="Open in feature browser", query_params=params)
            if steer is not None:
                c2.page_link(steer, label="Steer this feature",
                             query_params={**params, "position": str(node.pos)})
        inputs, outputs = node_edges(doc, node_id, k=12)
        shown = {(s, t) for s, t, _ in graph.edges}
        t1, t2 = st.columns(2)
        t1.caption("Strongest input edges (in the file; `shown`: drawn at these thresholds)")
        t1.dataframe(_edge_rows(inputs, all_nodes, graph.tokens, shown, node_id, True), hide_index=True,
                     key="graph_inputs")
        t2.caption("Strongest output edges")
        t2.dataframe(_edge_rows(outputs, all_nodes, graph.tokens, shown, node_id, False), hide_index=True,
                     key="graph_outputs")


def render_pins(doc: dict[str, Any], graph: DisplayGraph, pinned: list[str],
                supernodes: list[list[str]]) -> None:
    """Pinned nodes, grouping them into labelled supernodes, and the pinned subgraph."""
    by_id = {str(n["node_id"]): to_display_node(n, n_layers_of(doc)) for n in doc["nodes"]}

    def name(i: str) -> str:
        return node_title(by_id[i], graph.tokens) if i in by_id else i

    st.markdown(f"**Pinned nodes ({len(pinned)})**")
    if not pinned:
        st.caption("Select a node and press **Pin** to build a subgraph.")
        return
    members = st.multiselect("Nodes to group", pinned, key="graph_group_members", format_func=name)
    c1, c2, c3 = st.columns([2, 1, 1])
    label = c1.text_input("Supernode label", key="graph_group_label", placeholder="e.g. 'say a number'")
    if c2.button("Group as supernode", key="graph_group", disabled=not members or not label.strip()):
        supernodes.append([label.strip(), *members])
        st.session_state.pop("graph_group_members", None)
        st.rerun()
    if c3.button("Clear pins", key="graph_clear_pins"):
        pinned.clear()
        supernodes.clear()
        st.rerun()
    for i, sn in enumerate(supernodes):
        cols = st.columns([5, 1])
        members_text = ", ".join(f"`{html.escape(name(m))}`" for m in sn[1:])
        cols[0].markdown(f"Supernode **{html.escape(sn[0])}**: {members_text}")
        if cols[1].button("Ungroup", key=f"graph_ungroup_{i}"):
            supernodes.pop(i)
            st.rerun()
    groups, edges = subgraph(doc, pinned, supernodes)
    st.plotly_chart(subgraph_figure(groups, edges, by_id, graph.tokens), key="graph_subgraph",
                    width="stretch")


def subgraph_figure(groups: dict[str, list[str]], edges: list[tuple[str, str, float]],
                    by_id: dict[str, DisplayNode], tokens: list[str]) -> go.Figure:
    """Pinned nodes and supernodes at their mean position and layer, edges summed between them."""
    pos = {}
    for label, ids in groups.items():
        found = [by_id[i] for i in ids if i in by_id]
        x = sum(n.pos for n in found) / max(len(found), 1)
        y = sum(n.layer for n in found) / max(len(found), 1)
        pos[label] = (x, y)
    fig = go.Figure()
    for a, b, w in edges[:MAX_SUBGRAPH_EDGES]:
        fig.add_trace(go.Scatter(x=[pos[a][0], pos[b][0]], y=[pos[a][1], pos[b][1]], mode="lines",
                                 hoverinfo="skip", showlegend=False,
                                 line={"color": "#2c7fb8" if w >= 0 else "#d7301f",
                                       "width": 1 + 4 * min(abs(w) / (abs(edges[0][2]) or 1), 1)}))
    labels = []
    for label, ids in groups.items():
        if len(ids) == 1 and ids[0] == label:
            labels.append(plot_label(node_title(by_id[label], tokens) if label in by_id else label))
        else:
            labels.append(plot_label(f"{label} ({len(ids)})"))
    fig.add_trace(go.Scatter(x=[p[0] for p in pos.values()], y=[p[1] for p in pos.values()],
                             mode="markers+text", text=labels, textposition="top center", hoverinfo="text",
                             marker={"size": 14, "color": "#7b61c2"}, showlegend=False))
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      xaxis={"title": "position", "zeroline": False},
                      yaxis={"title": "layer", "zeroline": False})
    return fig


def render_save(doc: dict[str, Any], pinned: list[str], supernodes: list[list[str]], clicked: str | None,
                on_save: Callable[[dict[str, Any]], str]) -> None:
    """Save the view into the graph JSON's qParams: to the library, or downloaded plain or gzipped."""
    slug = safe_file_name(str(doc["metadata"].get("slug") or "graph"))

    def current() -> dict[str, Any]:
        return with_view_state(doc, pinned=pinned, supernodes=supernodes, clicked=clicked)

    c1, c2, c3 = st.columns(3)
    if c1.button("Save to library", key="graph_save", icon=":material/save:",
                 help="Writes the graph with its pins, supernodes and selection; reopen it from "
                      "'Open a graph file'."):
        where = on_save(current())
        st.success(f"Saved as {where}", icon=":material/check:")
    c2.download_button("Download JSON", data=lambda: graph_bytes(current()), file_name=f"{slug}.json",
                       mime="application/json", key="graph_download")
    c3.download_button("Download .json.gz", data=lambda: graph_bytes(current(), compress=True),
                       file_name=f"{slug}.json.gz", mime="application/gzip", key="graph_download_gz")
