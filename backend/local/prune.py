"""circuit-tracer's `prune_graph`, giving the same masks and scores bit for bit, without sorting the zeros.

`prune_graph` keeps the edges whose scores make up `edge_threshold` of the total: it sorts all N x N
edge scores (about 25M for a 5,000-feature graph), takes their cumulative sum and finds the first
place it reaches the threshold. Most of those scores are exactly zero (edges of pruned nodes, and
the adjacency's own zeros), and a descending sort puts every zero in one run between the positive
and the negative scores. So the sorted array is `sort(positives) ++ zeros ++ sort(negatives)`: only
the non-zero scores need sorting. The total is then taken over that whole array, exactly as
circuit-tracer takes it over its own sort (the same values in the same order, so the same float
rounding), and so is the cumulative sum, or on the CPU only its positive prefix (see `threshold_of`):
the threshold is the same number. With a NaN among the scores the
order is circuit-tracer's to decide, and its own function is used.

Everything else (influence, normalisation, the iterative removal of nodes without edges) calls
circuit-tracer's helpers, in its order. `tests/test_prune.py` asserts equal masks and scores with
circuit-tracer's `prune_graph` on real and synthetic graphs; `bench/prune.py` times both.
"""

from __future__ import annotations

from typing import Any

import torch


def sorted_descending(scores: torch.Tensor) -> torch.Tensor:
    """`torch.sort(scores, descending=True).values` for a 1-D tensor without NaN, sorting only the
    non-zero entries."""
    got = _ordered(scores)
    return torch.sort(scores, descending=True).values if got is None else got[0]


def _ordered(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(the descending sort of `flat`, its positive prefix), sorting only the non-zero entries; None
    when there is a NaN (NaN != 0, so any is among the non-zero entries)."""
    nonzero = flat[flat != 0]
    if bool(torch.isnan(nonzero).any()):
        return None
    positive = torch.sort(nonzero[nonzero > 0], descending=True).values
    negative = torch.sort(nonzero[nonzero < 0], descending=True).values
    ordered = flat.new_zeros(flat.numel())
    ordered[:positive.numel()] = positive
    if negative.numel():
        ordered[flat.numel() - negative.numel():] = negative
    return ordered, ordered[:positive.numel()]


def threshold_of(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The score at which the sorted scores' cumulative share first reaches `fraction`: the value of
    circuit-tracer's `find_threshold(scores, fraction)`.

    The total is summed over the whole sorted array (a float sum's rounding depends on its length).
    On the CPU a cumulative sum runs front to back, so its first entries do not depend on what follows:
    when the threshold is reached among the positive scores, only their cumulative sum is taken. On a
    GPU the scan's blocking may depend on the length, so the whole array's is taken there."""
    from circuit_tracer.graph import find_threshold

    flat = scores.reshape(-1)
    got = _ordered(flat)
    if got is None:
        return find_threshold(flat, fraction)
    ordered, positive = got
    total = torch.sum(ordered)
    if flat.device.type == "cpu" and positive.numel():
        share = torch.cumsum(positive, dim=0) / total
        at = int(torch.searchsorted(share, fraction).item())
        if at < positive.numel():
            return ordered[at]
    share = torch.cumsum(ordered, dim=0) / total
    at = min(int(torch.searchsorted(share, fraction).item()), ordered.numel() - 1)
    return ordered[at]


def prune_graph(graph: Any, node_threshold: float = 0.8, edge_threshold: float = 0.98):
    """Node mask, edge mask and cumulative node scores, equal to circuit-tracer's `prune_graph`."""
    from circuit_tracer.graph import (
        PruneResult,
        compute_edge_influence,
        compute_node_influence,
        find_threshold,
    )

    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0.0 and 1.0")
    adjacency = graph.adjacency_matrix
    n_fixed = len(graph.logit_targets) + len(graph.input_tokens)  # tokens and logits: always kept
    n_features = len(graph.selected_features)

    weights = torch.zeros(adjacency.shape[0], device=adjacency.device)
    weights[-len(graph.logit_targets):] = graph.logit_probabilities
    influence = compute_node_influence(adjacency, weights)
    nodes = influence >= find_threshold(influence, node_threshold)  # N values: sorting them is cheap
    nodes[-n_fixed:] = True

    kept = adjacency.clone()
    kept[~nodes] = 0
    kept[:, ~nodes] = 0
    edge_scores = compute_edge_influence(kept, weights)
    edges = edge_scores >= threshold_of(edge_scores, edge_threshold)

    # Drop feature and error nodes left without an outgoing edge, and features without an incoming
    # one, until nothing changes (each removal can strand others).
    before = nodes.clone()
    while True:
        nodes[:-n_fixed] &= edges[:, :-n_fixed].any(0)
        nodes[:n_features] &= edges[:n_features].any(1)
        if torch.equal(nodes, before):
            break
        before.copy_(nodes)
        edges[~nodes] = False
        edges[:, ~nodes] = False

    ordered, order = torch.sort(influence, descending=True)
    scores = torch.zeros_like(influence)
    scores[order] = torch.cumsum(ordered, dim=0) / torch.sum(ordered)
    return PruneResult(nodes, edges, scores)


def prune(graph: Any, node_threshold: float, edge_threshold: float, device: str) -> tuple[Any, Any, Any]:
    """`prune_graph` on the GPU when the model is on one (the graph is moved there and back; out of
    GPU memory, it runs on the CPU); the masks and scores come back on the CPU."""
    if device == "cuda":
        graph.to("cuda")
        try:
            return tuple(t.cpu() for t in prune_graph(graph, node_threshold, edge_threshold))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
        finally:
            graph.to("cpu")
    return tuple(prune_graph(graph, node_threshold, edge_threshold))
