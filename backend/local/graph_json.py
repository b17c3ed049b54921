"""From circuit-tracer's unpruned `Graph` to the graph JSON of circuit-tracer and Neuronpedia.

Pruning is circuit-tracer's `prune_graph`, and the JSON is built by circuit-tracer's own
`create_graph_files` steps (`create_nodes`, `create_used_nodes_and_edges`, `build_model`, with its
pydantic `Node`/`Metadata`/`QParams`/`Model`), so the file opens in circuit-tracer's viewer and in
Neuronpedia. On top, as the Neuronpedia graph server does, `metadata` gets `info`,
`generation_settings` and `pruning_settings`, and we add `scores`: circuit-tracer's own
`compute_graph_scores` of the unpruned graph (replacement and completeness score), so a saved file
keeps them.

One repair: circuit-tracer names an error node `0_<layer>_<pos>`, which is also the id of feature
`<layer>` of layer 0 at that position. When both are in a graph, the error node is renamed
`err_<layer>_<pos>` before the edges are written, so every edge names the node it really joins.
"""

from __future__ import annotations

import time
from typing import Any

ERROR_TYPE = "mlp reconstruction error"


def graph_scores(graph: Any) -> dict[str, float]:
    """circuit-tracer's replacement and completeness scores of the (unpruned) graph."""
    from circuit_tracer.graph import compute_graph_scores

    replacement, completeness = compute_graph_scores(graph)
    return {"replacement_score": float(replacement), "completeness_score": float(completeness)}


def unique_node_ids(nodes: dict[int, Any]) -> int:
    """Rename error nodes whose id collides with a feature node's; returns how many."""
    seen: dict[str, int] = {}
    for node in nodes.values():
        seen[node.node_id] = seen.get(node.node_id, 0) + 1
    renamed = 0
    for node in nodes.values():
        if seen[node.node_id] > 1 and node.feature_type == ERROR_TYPE:
            new_id = f"err_{node.layer}_{node.ctx_idx}"
            seen[node.node_id] -= 1
            node.node_id = new_id
            node.jsNodeId = f"err_{node.layer}_{node.ctx_idx}-0"
            renamed += 1
    return renamed


def build_graph_json(graph: Any, node_mask: Any, edge_mask: Any, cumulative_scores: Any, *, tokenizer: Any,
                     slug: str, node_threshold: float, edge_threshold: float,
                     generation_settings: dict[str, Any], creator: str | None) -> dict[str, Any]:
    """The graph JSON (a plain dict) for the pruned `graph`."""
    import circuit_tracer
    from circuit_tracer.utils.create_graph_files import build_model, create_nodes, create_used_nodes_and_edges

    nodes = create_nodes(graph, node_mask, tokenizer, cumulative_scores)
    unique_node_ids(nodes)
    used_nodes, used_edges = create_used_nodes_and_edges(graph, nodes, edge_mask)
    model = build_model(graph, used_nodes, used_edges, slug, graph.scan, node_threshold, tokenizer)
    out = model.model_dump()
    out["metadata"]["info"] = {
        "creator_name": creator or "Featurescope",
        "creator_url": "",
        "source_urls": [],
        "generator": {"name": "Featurescope, with circuit-tracer by Hanna & Piotrowski",
                      "version": f"circuit-tracer {circuit_tracer.__version__}",
                      "url": "https://github.com/safety-research/circuit-tracer"},
        "create_time_ms": int(time.time() * 1000),
    }
    out["metadata"]["generation_settings"] = dict(generation_settings)
    out["metadata"]["pruning_settings"] = {"node_threshold": node_threshold, "edge_threshold": edge_threshold}
    out["metadata"]["scores"] = graph_scores(graph)
    return out
