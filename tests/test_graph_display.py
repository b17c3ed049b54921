"""Display-time pruning, graph files and the WebGL figure: no attribution is ever re-run here."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from backend.errors import InvalidRequest
from components.graph_display import MAX_EDGES, display_graph, node_edges, subgraph
from backend.graphfile import graph_bytes, parse_graph, view_state, with_view_state
from backend.schemas import GraphRequest
from components.graph_view import canvas_payload

THRESHOLDS = [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]


@pytest.fixture(scope="module")
def doc(backend):
    """A demo-pack graph pruned loosely, so the sliders have plenty to remove."""
    req = GraphRequest(prompt="Pack my box with five dozen jugs", model="demo", max_feature_nodes=200,
                       batch_size=64, node_threshold=0.95, edge_threshold=0.98)
    return backend.attribute(req).graph


def shown(doc, nt, et, pinned=()):
    g = display_graph(doc, nt, et, pinned)
    return {n.id for n in g.nodes}, {(s, t) for s, t, _ in g.edges}


def test_a_stricter_threshold_never_adds_nodes_or_edges(doc):
    """Thresholds mean what circuit-tracer's do (the share kept), so stricter is lower: moving
    either slider down from any setting keeps a subset of the nodes and of the edges."""
    views = {(nt, et): shown(doc, nt, et) for nt, et in itertools.product(THRESHOLDS, THRESHOLDS)}
    for (nt1, et1), (nt2, et2) in itertools.product(views, views):
        if nt1 <= nt2 and et1 <= et2:
            nodes1, edges1 = views[(nt1, et1)]
            nodes2, edges2 = views[(nt2, et2)]
            assert nodes1 <= nodes2 and edges1 <= edges2, ((nt1, et1), (nt2, et2))
    sizes = [len(views[(t, t)][1]) for t in THRESHOLDS]
    assert sizes[0] < sizes[-1], "the sliders do remove edges"
    assert len(views[(0.1, 1.0)][0]) < len(views[(1.0, 1.0)][0]), "and nodes"


def test_displayed_edges_are_the_files_and_every_node_is_connected(doc):
    weights = {(e["source"], e["target"]): e["weight"] for e in doc["links"]}
    for nt, et in [(0.3, 0.5), (0.7, 0.9), (1.0, 1.0)]:
        g = display_graph(doc, nt, et)
        ids = {n.id for n in g.nodes}
        for s, t, w in g.edges:
            assert weights[(s, t)] == w and s in ids and t in ids
        has_out = {s for s, _, _ in g.edges}
        has_in = {t for _, t, _ in g.edges}
        for n in g.nodes:
            if n.kind in ("feature", "error"):
                assert n.id in has_out
            if n.kind == "feature":
                assert n.id in has_in
        assert {n.kind for n in g.nodes} >= {"embedding", "logit"}
    everything = display_graph(doc, 1.0, 1.0)
    assert len(everything.nodes) == len(doc["nodes"]) and len(everything.edges) == len(doc["links"])


def test_pinned_nodes_stay_at_any_threshold(doc):
    feature = next(n["node_id"] for n in sorted(doc["nodes"], key=lambda n: -(n["influence"] or 0))
                   if n["feature_type"] == "cross layer transcoder")
    nodes, _ = shown(doc, 0.05, 0.05)
    assert feature not in nodes
    nodes, _ = shown(doc, 0.05, 0.05, pinned=[feature])
    assert feature in nodes


def test_node_edges_lists_the_strongest_first(doc):
    fan_in = {n["node_id"]: sum(1 for e in doc["links"] if e["target"] == n["node_id"]) for n in doc["nodes"]}
    target = max(fan_in, key=fan_in.get)
    inputs, _ = node_edges(doc, target, k=5)
    every = sorted((abs(e["weight"]) for e in doc["links"] if e["target"] == target), reverse=True)
    assert [abs(w) for _, w in inputs] == every[:5]


def test_subgraph_sums_edges_between_supernodes():
    doc = {"metadata": {"prompt_tokens": ["a", "b"]}, "nodes": [], "links": [
        {"source": "x", "target": "z", "weight": 1.0}, {"source": "y", "target": "z", "weight": -0.25},
        {"source": "x", "target": "y", "weight": 5.0}, {"source": "z", "target": "w", "weight": 2.0}]}
    groups, edges = subgraph(doc, ["x", "y", "z"], [["xy", "x", "y"]])
    assert groups == {"xy": ["x", "y"], "z": ["z"]}
    assert edges == [("xy", "z", 0.75)]  # x->y is inside the group; w is not pinned


def synthetic_graph(n_features: int, n_layers: int = 8, n_pos: int = 64, seed: int = 0) -> dict:
    rng = random.Random(seed)
    tokens = [f"t{i}" for i in range(n_pos - 2)]
    tokens += ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>"]
    nodes = [{"node_id": f"E_{p}_{p}", "feature": p, "layer": "E", "ctx_idx": p, "feature_type": "embedding",
              "influence": 0.5} for p in range(n_pos)]
    cums = sorted(rng.random() for _ in range(n_features))
    for i, cum in enumerate(cums):
        layer, pos = rng.randrange(n_layers), rng.randrange(n_pos)
        nodes.append({"node_id": f"{layer}_{i}_{pos}", "feature": i, "layer": str(layer), "ctx_idx": pos,
                      "feature_type": "cross layer transcoder", "influence": cum, "activation": rng.random(),
                      "clerp": "<b onmouseover=alert(1)>bold</b>"})
    nodes.append({"node_id": f"{n_layers + 1}_7_{n_pos - 1}", "feature": 7, "layer": str(n_layers + 1),
                  "ctx_idx": n_pos - 1, "feature_type": "logit", "token_prob": 0.9, "clerp": 'Output "<x>"'})
    ids = [n["node_id"] for n in nodes]
    links = [{"source": rng.choice(ids[:-1]), "target": rng.choice(ids[n_pos:]), "weight": rng.gauss(0, 1)}
             for _ in range(n_features * 12)]
    meta = {"slug": "big", "scan": "x", "prompt_tokens": tokens, "prompt": "", "node_threshold": 0.8}
    return {"metadata": meta,
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": nodes, "links": links}


def test_a_5000_node_graph_goes_to_the_canvas_compact_and_pruned():
    doc = parse_graph(synthetic_graph(5000))
    full = display_graph(doc, 1.0, 1.0)
    assert len(full.nodes) > 4000 and full.edges_capped and MAX_EDGES - 500 < len(full.edges) <= MAX_EDGES
    g = canvas_payload(full)
    assert len(g["ids"]) == len(g["x"]) == len(g["y"]) == len(g["r"]) == len(full.nodes)
    assert len(g["edges"]) == 3 * len(full.edges), "edges as flat (source, target, weight) triples"
    index = {i: k for k, i in enumerate(g["ids"])}
    s, t, w = full.edges[0]
    triples = set(zip(g["edges"][0::3], g["edges"][1::3], g["edges"][2::3]))
    assert (index[s], index[t], round(w, 5)) in triples
    assert len(json.dumps(g)) < 4_000_000, "the payload stays a few MB at 5,000 nodes"
    small = display_graph(doc, 0.3, 0.3)
    assert len(canvas_payload(small)["ids"]) == len(small.nodes) < len(full.nodes), "only the pruned graph is sent"


def test_payload_carries_tokens_and_explanations_as_plain_text():
    doc = parse_graph(synthetic_graph(60, n_pos=8))
    g = canvas_payload(display_graph(doc, 1.0, 1.0))
    spec = json.dumps(g)
    assert "&lt;" not in spec, "the canvas sets text with fillText/textContent: no entities"
    assert any("<script" in t for t in g["title"]) or any("<script" in t for _, t in g["positions"])


def test_neuronpedia_style_files_load_with_their_extras_and_view_state():
    raw = synthetic_graph(30, n_pos=6)
    raw["metadata"]["info"] = {"creator_name": "someone", "generator": {"name": "np"}}
    for n in raw["nodes"]:
        if n["layer"].isdigit():
            n["layer"] = int(n["layer"])  # some exports give layers as numbers
    features = [n["node_id"] for n in raw["nodes"] if n["feature_type"] == "cross layer transcoder"]
    raw["qParams"] = {"pinnedIds": ",".join(features[:3]), "supernodes": [["grp", *features[:2]]],
                      "clickedId": features[0], "linkType": None}
    doc = parse_graph(graph_bytes(raw, compress=True), name="np.json.gz")
    assert doc["metadata"]["info"]["creator_name"] == "someone"
    assert all(isinstance(n["layer"], str) for n in doc["nodes"])
    assert view_state(doc) == (features[:3], [["grp", *features[:2]]], features[0])
    saved = with_view_state(doc, pinned=[features[4]], supernodes=[["other", features[4], features[5]]],
                            clicked=features[5])
    again = parse_graph(graph_bytes(saved))
    assert view_state(again) == ([features[4]], [["other", features[4], features[5]]], features[5])
    assert display_graph(again, 1.0, 1.0).nodes


@pytest.mark.parametrize("data, says", [
    (b"not json at all", "not valid JSON"),
    (b"\x1f\x8b\x08broken", "cannot be decompressed"),
    (json.dumps([1, 2]).encode(), "not a graph object"),
    (json.dumps({"metadata": {}, "nodes": [], "links": []}).encode(), "metadata.prompt_tokens"),
])
def test_bad_files_say_what_is_wrong(data, says):
    with pytest.raises(InvalidRequest, match=says):
        parse_graph(data)


def test_colliding_error_ids_are_renamed():
    from circuit_tracer.frontend.graph_models import Node

    from backend.local.graph_json import unique_node_ids

    nodes = {0: Node.feature_node(0, 3, 1), 1: Node.error_node(1, 3), 2: Node.error_node(0, 3),
             3: Node.feature_node(0, 1, 3)}
    assert nodes[0].node_id == nodes[1].node_id == "0_1_3", "circuit-tracer's ids collide here"
    assert unique_node_ids(nodes) == 1
    assert [n.node_id for n in nodes.values()] == ["0_1_3", "err_1_3", "0_0_3", "0_3_1"]
    assert nodes[1].jsNodeId != nodes[0].jsNodeId


def test_only_graph_files_open_by_path(tmp_path):
    from backend.errors import NotFound
    from backend.graphfile import read_graph_file

    (tmp_path / "notes.txt").write_text("{}")
    with pytest.raises(InvalidRequest, match="not a .json"):
        read_graph_file(tmp_path / "notes.txt")
    with pytest.raises(NotFound, match="No graph file"):
        read_graph_file(tmp_path / "missing.json")
