"""Attribution graphs: build one with circuit-tracer for a prompt, or open a graph file, and explore it."""

from __future__ import annotations

from typing import Any

import streamlit as st

from components.graph_display import DisplayGraph, display_graph
from backend.graphfile import library_dir, save_to_library
from backend.schemas import GraphResult
from components import state
from components.graph_panels import md_literal, nodes_frame, render_node_panel, render_pins, render_save
from components.graph_sources import render_generate_form, render_open_form
from components.graph_view import node_title, render_graph_view
from components.page_state import GraphState

S = st.session_state
COLOUR_BY = ["influence", "activation", "type"]
SIZE_BY = ["influence", "activation", "uniform"]


def displayed(doc: dict[str, Any], nt: float, et: float, pinned: list[str]) -> DisplayGraph:
    """The display-pruned graph, memoised per view so reruns (hover, clicks) cost nothing."""
    key = (S["graph_doc_id"], nt, et, tuple(pinned))
    memo = S.setdefault("graph_display_memo", {})
    if key not in memo:
        if len(memo) > 6:
            memo.clear()
        memo[key] = display_graph(doc, nt, et, pinned)
    return memo[key]


def select(node_id: str | None, *, from_picker: bool = False) -> None:
    """Select a node: from the picker, or from a click in the chart (a callback, run before the
    picker is drawn, so the picker follows)."""
    S["graph_clicked"] = node_id
    if not from_picker:
        S["graph_node_pick"] = node_id
    else:
        new_chart()
    state.set_query_params(node=node_id)


def new_chart() -> None:
    """Draw the chart as a new widget after a change made outside it (a pin, the picker): Streamlit
    drops the first click on a chart whose figure changed while it held an older selection."""
    S["graph_chart_gen"] = S.get("graph_chart_gen", 0) + 1


def render_scores(meta: dict[str, Any]) -> None:
    """circuit-tracer's graph scores, kept in the file's metadata when we built the graph."""
    scores = meta.get("scores") or {}
    if not isinstance(scores, dict) or "replacement_score" not in scores:
        return
    c = st.columns([1, 1, 3])
    c[0].metric("Replacement score", f"{float(scores['replacement_score']):.3f}",
                help="Share of the token-to-logit influence that flows through features rather than "
                     "error nodes (circuit-tracer's compute_graph_scores, on the unpruned graph).")
    c[1].metric("Completeness score", f"{float(scores.get('completeness_score', 0.0)):.3f}",
                help="Influence-weighted share of every node's inputs that come from features or tokens "
                     "rather than error nodes (circuit-tracer's compute_graph_scores).")


def viewer(doc: dict[str, Any]) -> None:
    meta = doc["metadata"]
    result: GraphResult | None = S.get("graph_result")
    name = str(meta.get("slug") or S.get("graph_name") or "graph")
    # the slug and scan can come from an uploaded file: shown as text, never as live markdown
    head = f"**{md_literal(name)}** · {md_literal(str(meta.get('scan') or 'unknown transcoders'))}"
    if result is not None:
        head += (f" · {result.n_active_features:,} active features, {result.n_feature_nodes:,} attributed"
                 f" · {'from the cache' if result.cached else f'{result.elapsed_ms / 1000:.1f} s'}")
        if result.label:
            st.info(f"Graph of a {result.label}.", icon=":material/science:")
    st.markdown(head)
    render_scores(meta)
    gs = GraphState.load()  # the view's settings, kept across pages
    start = min(max(float(gs.nt if gs.nt is not None else meta.get("node_threshold") or 1.0), 0.05), 1.0)
    if gs.key("nt") not in S:
        S[gs.key("nt")] = start
    c = st.columns([2, 2, 1, 1])
    nt = gs.take("nt", c[0].slider("Node threshold (cumulative influence kept)", 0.05, 1.0, step=0.01,
                                   key=gs.key("nt"),
                                   help="Lower keeps fewer, more influential nodes. Never re-runs attribution."))
    et = gs.take("et", c[1].slider("Edge weight kept (fraction of total |weight|)", 0.05, 1.0, step=0.01,
                                   key=gs.bind("et"), help="Lower keeps only the strongest edges."))
    colour_by = gs.take("colour", c[2].selectbox("Colour", COLOUR_BY, key=gs.bind("colour")))
    size_by = gs.take("size", c[3].selectbox("Size", SIZE_BY, key=gs.bind("size")))
    pinned, supernodes = S["graph_pinned"], S["graph_supernodes"]
    graph = displayed(doc, nt, et, pinned)
    notes = [f"Showing {len(graph.nodes):,} of {graph.total_nodes:,} nodes and {len(graph.edges):,} of "
             f"{graph.total_edges:,} edges."]
    if graph.edges_capped:
        notes.append("Edges capped to the strongest.")
    if graph.duplicate_ids:
        notes.append(f"{len(graph.duplicate_ids)} node id(s) repeat in this file; their edges go to the "
                     "first.")
    st.caption(" ".join(notes))
    view = f"{S.get('graph_chart_gen', 0)}_{nt}_{et}_{colour_by}_{size_by}"  # a new widget per view
    left, right = st.columns([2, 1])  # node detail beside the graph, as Neuronpedia shows it
    with left:
        render_graph_view(graph, key=f"graph_chart_{S['graph_doc_id']}_{view}",
                          selected=S.get("graph_clicked"),
                          colour_by=colour_by, size_by=size_by, on_pick=select)
    by_id = {n.id: n for n in graph.nodes}
    options = [None, *by_id]
    if S.get("graph_clicked") and S["graph_clicked"] not in by_id:
        options.append(S["graph_clicked"])
    if "graph_node_pick" not in S or S["graph_node_pick"] not in options:
        S["graph_node_pick"] = S.get("graph_clicked") if S.get("graph_clicked") in options else None

    def label(i: str | None) -> str:
        if i is None:
            return "none"
        if i not in by_id:
            return f"{i} (hidden at these thresholds)"
        return f"{node_title(by_id[i], graph.tokens)}  [{i}]"

    def set_pin(node_id: str, pin: bool) -> None:
        if pin and node_id not in pinned:
            pinned.append(node_id)
        elif not pin and node_id in pinned:
            pinned.remove(node_id)
        new_chart()
        st.rerun()

    with right:
        pick = st.selectbox("Selected node", options, key="graph_node_pick", format_func=label)
        if pick != S.get("graph_clicked"):
            select(pick, from_picker=True)
        if S.get("graph_clicked"):
            render_node_panel(doc, graph, S["graph_clicked"], origin=S.get("graph_origin"), pinned=pinned,
                              on_pin=set_pin)
        else:
            st.caption("Click a node (or pick one above) to see its detail here.")
    tab_pins, tab_nodes, tab_save = st.tabs(["Pinned subgraph", "Nodes", "Save / download"])
    with tab_pins:
        render_pins(doc, graph, pinned, supernodes, origin=S.get("graph_origin"), doc_id=S["graph_doc_id"])
    with tab_nodes:
        st.dataframe(nodes_frame(graph), hide_index=True, key="graph_nodes_table")
    with tab_save:
        render_save(doc, pinned, supernodes, S.get("graph_clicked"),
                    on_save=lambda d: str(save_to_library(d, library_dir(state.settings().data_dir))))


def main() -> None:
    selection = state.selection()
    cat = state.catalog()
    if selection is None or cat is None:
        return
    st.title("Attribution graph")
    st.caption("circuit-tracer attribution graphs: which transcoder features carry the prompt to its next "
               "token. Graphs are in circuit-tracer / Neuronpedia's JSON schema.")
    tab_new, tab_open = st.tabs(["Generate", "Open a graph file"])
    with tab_new:
        render_generate_form(selection.model)
    with tab_open:
        render_open_form(cat.models)
    doc = S.get("graph_doc")
    if doc is None:
        st.caption("Generate a graph, or open one, to explore it here.")
        return
    viewer(doc)


main()
