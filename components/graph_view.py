"""The layered view of an attribution graph: WebGL scatter (plotly scattergl) in the page itself.

x is the token position, y the layer: embeddings at the bottom, logits on top. The layout works in
screen pixels (`layout`): each position's column is as wide as its busiest cell needs, each layer's
band as tall as its busiest cell needs, and the nodes of one (position, layer) cell sit on a grid of
slots inside it, most influential first, so no two markers are ever drawn on top of each other (a
marker is smaller than its slot). The figure asks for exactly that size, so a plot pixel is a
layout pixel (or, in a narrower column, markers keep a gap down to 75% of that size). Logit nodes
carry their token and probability beside them; position labels are the tokens, horizontal, elided
to their column (the full token on hover below the axis).

Only the display-pruned graph (`components.graph_display`) is sent to the browser, so a 5,000-node
graph stays interactive. Clicking a node selects it (returned to Python).

plotly interprets a little HTML in labels and turns `&lt;`, `&gt;`, `&amp;` and numeric entities
back into characters, so every text it shows goes through `plot_escape` exactly once.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from components.graph_display import EMBEDDING, ERROR, FEATURE, LOGIT, DisplayGraph, DisplayNode
from components.text import visible

KIND_COLOUR = {FEATURE: "#7b61c2", ERROR: "#9e9e9e", EMBEDDING: "#3d3d3d", LOGIT: "#2e8b57"}
# plotly's numeric symbol codes (circle, square, diamond, triangle-up): numbers validate fast
KIND_SYMBOL = {FEATURE: 0, ERROR: 1, EMBEDDING: 2, LOGIT: 5}
POSITIVE, NEGATIVE, SELECTED, PINNED = "#2c7fb8", "#d7301f", "#ff8c00", "#e6b800"

PLOT_WIDTH = 880  # px of the plot area (the figure is 946 px; the page's wide layout leaves about that
# beside the sidebar on a 1,500 px window, and Streamlit narrows a figure wider than its column)
SPREAD_ROWS, SPREAD_MIN_SLOT = 4, 7
MIN_BAND = 28.0  # px: the least height of a layer band, so the layers read as rows
LABEL_PITCH = 13.0  # px between logit nodes, whose labels sit beside them
COMFORTABLE_BAND = 110  # px per layer band: markers get smaller (to the smallest slot) to stay within it,
# so a busy cell spreads sideways rather than into a tall stripe
MAX_PLOT_HEIGHT = 2400  # px; else the biggest markers within this; else the figure grows taller
SLOTS = (18, 16, 14, 12, 10, 9, 8, 7, 6, 5, 4)  # px between node centres, largest that fits wins
MARKER_SHARE = 0.7  # a marker's largest diameter, as a share of its slot: markers never touch, even when
# Streamlit narrows the figure to 75% of its width (a column of 710 px: a 1,280 px window with the sidebar)
LOGIT_LABEL_ROOM = 150  # px right of the last column for the logit labels
LABEL_CHARS = 24  # longest logit label, in characters
CHAR_PX = 7.0  # width of one tick-label character at plotly's default 12 px font
MARGIN = {"l": 56, "r": 10, "t": 56, "b": 40}


def plot_escape(text: str) -> str:
    """Text for a plotly label or hover, escaped once: plotly reads `<br>`, `<b>` and the like, and
    decodes `&lt;`/`&gt;`/`&amp;` itself (quotes need no escaping and `&quot;` would show as is)."""
    return html.escape(text, quote=False)


def importance(node: DisplayNode) -> float:
    """1 for the most influential node, towards 0 for the least (cumulative influence inverted)."""
    if node.kind == LOGIT:
        return max(min(node.token_prob, 1.0), 0.0)
    if node.influence is None:
        return 0.5
    return max(0.0, 1.0 - float(node.influence))


def elide(text: str, chars: int) -> str:
    """`text` cut to `chars` characters, with … where it was cut (nothing when no room at all)."""
    if chars <= 0:
        return ""
    return text if len(text) <= chars else (text[: chars - 1] + "…" if chars > 1 else "…")


def logit_label(n: DisplayNode) -> str:
    """A logit node's label: its token (circuit-tracer's clerp is `Output "tok" (p=0.123)`)."""
    tok = n.clerp
    if tok.startswith('Output "') and '" (p=' in tok:
        tok = tok[len('Output "'): tok.rindex('" (p=')]
    return f"{elide(visible(tok), LABEL_CHARS - 9)}  p={n.token_prob:.2f}"


@dataclass
class Layout:
    """Where every node is drawn, in plot pixels from the bottom-left corner of the plot area."""

    xy: dict[str, tuple[float, float]]
    slot: float  # px between neighbouring node centres (at least)
    gap: float  # px between two columns
    marker: float  # the largest marker diameter, px (< slot)
    width: float  # plot area, px
    height: float
    columns: list[tuple[float, float]]  # per position: (left, right) px
    bands: dict[int, tuple[float, float]]  # per layer row (-1 embeddings … n_layers logits): (bottom, top)
    labels: dict[str, str] = field(default_factory=dict)  # node id -> text drawn beside it (logits)


def gap_of(slot: float) -> float:
    """Space between two columns (and between two layer bands)."""
    return max(slot / 4, 2.0)


def _cell_counts(graph: DisplayGraph, n_pos: int) -> tuple[dict[tuple[int, int], list[DisplayNode]], np.ndarray]:
    cells: dict[tuple[int, int], list[DisplayNode]] = defaultdict(list)
    for n in graph.nodes:
        cells[(min(max(n.pos, 0), n_pos - 1), n.layer)].append(n)
    counts = np.zeros((n_pos, graph.n_layers + 2), dtype=np.int64)  # layer row = layer + 1
    for (p, layer), members in cells.items():
        counts[p, layer + 1] = len(members)
    return cells, counts


def _grid(counts: np.ndarray, slot: float, width: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Columns per position and rows per layer for this slot size, within `width`: the fewest rows
    per cell r such that giving each position ceil(busiest cell / r) columns fits. None when even
    one column per position is too wide."""
    body = counts[:, :-1]  # logits stack in one column (their labels go beside them)
    widest = np.maximum(body.max(axis=1), 1)
    gap = gap_of(slot)

    def columns(r: int) -> np.ndarray:
        return np.ceil(widest / r).astype(np.int64)

    def fits(cols: np.ndarray) -> bool:
        return float((cols * slot + gap).sum()) <= width

    low, high = 1, int(widest.max())
    if not fits(columns(high)):
        return None
    while low < high:  # the smallest r that fits
        mid = (low + high) // 2
        if fits(columns(mid)):
            high = mid
        else:
            low = mid + 1
    cols = columns(low)
    rows = np.ceil(body / cols[:, None]).astype(np.int64).max(axis=0)
    rows = np.append(rows, counts[:, -1].max())
    return cols, np.maximum(rows, 1)


def layout(graph: DisplayGraph, width: float = PLOT_WIDTH, max_height: float = MAX_PLOT_HEIGHT) -> Layout:
    """Pixel positions of every node (see the module docstring)."""
    n_pos = max(len(graph.tokens), max((n.pos + 1 for n in graph.nodes), default=1), 1)
    cells, counts = _cell_counts(graph, n_pos)
    room = width - LOGIT_LABEL_ROOM
    fits = []  # (slot, columns, rows, height) for every slot size whose columns fit the width
    for slot in SLOTS:
        grid = _grid(counts, slot, room)
        if grid is not None:
            fits.append((slot, *grid, float((grid[1] * slot + gap_of(slot)).sum())))
    # the biggest markers (of at least SPREAD_MIN_SLOT) with cells at most SPREAD_ROWS rows tall, so a
    # busy position spreads sideways; else those that keep every band about COMFORTABLE_BAND tall, else within
    # max_height, else the smallest markers (a graph that big grows taller)
    comfortable = max(COMFORTABLE_BAND * counts.shape[1], 400.0)
    spread = next((f[:3] for f in fits if f[0] >= SPREAD_MIN_SLOT and f[2][:-1].max() <= SPREAD_ROWS), None)
    chosen = spread or next((f[:3] for f in fits if f[3] <= comfortable), None) or next(
        (f[:3] for f in fits if f[3] <= max_height), None) or (fits[-1][:3] if fits else None)
    if chosen is None:  # more positions than fit: the figure grows wider than `width`
        slot = SLOTS[-1]
        chosen = (slot, *_grid(counts, slot, n_pos * (slot + gap_of(slot)) + room))  # type: ignore[misc]
    slot, cols, rows = chosen
    gap = gap_of(slot)
    col_w = (cols * slot).astype(np.float64)
    spare = max(room - (col_w + gap).sum(), 0.0)
    # spare width goes first to narrow columns, so their labels are readable, then to all alike
    want = np.maximum(min(48.0, room / n_pos - gap) - col_w, 0.0)
    if want.sum() > 0:
        give = want * min(1.0, spare / want.sum())
        col_w, spare = col_w + give, spare - give.sum()
    col_w = col_w + spare / n_pos
    columns, x = [], gap / 2
    for w in col_w:
        columns.append((float(x), float(x + w)))
        x += w + gap
    plot_w = x - gap / 2 + LOGIT_LABEL_ROOM
    pitch = {r - 1: float(slot) for r in range(len(rows))}  # row pitch per band
    pitch[graph.n_layers] = max(float(slot), LABEL_PITCH)  # logits: their labels must not overlap
    bands, y = {}, gap / 2
    for r, n_rows in enumerate(rows):
        height = max(n_rows * pitch[r - 1], MIN_BAND)
        bands[r - 1] = (float(y), float(y + height))
        y += height + gap
    xy: dict[str, tuple[float, float]] = {}
    labels: dict[str, str] = {}
    for (p, layer), members in cells.items():
        members.sort(key=lambda n: (-importance(n), n.id))
        left, right = columns[p]
        bottom, top = bands[layer]
        c = 1 if layer == graph.n_layers else int(cols[p])
        used_rows = math.ceil(len(members) / c)
        dy = pitch[layer]
        y0 = (bottom + top) / 2 + (used_rows - 1) * dy / 2  # the first row on top, centred in the band
        for i, n in enumerate(members):
            r, k = divmod(i, c)
            in_row = min(c, len(members) - r * c)
            x0 = (left + right) / 2 - (in_row - 1) * slot / 2
            xy[n.id] = (round(x0 + k * slot, 2), round(y0 - r * dy, 2))
            if n.kind == LOGIT:
                labels[n.id] = logit_label(n)
    return Layout(xy=xy, slot=float(slot), gap=float(gap), marker=MARKER_SHARE * slot, width=float(plot_w),
                  height=float(y), columns=columns, bands=bands, labels=labels)


def position_labels(graph: DisplayGraph, lay: Layout) -> list[str]:
    """The x-axis labels: each position's token, elided to its column's width; where columns are
    too narrow for three characters, every k-th position is labelled with the room of k columns
    (the full token of every position shows on hover just below the axis)."""
    widths = [right - left + lay.gap for left, right in lay.columns]
    narrow = min(widths, default=0.0)
    stride = 1 if narrow >= 3 * CHAR_PX else math.ceil(3 * CHAR_PX / max(narrow, 1.0))
    out = []
    for p, w in enumerate(widths):
        if stride > 1 and p % stride and p != len(widths) - 1:
            out.append("")
            continue
        tok = visible(graph.tokens[p]) if p < len(graph.tokens) else "?"
        out.append(elide(tok, int(w * stride / CHAR_PX) if stride > 1 else int(w / CHAR_PX)))
    return out


def node_title(n: DisplayNode, tokens: list[str]) -> str:
    """A short plain-text name of a node (escape it for the medium that shows it)."""
    tok = visible(tokens[n.pos]) if 0 <= n.pos < len(tokens) else "?"
    if n.kind == FEATURE:
        return f"feature {n.layer}:{n.index if n.index is not None else '?'} @{n.pos} '{tok}'"
    if n.kind == ERROR:
        return f"error L{n.layer} @{n.pos} '{tok}'"
    if n.kind == EMBEDDING:
        return f"embedding @{n.pos} '{tok}'"
    return n.clerp or f"logit @{n.pos}"


def short_explanation(n: DisplayNode, chars: int = 60) -> str:
    return elide(" ".join(n.clerp.split()), chars) if n.kind == FEATURE else ""


def hover_text(n: DisplayNode, tokens: list[str]) -> str:
    head = node_title(n, tokens)
    if short_explanation(n):
        head += f" · {short_explanation(n)}"
    lines = [f"<b>{plot_escape(head)}</b>"]
    where = "embeddings" if n.kind == EMBEDDING else ("logits" if n.kind == LOGIT else f"layer {n.layer}")
    tok = plot_escape(visible(tokens[n.pos])) if 0 <= n.pos < len(tokens) else "?"
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
    if n.clerp and n.kind == FEATURE and len(" ".join(n.clerp.split())) > 60:
        lines.append(plot_escape(elide(n.clerp, 200)))
    if n.pinned:
        lines.append("pinned")
    return "<br>".join(lines)


def _marker_sizes(nodes: list[DisplayNode], size_by: str, biggest: float) -> np.ndarray:
    """Diameters between 75% and 100% of `biggest` (the layout's marker size)."""
    if size_by == "activation":
        top = max((abs(n.activation) for n in nodes if n.activation is not None), default=0.0) or 1.0
        share = [abs(n.activation) / top if n.activation is not None else 0.3 for n in nodes]
    elif size_by == "uniform":
        share = [1.0] * len(nodes)
    else:
        share = [importance(n) for n in nodes]
    return np.array([biggest * (0.75 + 0.25 * s) for s in share], dtype=np.float32)


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
            # horizontal, above the plot: a colorbar at the side would narrow the plot area
            "colorbar": {"title": {"text": title, "side": "top"}, "thickness": 8, "len": 0.25, "orientation": "h",
                         "x": 1.0, "xanchor": "right", "y": 1.0, "yanchor": "bottom"}}


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
            opacity=(0.18, 0.35, 0.65)[band],
        ))
    return traces


def graph_figure(graph: DisplayGraph, *, selected: str | None = None, colour_by: str = "influence",
                 size_by: str = "influence", width: float = PLOT_WIDTH) -> go.Figure:
    lay = layout(graph, width)
    pos = lay.xy
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
        marker={"size": _marker_sizes(nodes, size_by, lay.marker),
                "symbol": np.array([KIND_SYMBOL[n.kind] for n in nodes], dtype=np.int8),
                "line": {"width": 0.5, "color": "#ffffff"}, "opacity": 0.95,
                **_marker_colours(nodes, colour_by)},
    ))
    if lay.labels:  # logit nodes: token and probability beside each
        ids = list(lay.labels)
        fig.add_trace(go.Scatter(
            x=[pos[i][0] + lay.slot * 0.6 for i in ids], y=[pos[i][1] for i in ids], mode="text",
            text=[plot_escape(lay.labels[i]) for i in ids], textposition="middle right",
            textfont={"size": 11}, hoverinfo="skip", name="logit labels", showlegend=False))
    rings = [n for n in nodes if n.pinned and n.id != selected] + [n for n in nodes if n.id == selected]
    if rings:
        fig.add_trace(go.Scattergl(
            x=[pos[n.id][0] for n in rings], y=[pos[n.id][1] for n in rings], mode="markers",
            customdata=[n.id for n in rings], hoverinfo="skip", name="pinned / selected", showlegend=False,
            marker={"size": [lay.slot * 1.25 for _ in rings], "symbol": "circle-open", "line": {"width": 2},
                    "color": [SELECTED if n.id == selected else PINNED for n in rings]},
        ))
    centres = [(a + b) / 2 for a, b in lay.columns]
    tokens = [visible(graph.tokens[p]) if p < len(graph.tokens) else "?" for p in range(len(centres))]
    fig.add_trace(go.Scatter(  # the full token on hover just below each position label
        x=centres, y=[-lay.slot * 0.9] * len(centres), mode="markers", name="positions", showlegend=False,
        marker={"size": 14, "opacity": 0}, hovertemplate="%{hovertext}<extra></extra>",
        hovertext=[plot_escape(f"position {p}: {t}") for p, t in enumerate(tokens)]))
    below = lay.slot * 1.6  # room for the positions' hover targets under the embeddings
    band_mid = {layer: (a + b) / 2 for layer, (a, b) in lay.bands.items()}
    fig.update_layout(
        width=lay.width + MARGIN["l"] + MARGIN["r"], height=lay.height + below + MARGIN["t"] + MARGIN["b"],
        margin=MARGIN, dragmode="pan", hovermode="closest", clickmode="event+select",
        plot_bgcolor="rgba(0,0,0,0)", legend={"orientation": "h", "y": 1.0, "x": 0, "yanchor": "bottom"},
        xaxis={"tickmode": "array", "tickvals": centres,
               "ticktext": [plot_escape(t) for t in position_labels(graph, lay)],
               "tickangle": 0, "range": [0, lay.width], "showgrid": False, "zeroline": False,
               "fixedrange": False},
        yaxis={"tickmode": "array", "tickvals": list(band_mid.values()),
               "ticktext": ["Emb" if k < 0 else ("Logits" if k == graph.n_layers else f"L{k}")
                            for k in band_mid],
               "range": [-below, lay.height], "showgrid": True,
               "gridcolor": "rgba(128,128,128,0.12)", "zeroline": False},
    )
    return fig


def picked_node(event: Any) -> str | None:
    """The node id of a chart selection event (the first point that carries one)."""
    points = ((event or {}).get("selection") or {}).get("points") or []
    for point in points:
        data = point.get("customdata")
        if isinstance(data, list):
            data = data[0] if data else None
        if isinstance(data, str):
            return data
    return None


def render_graph_view(graph: DisplayGraph, *, key: str, selected: str | None, colour_by: str,
                      size_by: str, on_pick: Callable[[str], None]) -> None:
    """Draw the graph; a click on a node calls `on_pick(node id)` before the rerun it causes, so the
    rerun already shows the selection."""
    fig = graph_figure(graph, selected=selected, colour_by=colour_by, size_by=size_by)

    def picked() -> None:
        node = picked_node(st.session_state.get(key))
        if node is not None:
            on_pick(node)

    st.plotly_chart(fig, key=key, on_select=picked, selection_mode="points", width="content",
                    config={"scrollZoom": True, "displaylogo": False})
