"""The graph view's layout: no two node markers overlap at any size, and every logit and embedding
node has its label. Checked on the payload the canvas component receives, in its own pixels."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from scipy.spatial import cKDTree

from backend.graphfile import parse_graph
from components.graph_display import display_graph
from components.graph_view import canvas_payload, elide, layout


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


@pytest.mark.parametrize("n_nodes, n_pos, n_logits", SIZES)
@pytest.mark.parametrize("size_by", ["influence", "uniform"])
def test_no_two_node_markers_overlap(n_nodes, n_pos, n_logits, size_by):
    """The canvas draws at the layout's own size (a wide graph scrolls), so pixels are layout pixels."""
    doc = parse_graph(crowded_graph(n_nodes, n_pos=n_pos, n_logits=n_logits))
    graph = display_graph(doc, 1.0, 1.0)
    assert len(graph.nodes) == n_nodes
    g = canvas_payload(graph, size_by=size_by)
    pts = np.column_stack([g["x"], g["y"]])
    radius = np.asarray(g["r"])
    tree = cKDTree(pts)
    for i, j in tree.query_pairs(r=2 * radius.max()):
        gap = np.hypot(*(pts[i] - pts[j])) - radius[i] - radius[j]
        assert gap > 0, (g["ids"][i], g["ids"][j], gap)
    # every marker inside the plot area
    assert (pts[:, 0] - radius >= 0).all() and (pts[:, 0] + radius <= g["plot_w"]).all()
    assert (pts[:, 1] - radius >= 0).all() and (pts[:, 1] + radius <= g["plot_h"]).all()
    assert radius.min() >= 1.5, "markers stay big enough to see and click"
    assert g["width"] == g["plot_w"] + g["left"] + 10 and g["height"] > g["plot_h"]


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
    graph = display_graph(parse_graph(raw), 1.0, 1.0)
    g = canvas_payload(graph)
    index = {i: k for k, i in enumerate(g["ids"])}
    labels = {g["ids"][k]: text for k, text in g["labels"]}
    tokens = raw["metadata"]["prompt_tokens"]
    for n in raw["nodes"]:
        if n["feature_type"] == "logit":
            token = n["clerp"].split('"')[1]
            text = labels[n["node_id"]]
            assert text.startswith(token.replace(" ", "·")) and f"p={n['token_prob']:.2f}" in text
        elif n["feature_type"] == "embedding":
            full = tokens[n["ctx_idx"]].replace(" ", "·")
            # beside the node where its column leaves room, and the position label right under it
            # (too narrow a column is labelled by a neighbour's wider label instead)
            x = g["x"][index[n["node_id"]]]
            ((_, under),) = [p for p in g["positions"] if abs(p[0] - x) < 0.01]
            for text in (labels.get(n["node_id"], ""), under):
                assert text in ("", full) or (text.endswith("…") and full.startswith(text[:-1])), (text, full)
            if n_pos <= 16:
                assert under, "every position of a small graph is labelled"
            if n_pos <= 3:
                assert labels[n["node_id"]], "wide columns: the token beside the embedding too"
    labelled = [t for _, t in g["positions"] if t]
    assert len(labelled) >= len(tokens) / 3 and g["positions"][-1][1], "most positions are labelled"


def test_feature_labels_are_shortened_explanations_that_fit():
    raw = crowded_graph(64, n_pos=16, n_logits=4)
    graph = display_graph(parse_graph(raw), 1.0, 1.0)
    g = canvas_payload(graph)
    by_id = {n["node_id"]: n for n in raw["nodes"]}
    features = [(g["ids"][k], t) for k, t in g["labels"] if by_id[g["ids"][k]]["feature_type"] != "logit"
                and by_id[g["ids"][k]]["feature_type"] != "embedding"]
    assert features, "some features carry their explanation"
    for node_id, text in features:
        full = by_id[node_id]["clerp"]
        assert text == full or (text.endswith("…") and full.startswith(text[:-1]))


def test_text_goes_to_the_canvas_as_plain_text():
    """The canvas draws with fillText / textContent: no HTML entities, the raw characters."""
    raw = crowded_graph(30, n_pos=5, n_logits=2)
    raw["nodes"][-1]["clerp"] = 'Output "<x>" (p=0.500)'
    spec = json.dumps(canvas_payload(display_graph(parse_graph(raw), 1.0, 1.0)), ensure_ascii=False)
    assert "&lt;" not in spec and "&amp;" not in spec and "&quot;" not in spec
    assert "<x>" in spec and '\\"quotes\\"' in spec


def test_elide():
    assert elide("abcdef", 10) == "abcdef"
    assert elide("abcdef", 4) == "abc…"
    assert elide("abcdef", 1) == "…" and elide("abcdef", 0) == ""
