"""Panels beside the graph view: the selected node, pins and supernodes, the pinned subgraph, saving.

The view state (pins, supernodes, selection) lives in `st.session_state` under the `graph_*` keys
set by pages/graph.py, and is written into the graph JSON's qParams when saved.
"""

from __future__ import annotations

import re
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
from backend.schemas import FeatureRef, FeatureRequest, GraphEstimate
from components import state
from components.feature_dashboard import render_examples, render_logits
from components.graph_steer import render_subgraph_steering
from components.graph_view import node_title, plot_escape
from components.text import visible

MAX_SUBGRAPH_EDGES = 300  # the strongest edges between pinned groups that are drawn
DETAIL_EXAMPLES = 5  # top activating corpus examples shown for the selected feature



SUPERNODE_LABEL_CHARS = 80  # drawn beside its group in the subgraph


def md_literal(text: str) -> str:
    """`text` for st.markdown, shown as written: every markdown (and Streamlit directive) character
    backslash-escaped, so a slug such as `[x](https://…)` stays text, not a link."""
    return state.markdown_text(" ".join(text.split()))


def graph_prompt(doc: dict[str, Any]) -> str:
    """The prompt the graph was made from, without the special token circuit-tracer puts first
    (steering adds its own), so positions on the steering page are the graph's positions."""
    meta = doc["metadata"]
    prompt = str(meta.get("prompt") or "")
    tokens = meta.get("prompt_tokens") or []
    first = str(tokens[0]) if tokens else ""
    if first and re.fullmatch(r"<[^<>\s]+>", first) and prompt.startswith(first):
        return prompt[len(first):]
    return prompt or "".join(str(t) for t in tokens[1:])


def node_links(doc: dict[str, Any], node: DisplayNode, origin: tuple[str, str]) -> tuple[dict[str, str],
                                                                                        dict[str, str]]:
    """Query parameters for the feature browser and for steering one feature node: the graph's model
    and transcoder set (never the sidebar's SAE set), the feature, and for steering the graph's
    prompt and the node's position."""
    model, tc = origin
    browser = {"model": model, "sae_set": tc, "feature": f"{node.layer}:{node.index}"}
    return browser, {**browser, "position": str(node.pos), "prompt": graph_prompt(doc)}


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
                      on_pin: Callable[[str, bool], None]) -> None:
    """The selected node: what it is, its strongest input and output edges, and where to go with it."""
    n_layers = n_layers_of(doc)
    all_nodes = {str(n["node_id"]): to_display_node(n, n_layers) for n in doc["nodes"]}
    node = all_nodes.get(node_id)
    if node is None:
        return
    with st.container(border=True):
        c1 = c2 = st  # stacked: the panel is a narrow column beside the graph
        c1.markdown("**Selected node**")
        c1.text(node_title(node, graph.tokens))  # plain text: escaped once, by Streamlit
        facts = [f"id `{node.id}`", f"type {node.kind}", f"position {node.pos}"]
        if node.activation is not None:
            facts.append(f"activation {node.activation:.4f}")
        if node.influence is not None:
            facts.append(f"cumulative influence {node.influence:.4f}")
        c1.caption(" · ".join(facts))
        if node.clerp:
            c1.text(node.clerp)
        # One key per (action, node), and the action is a set, not a flip: a click that reaches the
        # script twice (sent again while a rerun was under way) pins once instead of pinning and
        # unpinning, and a click meant for another node can never act on this one.
        is_pinned = node_id in pinned
        action = "unpin" if is_pinned else "pin"
        if c2.button("Unpin" if is_pinned else "Pin", key=f"graph_{action}_{node_id}", icon=":material/push_pin:"):
            on_pin(node_id, not is_pinned)
        if node.kind == FEATURE and node.index is not None and origin is not None:
            to_browser, to_steer = node_links(doc, node, origin)
            browser, steer = state.page("features"), state.page("steer")
            if browser is not None:
                c2.page_link(browser, label="Open in feature browser", query_params=to_browser)
            if steer is not None:
                c2.page_link(steer, label="Steer this feature", query_params=to_steer)
        inputs, outputs = node_edges(doc, node_id, k=12)
        shown = {(s, t) for s, t, _ in graph.edges}
        t1 = t2 = st
        t1.caption("Strongest input edges (in the file; `shown`: drawn at these thresholds)")
        t1.dataframe(_edge_rows(inputs, all_nodes, graph.tokens, shown, node_id, True), hide_index=True,
                     key="graph_inputs")
        t2.caption("Strongest output edges")
        t2.dataframe(_edge_rows(outputs, all_nodes, graph.tokens, shown, node_id, False), hide_index=True,
                     key="graph_outputs")
        if node.kind == FEATURE and node.index is not None and origin is not None:
            render_feature_detail(origin, node)


def render_feature_detail(origin: tuple[str, str], node: DisplayNode) -> None:
    """The selected feature as its dashboard shows it: top activating corpus examples (the activating
    token outlined) and the logits its decoder direction promotes and suppresses."""
    model, tc = origin
    req = FeatureRequest(feature=FeatureRef(model=model, sae_set=tc, layer=node.layer, index=node.index or 0),
                         n_examples=DETAIL_EXAMPLES, n_quantiles=0, n_logits=8)
    result = state.session_cached("graph_feature", "feature", req, "Loading the feature's corpus examples…",
                                  size=32)
    if result is None:
        return
    st.markdown(f"**Top activating examples** (max activation in the corpus "
                f"{result.max_activation or 0:.3g}; the activating token is outlined)")
    render_examples(result.examples[:DETAIL_EXAMPLES], result.max_activation)
    for note in result.notes:
        st.caption(note)
    render_logits(result, key="graph_feature_logits")


def render_pins(doc: dict[str, Any], graph: DisplayGraph, pinned: list[str], supernodes: list[list[str]], *,
                origin: tuple[str, str] | None = None, doc_id: str = "") -> None:
    """Pinned nodes, grouping them into labelled supernodes, the pinned subgraph, and steering it."""
    n_layers = n_layers_of(doc)  # once: it scans every node
    by_id = {str(n["node_id"]): to_display_node(n, n_layers) for n in doc["nodes"]}

    def name(i: str) -> str:
        return node_title(by_id[i], graph.tokens) if i in by_id else i

    st.markdown(f"**Pinned nodes ({len(pinned)})**")
    if not pinned:
        st.caption("Select a node and press **Pin** to build a subgraph.")
        return
    members = st.multiselect("Nodes to group", pinned, key="graph_group_members", format_func=name)
    c1, c2, c3 = st.columns([2, 1, 1])
    label = c1.text_input("Supernode label", key="graph_group_label", placeholder="e.g. 'say a number'")
    if c2.button("Group as supernode", key="graph_group", disabled=not members):
        problem = state.text_problem(label, "The label", "Type a label for the supernode.", SUPERNODE_LABEL_CHARS)
        if problem:  # a label is drawn on the subgraph and saved in the file: a short name, not a text
            state.warn(problem)
        else:
            supernodes.append([" ".join(label.split()), *members])
            st.session_state.pop("graph_group_members", None)
            st.rerun()
    if c3.button("Clear pins", key="graph_clear_pins"):
        pinned.clear()
        supernodes.clear()
        st.session_state["graph_chart_gen"] = st.session_state.get("graph_chart_gen", 0) + 1  # see pages/graph.py
        st.rerun()
    for i, sn in enumerate(supernodes):
        cols = st.columns([5, 1])
        members_text = ", ".join(md_literal(name(m)) for m in sn[1:])
        cols[0].markdown(f"Supernode **{md_literal(sn[0])}**: {members_text}")
        if cols[1].button("Ungroup", key=f"graph_ungroup_{i}"):
            supernodes.pop(i)
            st.rerun()
    groups, edges = subgraph(doc, pinned, supernodes)
    st.plotly_chart(subgraph_figure(groups, edges, by_id, graph.tokens, graph.n_layers), key="graph_subgraph",
                    width="stretch")
    render_subgraph_steering(graph_prompt(doc), origin, pinned, supernodes, by_id, graph.tokens, doc_id)


def subgraph_cells(groups: dict[str, list[str]], by_id: dict[str, DisplayNode]) -> dict[str, tuple[int, int]]:
    """(position, layer) of every group on the graph's integer grid: a pinned node's own; a supernode's
    last member position and its members' most common layer (ties: the higher)."""
    cells = {}
    for label, ids in groups.items():
        found = [by_id[i] for i in ids if i in by_id]
        if not found:
            cells[label] = (0, 0)
            continue
        layers = [n.layer for n in found]
        layer = max(set(layers), key=lambda k: (layers.count(k), k))
        cells[label] = (max(n.pos for n in found), layer)
    return cells


def subgraph_layout(groups: dict[str, list[str]], by_id: dict[str, DisplayNode]) -> tuple[
        dict[str, tuple[float, float]], list[int], list[int]]:
    """Where each group is drawn: x is the column of its position (only positions with pins get one),
    y its layer; cell-mates side by side within ±0.35 of the cell's integer centre. Also the used
    positions and layers (the axis ticks are at 0, 1, … and at the layers)."""
    cells = subgraph_cells(groups, by_id)
    used_pos = sorted({p for p, _ in cells.values()})
    used_layers = sorted({layer for _, layer in cells.values()})
    column = {p: i for i, p in enumerate(used_pos)}
    mates: dict[tuple[int, int], list[str]] = {}
    for label, cell in cells.items():
        mates.setdefault(cell, []).append(label)
    xy = {}
    for (p, layer), labels in mates.items():
        k = len(labels)
        for i, label in enumerate(labels):
            offset = 0.0 if k == 1 else -0.35 + 0.7 * i / (k - 1)
            xy[label] = (column[p] + offset, float(layer))
    return xy, used_pos, used_layers


def subgraph_figure(groups: dict[str, list[str]], edges: list[tuple[str, str, float]],
                    by_id: dict[str, DisplayNode], tokens: list[str], n_layers: int) -> go.Figure:
    """The pinned subgraph on the graph's integer position/layer grid: pinned nodes as dots, supernodes
    as labelled squares sized by their members, edges summed between them (blue +, red −)."""
    pos, used_pos, used_layers = subgraph_layout(groups, by_id)
    fig = go.Figure()
    top = abs(edges[0][2]) if edges else 1.0
    for a, b, w in edges[:MAX_SUBGRAPH_EDGES]:
        fig.add_trace(go.Scatter(x=[pos[a][0], pos[b][0]], y=[pos[a][1], pos[b][1]], mode="lines",
                                 hoverinfo="skip", showlegend=False,
                                 line={"color": "#2c7fb8" if w >= 0 else "#d7301f",
                                       "width": 1 + 4 * min(abs(w) / (top or 1), 1)}))
    labels, hovers, sizes, symbols = [], [], [], []
    for label, ids in groups.items():
        single = len(ids) == 1 and ids[0] == label
        if single:
            node = by_id.get(label)
            text = node_title(node, tokens) if node else label
            if node is not None and node.clerp and node.kind == FEATURE:
                text += f" · {node.clerp[:40]}"
            labels.append(plot_escape(text[:60]))
            hovers.append(plot_escape(text))
            sizes.append(14)
            symbols.append("circle")
        else:
            names = ", ".join(node_title(by_id[i], tokens) if i in by_id else i for i in ids)
            labels.append(f"<b>{plot_escape(label[:40])}</b> ({len(ids)})")
            hovers.append(plot_escape(f"supernode {label}: {names}"[:400]))
            sizes.append(min(18 + 4 * len(ids), 40))
            symbols.append("square")
    fig.add_trace(go.Scatter(x=[pos[g][0] for g in groups], y=[pos[g][1] for g in groups],
                             mode="markers+text", text=labels, textposition="top center", name="groups",
                             hovertext=hovers, hovertemplate="%{hovertext}<extra></extra>",
                             customdata=list(groups),
                             marker={"size": sizes, "symbol": symbols, "color": "#7b61c2", "opacity": 0.85},
                             showlegend=False))

    def layer_name(k: int) -> str:
        return "Emb" if k < 0 else ("Logits" if k >= n_layers else f"L{k}")

    fig.update_layout(
        height=max(280, 90 * len(used_layers) + 80), margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"tickmode": "array", "tickvals": list(range(len(used_pos))), "zeroline": False,
               "ticktext": [plot_escape(f"{p}: {visible(tokens[p]) if p < len(tokens) else '?'}")
                            for p in used_pos],
               "range": [-0.7, len(used_pos) - 0.3], "title": "position (token)"},
        yaxis={"tickmode": "array", "tickvals": used_layers, "ticktext": [layer_name(k) for k in used_layers],
               "range": [min(used_layers, default=0) - 0.6, max(used_layers, default=0) + 0.8],
               "zeroline": False, "title": "layer"})
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
