"""Pruning a graph JSON for display, without re-running attribution (or anything else).

A graph JSON is already pruned by circuit-tracer at the request's thresholds. The viewer's sliders
narrow it further, live, with the meaning circuit-tracer gives its thresholds (the fraction kept):

- node threshold t: feature and error nodes are taken by cumulative influence (the JSON's
  `influence`, as circuit-tracer's own viewer filters with its `pruningThreshold`), most
  influential first, up to and including the first whose cumulative influence reaches t;
  embeddings and logits always stay, and so do pinned nodes; at or above the file's own
  `metadata.node_threshold` every node of the file stays;
- edge threshold t: edges are taken by |weight|, strongest first, up to and including the first
  at which they carry the fraction t of the total |weight|;
- then, as `prune_graph` does, feature and error nodes left without an outgoing edge, and feature
  nodes left without an incoming one, are dropped until none is (pins exempt).

Each step keeps a subset when a threshold is lowered, so lowering a threshold never adds a node
or an edge, and at the file's own thresholds (or 1.0) the JSON is shown exactly as it is.

Pure Python and numpy: the UI imports this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.graphfile import feature_address

FEATURE, ERROR, EMBEDDING, LOGIT = "feature", "error", "embedding", "logit"
MAX_EDGES = 40_000  # the most edges sent to the browser


def node_kind(feature_type: str) -> str:
    t = feature_type.lower()
    if t == "embedding":
        return EMBEDDING
    if t == "logit":
        return LOGIT
    if "error" in t:
        return ERROR
    return FEATURE


@dataclass
class DisplayNode:
    id: str
    kind: str
    layer: int  # -1: embeddings; n_layers: logits
    pos: int
    index: int | None  # feature index within its layer (features only)
    influence: float | None
    activation: float | None
    token_prob: float
    clerp: str
    pinned: bool = False


@dataclass
class DisplayGraph:
    nodes: list[DisplayNode]
    edges: list[tuple[str, str, float]]  # (source id, target id, weight), strongest first
    tokens: list[str]
    n_layers: int
    total_nodes: int
    total_edges: int
    duplicate_ids: list[str] = field(default_factory=list)
    edges_capped: bool = False


def _feature_index(node: dict[str, Any]) -> int | None:
    address = feature_address(str(node["node_id"]))
    return address[1] if address else None


def n_layers_of(doc: dict[str, Any]) -> int:
    """Model layers: logit nodes sit at layer n_layers + 1 in circuit-tracer's JSON."""
    logit_layers = [int(n["layer"]) for n in doc["nodes"]
                    if node_kind(n["feature_type"]) == LOGIT and str(n["layer"]).isdigit()]
    if logit_layers:
        return max(logit_layers) - 1
    layers = [int(n["layer"]) for n in doc["nodes"] if str(n["layer"]).isdigit()]
    return max(layers) + 1 if layers else 0


def to_display_node(node: dict[str, Any], n_layers: int) -> DisplayNode:
    kind = node_kind(node["feature_type"])
    if kind == EMBEDDING:
        layer = -1
    elif kind == LOGIT:
        layer = n_layers
    else:
        layer = int(node["layer"]) if str(node["layer"]).isdigit() else 0
    return DisplayNode(
        id=str(node["node_id"]), kind=kind, layer=layer, pos=int(node["ctx_idx"]),
        index=_feature_index(node) if kind == FEATURE else None, influence=node.get("influence"),
        activation=node.get("activation"), token_prob=float(node.get("token_prob") or 0.0),
        clerp=str(node.get("clerp") or ""),
    )


def _prefix_upto(values: np.ndarray, threshold: float) -> int:
    """How many of the (sorted, non-negative) `values` to keep so their cumulative share reaches
    `threshold`: up to and including the first position where it does."""
    if len(values) == 0 or threshold >= 1.0:
        return len(values)
    total = values.sum()
    if total <= 0:
        return len(values)
    cum = np.cumsum(values) / total
    return int(min(np.searchsorted(cum, threshold, side="left") + 1, len(values)))


def kept_nodes(nodes: list[DisplayNode], threshold: float, pinned: set[str],
               file_threshold: float | None = None) -> set[str]:
    """Ids kept by the node threshold. At or above the file's own threshold, every node stays."""
    always = {n.id for n in nodes if n.kind in (EMBEDDING, LOGIT) or n.influence is None or n.id in pinned}
    ranked = sorted((n for n in nodes if n.id not in always),
                    key=lambda n: n.influence)  # type: ignore[arg-type, return-value]
    if threshold >= min(1.0, file_threshold if file_threshold is not None else 1.0) or not ranked:
        return always | {n.id for n in ranked}
    inf = np.array([n.influence for n in ranked], dtype=float)
    # `influence` is already the running share, most influential first: keep through the first
    # node reaching the threshold, and any tied with it
    first = min(int(np.searchsorted(inf, threshold, side="left")), len(ranked) - 1)
    return always | {n.id for n in ranked if n.influence <= inf[first]}  # type: ignore[operator]


def kept_edges(links: list[dict[str, Any]], threshold: float, max_edges: int) -> tuple[list[int], bool]:
    """Indices of the links kept by the edge threshold, strongest first, and whether capped."""
    if not links:
        return [], False
    w = np.abs(np.array([float(e["weight"]) for e in links]))
    order = np.argsort(-w, kind="stable")
    k = _prefix_upto(w[order], threshold)
    capped = k > max_edges
    return order[: min(k, max_edges)].tolist(), capped


def _drop_dangling(kinds: dict[str, str], edges: list[tuple[str, str, float]], keep: set[str],
                   pinned: set[str]) -> tuple[set[str], list[tuple[str, str, float]]]:
    """prune_graph's last step: features and errors need an outgoing edge, features an incoming one."""
    while True:
        has_out = {s for s, t, _ in edges}
        has_in = {t for s, t, _ in edges}
        drop = {i for i in keep if i not in pinned and (
            (kinds[i] in (FEATURE, ERROR) and i not in has_out) or (kinds[i] == FEATURE and i not in has_in))}
        if not drop:
            return keep, edges
        keep = keep - drop
        edges = [e for e in edges if e[0] in keep and e[1] in keep]


def display_graph(doc: dict[str, Any], node_threshold: float = 1.0, edge_threshold: float = 1.0,
                  pinned: Iterable[str] = (), max_edges: int = MAX_EDGES) -> DisplayGraph:
    """The part of the graph JSON to draw at these thresholds (see the module docstring)."""
    n_layers = n_layers_of(doc)
    seen: dict[str, DisplayNode] = {}
    duplicates = []
    for raw in doc["nodes"]:
        node = to_display_node(raw, n_layers)
        if node.id in seen:
            duplicates.append(node.id)  # ambiguous in the file; edges go to the first
            continue
        seen[node.id] = node
    nodes = list(seen.values())
    pins = {p for p in pinned if p in seen}
    keep = kept_nodes(nodes, node_threshold, pins, doc["metadata"].get("node_threshold"))
    links = doc["links"]
    edge_idx, capped = kept_edges(links, edge_threshold, max_edges)
    edges = []
    for i in edge_idx:
        e = links[i]
        s, t = str(e["source"]), str(e["target"])
        if s in keep and t in keep:
            edges.append((s, t, float(e["weight"])))
    keep, edges = _drop_dangling({n.id: n.kind for n in nodes}, edges, keep, pins)
    shown = [n for n in nodes if n.id in keep]
    for n in shown:
        n.pinned = n.id in pins
    return DisplayGraph(nodes=shown, edges=edges, tokens=list(doc["metadata"]["prompt_tokens"]),
                        n_layers=n_layers, total_nodes=len(doc["nodes"]), total_edges=len(links),
                        duplicate_ids=sorted(set(duplicates)), edges_capped=capped)


def node_edges(doc: dict[str, Any], node_id: str,
               k: int = 10) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The strongest input and output edges of a node in the whole file: ([(source, w)], [(target, w)])."""
    inputs = [(str(e["source"]), float(e["weight"])) for e in doc["links"] if str(e["target"]) == node_id]
    outputs = [(str(e["target"]), float(e["weight"])) for e in doc["links"] if str(e["source"]) == node_id]
    inputs.sort(key=lambda x: -abs(x[1]))
    outputs.sort(key=lambda x: -abs(x[1]))
    return inputs[:k], outputs[:k]


def subgraph(doc: dict[str, Any], pinned: list[str], supernodes: list[list[str]]) -> tuple[
        dict[str, list[str]], list[tuple[str, str, float]]]:
    """The pinned subgraph with supernodes merged: groups (label -> member ids; a lone pinned node
    is its own group) and the summed weights of the edges between groups."""
    group_of: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for sn in supernodes:
        label = sn[0]
        while label in groups:
            label += "'"
        groups[label] = [i for i in sn[1:]]
        for i in sn[1:]:
            group_of.setdefault(i, label)
    for p in pinned:
        if p not in group_of:
            groups[p] = [p]
            group_of[p] = p
    sums: dict[tuple[str, str], float] = {}
    for e in doc["links"]:
        a, b = group_of.get(str(e["source"])), group_of.get(str(e["target"]))
        if a is not None and b is not None and a != b:
            sums[(a, b)] = sums.get((a, b), 0.0) + float(e["weight"])
    return groups, sorted(((a, b, w) for (a, b), w in sums.items()), key=lambda x: -abs(x[2]))
