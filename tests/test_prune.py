"""Our `prune_graph` against circuit-tracer's own: the same node mask, edge mask and scores, exactly,
on a real attribution graph of the demo pack and on synthetic graphs of several shapes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from backend.local.prune import prune_graph, sorted_descending, threshold_of


def synthetic(n_features: int, n_errors: int, n_tokens: int, n_logits: int, density: float, seed: int,
              signed: bool = False, ties: bool = False, device: str = "cpu", n_layers: int = 6):
    """A graph in circuit-tracer's layout (features, errors, tokens, logits; rows are targets). Features
    and errors sit in layers, tokens below them and logits above; edges go only from a lower layer to a
    higher one, so influence converges in n_layers + 1 steps, as in an attribution graph."""
    gen = torch.Generator().manual_seed(seed)
    n = n_features + n_errors + n_tokens + n_logits
    layer = torch.cat([torch.randint(0, n_layers, (n_features + n_errors,), generator=gen),
                       torch.full((n_tokens,), -1), torch.full((n_logits,), n_layers)])
    a = torch.randn(n, n, generator=gen)
    if not signed:
        a = a.abs()
    if ties:
        a = torch.round(a * 4) / 4  # many equal scores
    a = a * (torch.rand(n, n, generator=gen) < density) * (layer[None, :] < layer[:, None])
    probs = torch.rand(n_logits, generator=gen)
    return SimpleNamespace(adjacency_matrix=a.to(device), logit_probabilities=(probs / probs.sum()).to(device),
                           logit_targets=list(range(n_logits)), input_tokens=torch.arange(n_tokens),
                           selected_features=torch.arange(n_features))


def assert_same(graph, node_threshold: float, edge_threshold: float) -> int:
    """Both prunings are equal; returns the number of edges kept."""
    from circuit_tracer.graph import prune_graph as reference

    want = reference(graph, node_threshold, edge_threshold)
    got = prune_graph(graph, node_threshold, edge_threshold)
    assert torch.equal(got.node_mask, want.node_mask)
    assert torch.equal(got.edge_mask, want.edge_mask)
    assert torch.equal(got.cumulative_scores, want.cumulative_scores)
    return int(want.edge_mask.sum())


@pytest.mark.parametrize("case", [
    dict(n_features=300, n_errors=40, n_tokens=8, n_logits=5, density=0.05, seed=0),
    dict(n_features=800, n_errors=100, n_tokens=16, n_logits=10, density=0.2, seed=1),
    dict(n_features=500, n_errors=60, n_tokens=12, n_logits=3, density=0.1, seed=2, ties=True),
    dict(n_features=400, n_errors=50, n_tokens=10, n_logits=4, density=0.1, seed=3, signed=True),
])
@pytest.mark.parametrize("thresholds", [(0.8, 0.98), (0.8, 0.85), (0.5, 0.3), (1.0, 1.0), (0.0, 0.0)])
def test_synthetic_graphs_prune_exactly_as_circuit_tracer(backend, case, thresholds):
    kept = assert_same(synthetic(**case, device=backend.device), *thresholds)
    if thresholds[1] >= 0.85:
        assert kept > 0, "the case must keep some edges"


def test_a_real_attribution_graph_prunes_exactly_as_circuit_tracer(backend):
    from circuit_tracer import attribute

    entry = backend.model_entry("demo")
    loaded = backend.graphs.replacement_model(entry, entry.transcoder_set("demo"))
    tok = loaded.model.tokenizer
    ids = torch.tensor([tok.bos_token_id, *tok("def read_file(path):", add_special_tokens=False).input_ids])
    with loaded.use(60) as model:
        graph = attribute(ids, model, max_feature_nodes=200, batch_size=64)
    graph.to(backend.device)
    kept = [assert_same(graph, *t) for t in ((0.8, 0.98), (0.8, 0.85), (0.6, 0.7), (0.95, 0.99))]
    assert min(kept) > 0 and kept[0] > kept[1], "a real graph keeps edges, more at a higher threshold"


def test_sorting_only_the_non_zero_scores_gives_torch_sort():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(10_000, generator=gen) * (torch.rand(10_000, generator=gen) < 0.1)
    x[:5] = -0.0
    assert torch.equal(sorted_descending(x), torch.sort(x, descending=True).values)
    assert torch.equal(sorted_descending(x.abs()), torch.sort(x.abs(), descending=True).values)
    assert torch.equal(sorted_descending(torch.zeros(7)), torch.zeros(7))


def test_threshold_matches_find_threshold_with_nan_and_edges():
    from circuit_tracer.graph import find_threshold

    gen = torch.Generator().manual_seed(6)
    x = torch.rand(5000, generator=gen) * (torch.rand(5000, generator=gen) < 0.3)
    for fraction in (0.0, 0.3, 0.85, 0.98, 1.0):
        assert torch.equal(threshold_of(x, fraction), find_threshold(x, fraction))
    x[3] = float("nan")  # circuit-tracer's own function decides
    assert torch.equal(threshold_of(x, 0.5), find_threshold(x, 0.5), ) or \
        (torch.isnan(threshold_of(x, 0.5)) and torch.isnan(find_threshold(x, 0.5)))
    with pytest.raises(ValueError, match="edge_threshold"):
        prune_graph(synthetic(20, 4, 3, 2, 0.3, 0), 0.5, 1.5)
