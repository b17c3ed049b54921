"""The layered view of an attribution graph: a canvas drawn by a small custom component
(`components/graph_canvas/`: index.html and vanilla JS, no build step) from a compact payload.

x is the token position, y the layer: embeddings at the bottom, logits on top. The layout works in
screen pixels (`layout`): each position's column is as wide as its busiest cell needs, each layer's
band as tall as its busiest cell needs, and the nodes of one (position, layer) cell sit on a grid of
slots inside it, most influential first, so no two markers are ever drawn on top of each other (a
marker is smaller than its slot). The figure asks for exactly that size, so a plot pixel is a
layout pixel (or, in a narrower column, markers keep a gap down to 75% of that size). Logit nodes
carry their token and probability beside them; position labels are the tokens, horizontal, elided
to their column (the full token on hover below the axis).

Only the display-pruned graph (`components.graph_display`) is sent to the browser, so a 5,000-node
graph stays interactive. Edges are thin and translucent under the nodes; hovering a node highlights
its edges and dims the rest; clicking a node returns {id, nonce} to Python. A graph wider than the
page scrolls sideways inside the view. The canvas draws text with fillText (and the tooltip with
textContent), so labels here are plain text, never HTML. `plot_escape` stays for the plotly
subgraph (`graph_panels`).
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import streamlit.components.v1 as st_components

from components.graph_display import EMBEDDING, ERROR, FEATURE, LOGIT, DisplayGraph, DisplayNode
from components.text import visible

KIND_COLOUR = {FEATURE: "#7b61c2", ERROR: "#9e9e9e", EMBEDDING: "#3d3d3d", LOGIT: "#2e8b57"}
# plotly's numeric symbol codes (circle, square, diamond, triangle-up): numbers validate fast
POSITIVE, NEGATIVE, SELECTED, PINNED = "#2c7fb8", "#d7301f", "#ff8c00", "#e6b800"

PLOT_WIDTH = 610  # px of the plot area (676 px with the margins): the graph's column (2/3 of the page's wide
# layout beside the sidebar, 685 px on a 1,500 px window) shows it whole; a graph that needs more scrolls
SPREAD_ROWS, SPREAD_MIN_SLOT = 4, 7
MIN_BAND = 28.0  # px: the least height of a layer band, so the layers read as rows
LABEL_PITCH = 13.0  # px between logit nodes, whose labels sit beside them
COMFORTABLE_BAND = 110  # px per layer band: markers get smaller (to the smallest slot) to stay within it,
# so a busy cell spreads sideways rather than into a tall stripe
MAX_PLOT_HEIGHT = 2400  # px; else the biggest markers within this; else the figure grows taller
SLOTS = (18, 16, 14, 12, 10, 9, 8, 7, 6)  # px between node centres, largest that fits wins (else the view scrolls)
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


def position_tips(graph: DisplayGraph, n_positions: int) -> list[str]:
    """The hover text of each position label: the position and its whole token, never elided."""
    return [f"position {p}: {visible(graph.tokens[p]) if p < len(graph.tokens) else '?'}"
            for p in range(n_positions)]


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


VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
FEATURE_LABEL_MIN_CHARS = 6  # a feature's explanation is drawn beside it when at least this many fit
CANVAS_CHAR_PX = 6.0  # width of one character at the canvas's 11 px font
CANVAS_MARGIN = {"l": 56, "r": 10, "t": 12, "b": 26}
_COMPONENT = st_components.declare_component("graph_canvas", path=str(Path(__file__).with_name("graph_canvas")))


def viridis(v: float) -> str:
    """A colour for v in [0, 1] on the viridis scale (linear between five stops)."""
    v = min(max(v, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(v), len(VIRIDIS) - 2)
    f = v - i
    a, b = VIRIDIS[i], VIRIDIS[i + 1]
    return "#%02x%02x%02x" % tuple(round(a[k] + (b[k] - a[k]) * f) for k in range(3))


def marker_sizes(nodes: list[DisplayNode], size_by: str, biggest: float) -> list[float]:
    """Diameters between 75% and 100% of `biggest` (the layout's marker size)."""
    if size_by == "activation":
        top = max((abs(n.activation) for n in nodes if n.activation is not None), default=0.0) or 1.0
        share = [abs(n.activation) / top if n.activation is not None else 0.3 for n in nodes]
    elif size_by == "uniform":
        share = [1.0] * len(nodes)
    else:
        share = [importance(n) for n in nodes]
    return [round(biggest * (0.75 + 0.25 * s), 2) for s in share]


def marker_colours(nodes: list[DisplayNode], colour_by: str) -> list[str]:
    if colour_by == "type":
        return [KIND_COLOUR[n.kind] for n in nodes]
    if colour_by == "activation":
        values = [abs(n.activation) if n.activation is not None else 0.0 for n in nodes]
        top = max(values, default=0.0) or 1.0
        return [viridis(v / top) for v in values]
    return [viridis(importance(n)) for n in nodes]


def tooltip(n: DisplayNode, tokens: list[str]) -> str:
    """The plain-text hover of a node (the canvas sets it with textContent)."""
    lines = [node_title(n, tokens)]
    if n.kind == FEATURE and n.clerp:
        lines.append(elide(" ".join(n.clerp.split()), 200))
    where = "embeddings" if n.kind == EMBEDDING else ("logits" if n.kind == LOGIT else f"layer {n.layer}")
    tok = visible(tokens[n.pos]) if 0 <= n.pos < len(tokens) else "?"
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
    if n.pinned:
        lines.append("pinned")
    return "\n".join(lines)


def node_labels(graph: DisplayGraph, lay: Layout) -> dict[str, str]:
    """Text drawn beside nodes: logit token and probability, embedding token, and a feature's
    explanation shortened to the room before the next node in its row (or its column's edge)."""
    labels = dict(lay.labels)
    rows: dict[tuple[int, float], list[DisplayNode]] = defaultdict(list)
    for n in graph.nodes:
        if n.kind in (FEATURE, EMBEDDING):
            rows[(n.pos, lay.xy[n.id][1])].append(n)
    n_cols = len(lay.columns)
    for (p, _), members in rows.items():
        members.sort(key=lambda n: lay.xy[n.id][0])
        edge = lay.columns[min(max(p, 0), n_cols - 1)][1] + lay.gap
        for k, n in enumerate(members):
            right = lay.xy[members[k + 1].id][0] - lay.slot / 2 if k + 1 < len(members) else edge
            room = int((right - lay.xy[n.id][0] - lay.marker / 2 - 3) / CANVAS_CHAR_PX)
            if n.kind == EMBEDDING:
                tok = visible(graph.tokens[n.pos]) if 0 <= n.pos < len(graph.tokens) else "?"
                text = elide(tok, max(room, 0))
            else:
                text = short_explanation(n, room) if room >= FEATURE_LABEL_MIN_CHARS else ""
            if text:
                labels[n.id] = text
    return labels


def canvas_payload(graph: DisplayGraph, *, selected: str | None = None, colour_by: str = "influence",
                   size_by: str = "influence", width: float = PLOT_WIDTH) -> dict[str, Any]:
    """Everything the canvas draws, in compact columns: positions in plot pixels from the bottom-left
    of the plot area (the pixel layout), edges as a flat [source index, target index, weight, ...]."""
    lay = layout(graph, width)
    nodes = graph.nodes
    index = {n.id: i for i, n in enumerate(nodes)}
    edges: list[float] = []
    for s, t, w in sorted(graph.edges, key=lambda e: abs(e[2])):  # weakest first, so strong ones end on top
        if s in index and t in index:
            edges += [index[s], index[t], round(float(w), 5)]
    labels = node_labels(graph, lay)
    ring = {n.id: (SELECTED if n.id == selected else PINNED) for n in nodes if n.pinned or n.id == selected}
    m = CANVAS_MARGIN
    band_names = [[k, round(a, 2), round(b, 2), "Emb" if k < 0 else ("Logits" if k == graph.n_layers else f"L{k}")]
                  for k, (a, b) in sorted(lay.bands.items())]
    centres = [(a + b) / 2 for a, b in lay.columns]
    return {
        "ids": [n.id for n in nodes],
        "x": [lay.xy[n.id][0] for n in nodes], "y": [lay.xy[n.id][1] for n in nodes],
        "r": [s / 2 for s in marker_sizes(nodes, size_by, lay.marker)],
        "colour": marker_colours(nodes, colour_by), "kind": [n.kind for n in nodes],
        "title": [tooltip(n, graph.tokens) for n in nodes],
        "ring": [ring.get(n.id) for n in nodes],
        "labels": [[index[i], t] for i, t in labels.items() if i in index],
        "edges": edges, "edge_max": max((abs(w) for _, _, w in graph.edges), default=1.0) or 1.0,
        "bands": band_names,
        "positions": [[round(c, 2), t] for c, t in zip(centres, position_labels(graph, lay), strict=True)],
        "position_tips": position_tips(graph, len(centres)),
        "selected": selected if selected in index else None,
        "slot": lay.slot, "left": m["l"], "top": m["t"], "plot_w": lay.width, "plot_h": lay.height,
        "width": lay.width + m["l"] + m["r"], "height": lay.height + m["t"] + m["b"],
    }


def render_graph_view(graph: DisplayGraph, *, key: str, selected: str | None, colour_by: str,
                      size_by: str, on_pick: Callable[[str], None]) -> None:
    """Draw the graph; a click on a node calls `on_pick(node id)` before the rerun it causes, so the
    rerun already shows the selection. The click carries a nonce, so clicking the same node again
    still counts."""
    payload = canvas_payload(graph, selected=selected, colour_by=colour_by, size_by=size_by)
    seen = f"{key}__nonce"

    def picked() -> None:
        value = st.session_state.get(key)
        if isinstance(value, dict) and isinstance(value.get("id"), str) and value.get("nonce") != \
                st.session_state.get(seen):
            st.session_state[seen] = value.get("nonce")
            on_pick(value["id"])

    _COMPONENT(graph=payload, key=key, on_change=picked, default=None, height=int(payload["height"]) + 4)
