"""The graph view's layout: no two node markers overlap at any size, and every logit and embedding
node has its label. Checked on the figure plotly receives, in the plot's own pixels."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from scipy.spatial import cKDTree

from backend.graphfile import parse_graph
from components.graph_display import display_graph
from components.graph_view import elide, graph_figure, layout


def crowded_graph(n_nodes: int, *, n_pos: int, n_layers: int = 6, n_logits: int = 10, seed: int = 0,
                  last_share: float = 0.6) -> dict:
    """A graph in circuit-tracer's schema shaped like real ones: most features at the last position
    (as a 47-token prompt puts them), the rest spread; one embedding per position; logits with tokens."""
    rng = random.Random(seed)
    tokens = [f" word{i}" for i in range(n_pos - 2)] + [' "quoted" & <b>bold</b>', "."]
    nodes = [{"node_id": f"E_{100 + p}_{p}", "feature": 100 + p, "layer": "E", "ctx_idx": p,
              "feature_type": "embedding"} for p in range(n_pos)]
    n_features = n_nodes - n_pos - n_logits
    for i in range(n_features):
        layer = rng.randrange(n_layers)
        pos = n_pos - 1 if rng.random() < last_share else rng.randrange(n_pos)
        nodes.append({"node_id": f"{layer}_{i}_{pos}", "feature": i, "layer": str(layer), "ctx_idx": pos,
                      "feature_type": "cross layer transcoder", "influence": (i + 1) / (n_features + 1),
                      "activation": rng.random(), "clerp": f"explanation number {i} with \"quotes\""})
    probs = sorted((rng.random() for _ in range(n_logits)), reverse=True)
    for k, p in enumerate(probs):
        nodes.append({"node_id": f"{n_layers + 1}_{k}_{n_pos - 1}", "feature": k, "layer": str(n_layers + 1),
                      "ctx_idx": n_pos - 1, "feature_type": "logit", "token_prob": p / sum(probs),
                      "clerp": f'Output " tok{k}" (p={p / sum(probs):.3f})'})
    ids = [n["node_id"] for n in nodes]
    links = [{"source": rng.choice(ids), "target": rng.choice(ids), "weight": rng.gauss(0, 1)}
             for _ in range(n_nodes * 3)]
    for n in nodes[n_pos: n_pos + n_features]:  # every feature reached from an embedding, reaching a logit
        links.append({"source": ids[n["ctx_idx"]], "target": n["node_id"], "weight": 0.5})
        links.append({"source": n["node_id"], "target": ids[-1], "weight": -0.5})
    meta = {"slug": "crowded", "scan": "x", "prompt_tokens": tokens, "prompt": "", "node_threshold": 0.8}
    return {"metadata": meta, "nodes": nodes, "links": links}


SIZES = [(7, 3, 1), (64, 16, 4), (5000, 64, 10)]  # nodes, positions, logits


def traces(fig, name):
    return [t for t in fig.data if t.name == name]


def to_pixels(fig, xs, ys):
    """Data coordinates to the plot area's pixels, as plotly maps them at this figure's size."""
    lay = fig.layout
    w = lay.width - lay.margin.l - lay.margin.r
    h = lay.height - lay.margin.t - lay.margin.b
    (x0, x1), (y0, y1) = lay.xaxis.range, lay.yaxis.range
    return (np.asarray(xs) - x0) * w / (x1 - x0), (np.asarray(ys) - y0) * h / (y1 - y0)


@pytest.mark.parametrize("n_nodes, n_pos, n_logits", SIZES)
@pytest.mark.parametrize("size_by", ["influence", "uniform"])
@pytest.mark.parametrize("narrowed", [1.0, 0.75])
def test_no_two_node_markers_overlap(n_nodes, n_pos, n_logits, size_by, narrowed):
    """At the figure's own size, and when Streamlit narrows it to 75% in a smaller column (marker
    sizes are pixels and do not shrink with it)."""
    doc = parse_graph(crowded_graph(n_nodes, n_pos=n_pos, n_logits=n_logits))
    graph = display_graph(doc, 1.0, 1.0)
    assert len(graph.nodes) == n_nodes
    fig = graph_figure(graph, size_by=size_by)
    (nodes,) = traces(fig, "nodes")
    px, py = to_pixels(fig, nodes.x, nodes.y)
    px, py = px * narrowed, py * narrowed
    radius = np.asarray(nodes.marker.size) / 2
    pts = np.column_stack([px, py])
    tree = cKDTree(pts)
    pairs = tree.query_pairs(r=2 * radius.max())
    for i, j in pairs:
        gap = np.hypot(*(pts[i] - pts[j])) - radius[i] - radius[j]
        assert gap > 0, (nodes.customdata[i], nodes.customdata[j], gap)
    # every marker inside the plot area, so none is hidden by the axes
    w = fig.layout.width - fig.layout.margin.l - fig.layout.margin.r
    h = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    assert (px - radius >= 0).all() and (px + radius <= w * narrowed).all()
    assert (py - radius >= 0).all() and (py + radius <= h * narrowed).all()
    assert radius.min() >= 1.5, "markers stay big enough to see and click"


@pytest.mark.parametrize("n_nodes, n_pos, n_logits", SIZES)
def test_nodes_sit_in_their_position_column_and_layer_band(n_nodes, n_pos, n_logits):
    doc = parse_graph(crowded_graph(n_nodes, n_pos=n_pos, n_logits=n_logits))
    graph = display_graph(doc, 1.0, 1.0)
    lay = layout(graph)
    for n in graph.nodes:
        x, y = lay.xy[n.id]
        left, right = lay.columns[n.pos]
        bottom, top = lay.bands[n.layer]
        assert left <= x <= right and bottom <= y <= top, n.id
    # columns left to right by position, bands bottom to top: embeddings, layers, logits
    assert all(a[1] < b[0] for a, b in zip(lay.columns, lay.columns[1:]))
    order = sorted(lay.bands)
    assert order[0] == -1 and order[-1] == graph.n_layers
    assert all(lay.bands[a][1] < lay.bands[b][0] for a, b in zip(order, order[1:]))
    # within a cell the most influential feature comes first (top row, left)
    last = [n for n in graph.nodes if n.kind == "feature" and n.pos == n_pos - 1 and n.layer == 0]
    if len(last) > 1:
        best = min(last, key=lambda n: n.influence)
        top_left = min(last, key=lambda n: (-lay.xy[n.id][1], lay.xy[n.id][0]))
        assert best.id == top_left.id


@pytest.mark.parametrize("n_nodes, n_pos, n_logits", SIZES)
def test_logit_and_embedding_nodes_have_their_labels(n_nodes, n_pos, n_logits):
    raw = crowded_graph(n_nodes, n_pos=n_pos, n_logits=n_logits)
    doc = parse_graph(raw)
    graph = display_graph(doc, 1.0, 1.0)
    fig = graph_figure(graph)
    (labels,) = traces(fig, "logit labels")
    (nodes,) = traces(fig, "nodes")
    where = dict(zip(nodes.customdata, zip(nodes.x, nodes.y)))
    logits = [n for n in raw["nodes"] if n["feature_type"] == "logit"]
    assert len(labels.text) == len(logits) == n_logits
    for n in logits:
        token = n["clerp"].split('"')[1]
        y = where[n["node_id"]][1]
        text = min(zip(labels.y, labels.text), key=lambda yt: abs(yt[0] - y))[1]
        assert text.startswith(token.replace(" ", "·")) and f"p={n['token_prob']:.2f}" in text
    assert all(x > where[logits[0]["node_id"]][0] for x in labels.x), "labels to the right of the nodes"
    # embeddings: the position's tick right under each, showing its token (elided to the column)
    ticks = dict(zip(fig.layout.xaxis.tickvals, fig.layout.xaxis.ticktext))
    (positions,) = traces(fig, "positions")
    tokens = raw["metadata"]["prompt_tokens"]
    for n in raw["nodes"]:
        if n["feature_type"] == "embedding":
            x = where[n["node_id"]][0]
            tick_x = min(ticks, key=lambda t: abs(t - x))
            assert abs(tick_x - x) < 0.01
            text = ticks[tick_x]
            full = tokens[n["ctx_idx"]].replace(" ", "·").replace("&", "&amp;").replace("<", "&lt;")
            full = full.replace(">", "&gt;")
            (hover,) = [h for h in positions.hovertext if h.startswith(f"position {n['ctx_idx']}: ")]
            assert hover == f"position {n['ctx_idx']}: {full}", "the full token shows on hover"
            if text:  # too narrow a column is labelled by a neighbour's wider label instead
                assert text == full or (text.endswith("…") and full.startswith(text[:-1].rstrip("&;")))
    labelled = [t for t in fig.layout.xaxis.ticktext if t]
    assert len(labelled) >= len(tokens) / 3 and fig.layout.xaxis.ticktext[-1], "most positions are labelled"
    assert fig.layout.xaxis.tickangle == 0, "position labels are horizontal"


def test_labels_and_hover_are_escaped_once():
    raw = crowded_graph(30, n_pos=5, n_logits=2)
    raw["nodes"][-1]["clerp"] = 'Output "<x>" (p=0.500)'
    fig = graph_figure(display_graph(parse_graph(raw), 1.0, 1.0))
    spec = json.dumps(json.loads(fig.to_json()), ensure_ascii=False)  # as the browser receives it
    assert "&quot;" not in spec and "&#x27;" not in spec, "quotes are not entities in plotly"
    assert "<b>bold</b>" not in spec and "&lt;b&gt;bold&lt;/b&gt;" in spec
    assert "&lt;x&gt;" in spec and "&amp;amp;" not in spec
    (nodes,) = traces(fig, "nodes")
    assert any('"quotes"' in h for h in nodes.hovertext), "explanations shown with their quotes"


def test_elide():
    assert elide("abcdef", 10) == "abcdef"
    assert elide("abcdef", 4) == "abc…"
    assert elide("abcdef", 1) == "…" and elide("abcdef", 0) == ""
