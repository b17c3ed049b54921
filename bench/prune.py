"""Our exact `prune_graph` (backend/local/prune.py) vs circuit-tracer's, side by side on one graph.

A synthetic graph in circuit-tracer's layout (features, errors, tokens, logits; dense causal edges,
as attribution gives), pruned at the graph server's defaults (node 0.8, edge 0.85) by both; the
results are checked equal, then timed alternately (best of the runs).

    python bench/prune.py                      # 3,000 features (about 12M adjacency cells)
    python bench/prune.py --features 5000      # the graph server's default budget (about 45M cells)

Last line: `prune_speedup: <circuit-tracer's time / ours>`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=3000)
    parser.add_argument("--layers", type=int, default=26)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch
    from circuit_tracer.graph import prune_graph as reference

    from backend.compute import resolve_device
    from backend.local.prune import prune_graph
    from tests.test_prune import synthetic

    device = resolve_device("auto")
    graph = synthetic(args.features, args.layers * args.tokens, args.tokens, 10, args.density, seed=0, device=device,
                      n_layers=args.layers)
    want, got = reference(graph, 0.8, 0.85), prune_graph(graph, 0.8, 0.85)
    assert all(torch.equal(a, b) for a, b in zip(want, got)), "the two prunings differ"
    t_ref, t_ours = [], []
    for _ in range(args.repeats):
        t_ref.append(timed(lambda: reference(graph, 0.8, 0.85), device)[0])
        t_ours.append(timed(lambda: prune_graph(graph, 0.8, 0.85), device)[0])
    n = graph.adjacency_matrix.shape[0]
    print(f"device: {device}; threads: {torch.get_num_threads()}; {n:,} nodes ({n * n / 1e6:.1f}M cells); "
          f"kept {int(want.node_mask.sum()):,} nodes, {int(want.edge_mask.sum()):,} edges (equal in both)")
    print(f"circuit_tracer_prune_ms: {min(t_ref) * 1000:.0f}")
    print(f"our_prune_ms: {min(t_ours) * 1000:.0f}")
    print(f"prune_speedup: {min(t_ref) / min(t_ours):.2f}")


if __name__ == "__main__":
    main()
