"""The layered view of an attribution graph: WebGL scatter (plotly scattergl) in the page itself.

x is the token position, y the layer: embeddings at the bottom, logits on top, feature and error
nodes in between (several nodes of one layer and position share the cell side by side). Node size
and colour follow influence, activation or type; edges are drawn in six WebGL traces by sign and
strength. Only the display-pruned graph (`components.graph_display`) is sent to the browser, so a
5,000-node graph stays interactive. Clicking a node selects it (returned to Python).

Every text plotly shows (tokens, explanations, labels) goes through `components.text.plot_label`
or `html.escape`, because plotly interprets some HTML in labels.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from components.graph_display import EMBEDDING, ERROR, FEATURE, LOGIT, DisplayGraph, DisplayNode
from components.text import plot_label, visible

KIND_COLOUR = {FEATURE: "#7b61c2", ERROR: "#9e9e9e", EMBEDDING: "#3d3d3d", LOGIT: "#2e8b57"}
# plotly's numeric symbol codes (circle, square, diamond, triangle-up): numbers validate fast
KIND_SYMBOL = {FEATURE: 0, ERROR: 1, EMBEDDING: 2, LOGIT: 5}
POSITIVE, NEGATIVE, SELECTED, PINNED = "#2c7fb8", "#d7301f", "#ff8c00", "#e6b800"
CELL = 0.84  # share of a token column the nodes of one cell spread over
PER_ROW = 12


def importance(node: DisplayNode) -> float:
    """1 for the most influential node, towards 0 for the least (cumulative influence inverted)."""
    if node.kind == LOGIT:
        return max(min(node.token_prob, 1.0), 0.0)
    if node.influence is None:
        return 0.5
    return max(0.0, 1.0 - float(node.influence))


def layout(graph: DisplayGraph) -> dict[str, tuple[float, float]]:
    """(x, y) of every node: its token column and layer row, cell-mates side by side."""
    cells: dict[tuple[int, int], list[DisplayNode]] = defaultdict(list)
    for n in graph.nodes:
        cells[(n.layer, n.pos)].append(n)
    pos: dict[str, tuple[float, float]] = {}
    for (layer, p), members in cells.items():
        members.sort(key=lambda n: (-importance(n), n.id))
        cols = min(len(members), PER_ROW)
        rows = math.ceil(len(members) / cols)
        dy = min(0.8 / rows, 0.2)
        for i, n in enumerate(members):
            r, c = divmod(i, cols)
            x = p - CELL / 2 + (c + 0.5) * CELL / cols
            y = layer + (r - (rows - 1) / 2) * dy
            pos[n.id] = (round(x, 4), round(y, 4))
    return pos


def node_title(n: DisplayNode, tokens: list[str]) -> str:
    """A short plain-text name of a node (escape before putting it in HTML or plotly)."""
    tok = visible(tokens[n.pos]) if 0 <= n.pos < len(tokens) else "?"
    if n.kind == FEATURE:
        return f"feature {n.layer}:{n.index if n.index is not None else '?'} @{n.pos} '{tok}'"
    if n.kind == ERROR:
        return f"error L{n.layer} @{n.pos} '{tok}'"
    if n.kind == EMBEDDING:
        return f"embedding @{n.pos} '{tok}'"
    return n.clerp or f"logit @{n.pos}"


def hover_text(n: DisplayNode, tokens: list[str]) -> str:
    lines = [f"<b>{html.escape(node_title(n, tokens))}</b>"]
    where = "embeddings" if n.kind == EMBEDDING else ("logits" if n.kind == LOGIT else f"layer {n.layer}")
    tok = plot_label(tokens[n.pos]) if 0 <= n.pos < len(tokens) else "?"
    lines.append(f"{where} · position {n.pos} ({tok})")
    stats = []
    if n.activation is not None:
        stats.append(f"activation {n.activation:.3f}")
    if n.influence is not None:
        stats.append(f"cumulative influence {n.influence:.3f}")
    if n.kind == LOGIT:
        stats.append(f"p = {n.token_prob:.3f}")
    if stats:
        lines.append(" · ".join(stats))
    if n.clerp and n.kind != LOGIT:
        lines.append(html.escape(n.clerp[:160]))
    if n.pinned:
        lines.append("pinned")
    return "<br>".join(lines)


def _marker_sizes(nodes: list[DisplayNode], size_by: str) -> list[float]:
    if size_by == "activation":
        top = max((abs(n.activation) for n in nodes if n.activation is not None), default=0.0) or 1.0
        return [5 + 13 * (abs(n.activation) / top if n.activation is not None else 0.3) for n in nodes]
    if size_by == "uniform":
        return [8.0] * len(nodes)
    return [5 + 13 * importance(n) for n in nodes]


def _marker_colours(nodes: list[DisplayNode], colour_by: str) -> dict[str, Any]:
    if colour_by == "type":
        return {"color": np.array([KIND_COLOUR[n.kind] for n in nodes], dtype=object)}
    if colour_by == "activation":
        values = [n.activation if n.activation is not None else 0.0 for n in nodes]
        title = "activation"
    else:
        values = [importance(n) for n in nodes]
        title = "influence"
    return {"color": np.array(values, dtype=np.float32), "colorscale": "Viridis", "showscale": True,
            "colorbar": {"title": {"text": title}, "thickness": 10}}


def _segments(segments: list[tuple[float, float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Line segments as x and y arrays with a NaN after each, as plotly draws separate lines.
    numpy arrays, because plotly validates Python lists element by element (slow at 100k points)."""
    a = np.asarray(segments, dtype=np.float32).reshape(-1, 4)
    xs = np.full((len(a), 3), np.nan, dtype=np.float32)
    ys = np.full((len(a), 3), np.nan, dtype=np.float32)
    xs[:, 0], xs[:, 1] = a[:, 0], a[:, 2]
    ys[:, 0], ys[:, 1] = a[:, 1], a[:, 3]
    return xs.ravel(), ys.ravel()


def _edge_traces(graph: DisplayGraph, pos: dict[str, tuple[float, float]]) -> list[go.Scattergl]:
    """Edges in six traces: positive / negative x three strength bands (by |weight| terciles)."""
    if not graph.edges:
        return []
    mags = sorted(abs(w) for _, _, w in graph.edges)
    cuts = [mags[len(mags) // 3], mags[(2 * len(mags)) // 3]]
    bands: dict[tuple[bool, int], list[tuple[float, float, float, float]]] = {}
    for s, t, w in graph.edges:
        if s not in pos or t not in pos:
            continue
        band = 0 if abs(w) < cuts[0] else (1 if abs(w) < cuts[1] else 2)
        bands.setdefault((w >= 0, band), []).append((*pos[s], *pos[t]))
    traces = []
    for (positive, band), segments in sorted(bands.items()):
        xs, ys = _segments(segments)
        traces.append(go.Scattergl(
            x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=band == 2,
            name="positive edges" if positive else "negative edges",
            line={"color": POSITIVE if positive else NEGATIVE, "width": (0.6, 1.2, 2.4)[band]},
            opacity=(0.22, 0.42, 0.75)[band],
        ))
    return traces


def graph_figure(graph: DisplayGraph, *, selected: str | None = None, colour_by: str = "influence",
                 size_by: str = "influence") -> go.Figure:
    pos = layout(graph)
    fig = go.Figure()
    for trace in _edge_traces(graph, pos):
        fig.add_trace(trace)
    if selected in pos:
        xs, ys = _segments([(*pos[s], *pos[t]) for s, t, _ in graph.edges if selected in (s, t)])
        fig.add_trace(go.Scattergl(x=xs, y=ys, mode="lines", hoverinfo="skip", name="selected node's edges",
                                   line={"color": SELECTED, "width": 2.5}, opacity=0.9))
    nodes = graph.nodes
    xy = np.array([pos[n.id] for n in nodes], dtype=np.float32).reshape(-1, 2)
    fig.add_trace(go.Scattergl(
        x=xy[:, 0], y=xy[:, 1], mode="markers", name="nodes",
        customdata=np.array([n.id for n in nodes], dtype=object),
        hovertext=np.array([hover_text(n, graph.tokens) for n in nodes], dtype=object),
        hovertemplate="%{hovertext}<extra></extra>", showlegend=False,
        marker={"size": np.array(_marker_sizes(nodes, size_by), dtype=np.float32),
                "symbol": np.array([KIND_SYMBOL[n.kind] for n in nodes], dtype=np.int8),
                "line": {"width": 0.5, "color": "#ffffff"}, "opacity": 0.95,
                **_marker_colours(nodes, colour_by)},
    ))
    rings = [n for n in nodes if n.pinned or n.id == selected]
    if rings:
        fig.add_trace(go.Scattergl(
            x=[pos[n.id][0] for n in rings], y=[pos[n.id][1] for n in rings], mode="markers",
            customdata=[n.id for n in rings], hoverinfo="skip", name="pinned / selected", showlegend=False,
            marker={"size": [22 if n.id == selected else 16 for n in rings], "symbol": "circle-open",
                    "line": {"width": 2.5},
                    "color": [SELECTED if n.id == selected else PINNED for n in rings]},
        ))
    n_pos = len(graph.tokens)
    step = max(1, math.ceil(n_pos / 48))
    fig.update_layout(
        height=min(1100, 260 + 34 * (graph.n_layers + 2)), margin={"l": 10, "r": 10, "t": 30, "b": 10},
        dragmode="pan", hovermode="closest", clickmode="event+select", plot_bgcolor="rgba(0,0,0,0)",
        legend={"orientation": "h", "y": 1.02, "x": 0, "yanchor": "bottom"},
        xaxis={"tickmode": "array", "tickvals": list(range(0, n_pos, step)),
               "ticktext": [plot_label(graph.tokens[p], p) for p in range(0, n_pos, step)],
               "tickangle": -45, "range": [-0.6, n_pos - 0.4], "showgrid": False, "zeroline": False},
        yaxis={"tickmode": "array", "tickvals": [-1, *range(graph.n_layers), graph.n_layers],
               "ticktext": ["Emb", *[f"L{i}" for i in range(graph.n_layers)], "Logits"],
               "range": [-1.6, graph.n_layers + 0.6], "showgrid": True, "gridcolor": "rgba(128,128,128,0.15)",
               "zeroline": False},
    )
    return fig


def render_graph_view(graph: DisplayGraph, *, key: str, selected: str | None, colour_by: str,
                      size_by: str) -> str | None:
    """Draw the graph; returns the id of a node the user clicked (None otherwise)."""
    fig = graph_figure(graph, selected=selected, colour_by=colour_by, size_by=size_by)
    event = st.plotly_chart(fig, key=key, on_select="rerun", selection_mode="points", width="stretch",
                            config={"scrollZoom": True, "displaylogo": False})
    points = (getattr(event, "selection", None) or {}).get("points", []) if event is not None else []
    for point in points:
        data = point.get("customdata")
        if isinstance(data, list):
            data = data[0] if data else None
        if isinstance(data, str):
            return data
    return None
