"""Backend.attribute against circuit-tracer itself: its pydantic graph models, its own `attribute` and
`prune_graph` run independently on the same model, its `create_graph_files`; limits, refusals, the
cache, progress, the seed's request bodies, and the hub path of `ReplacementModel.from_pretrained`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from backend.errors import DoesNotFit, LimitExceeded, NotFound
from components.graph_display import display_graph
from backend.graphfile import read_graph_file
from backend.schemas import GraphRequest
from backend.settings import Limits, Settings
from tests.conftest import REPO

PROMPT = "The fox jumps over the dog"
BUDGET = 150  # feature nodes: fewer than the tiny pack's active features, so the budget matters


def graph_request(**overrides) -> GraphRequest:
    fields = {"prompt": PROMPT, "model": "demo", "max_feature_nodes": BUDGET, "batch_size": 64}
    return GraphRequest(**{**fields, **overrides})


@pytest.fixture(scope="module")
def generated(backend):
    """One graph of the demo pack, with the progress reported while it was built."""
    seen: list[tuple[float | None, str]] = []
    result = backend.attribute(graph_request(slug_identifier="fox"),
                               progress=lambda f, m: seen.append((f, m)))
    return result, seen


@pytest.fixture(scope="module")
def reference(backend, generated):
    """circuit-tracer alone on the same ReplacementModel and tokens: `attribute`, then `prune_graph`."""
    from circuit_tracer import attribute
    from circuit_tracer.graph import prune_graph

    entry = backend.model_entry("demo")
    loaded = backend.graphs.replacement_model(entry, entry.transcoder_set("demo"))
    model = loaded.model
    ids = model.tokenizer(PROMPT, add_special_tokens=False).input_ids
    ids = torch.tensor([model.tokenizer.bos_token_id, *ids])
    with loaded.use(60):
        graph = attribute(ids, model, max_feature_nodes=BUDGET, batch_size=64)
    node_mask, edge_mask, scores = prune_graph(graph, 0.8, 0.85)
    return graph, node_mask, edge_mask, scores


def expected_ids(graph) -> list[str]:
    """Node ids in adjacency order, worked out from the Graph's layout (circuit-tracer's docstring)."""
    n_layers, n_pos = graph.cfg.n_layers, graph.n_pos
    ids = []
    for i in graph.selected_features.tolist():
        layer, pos, feat = graph.active_features[i].tolist()
        ids.append(f"{layer}_{feat}_{pos}")
    ids += [f"0_{layer}_{pos}" for layer in range(n_layers) for pos in range(n_pos)]
    ids += [f"E_{tok}_{pos}" for pos, tok in enumerate(graph.input_tokens.tolist())]
    ids += [f"{n_layers + 1}_{t.vocab_idx}_{n_pos - 1}" for t in graph.logit_targets]
    return ids


def expected_edges(graph, node_mask, edge_mask) -> dict[tuple[str, str], float]:
    """The pruned adjacency as {(source id, target id): weight}, error ids repaired where they collide."""
    ids = expected_ids(graph)
    n_features, kept = len(graph.selected_features), node_mask.nonzero().flatten().tolist()
    feature_ids = {ids[i] for i in kept if i < n_features}
    n_err = graph.cfg.n_layers * graph.n_pos
    for i in kept:
        if n_features <= i < n_features + n_err and ids[i] in feature_ids:
            layer, pos = divmod(i - n_features, graph.n_pos)
            ids[i] = f"err_{layer}_{pos}"
    mask = edge_mask & node_mask[:, None] & node_mask[None, :]
    dst, src = mask.nonzero(as_tuple=True)
    pairs = zip(src.tolist(), dst.tolist(), strict=True)
    return {(ids[s], ids[d]): float(graph.adjacency_matrix[d, s]) for s, d in pairs}


def test_graph_json_validates_against_circuit_tracers_models(generated, backend):
    from circuit_tracer.frontend.graph_models import Link, Metadata, Model, Node

    result, _ = generated
    doc = result.graph
    Model.model_validate(doc)
    Metadata.model_validate(doc["metadata"])
    for node in doc["nodes"]:
        Node.model_validate(node)
    for link in doc["links"]:
        Link.model_validate(link)
    ids = [n["node_id"] for n in doc["nodes"]]
    assert len(ids) == len(set(ids)), "every node id names one node"
    meta = doc["metadata"]
    assert meta["slug"] == "fox" and meta["node_threshold"] == 0.8
    assert meta["pruning_settings"] == {"node_threshold": 0.8, "edge_threshold": 0.85}
    assert meta["generation_settings"]["max_feature_nodes"] == BUDGET
    assert meta["scan"] == f"{backend.pack().manifest.name}/demo"
    assert result.n_nodes == len(doc["nodes"]) and result.n_edges == len(doc["links"])
    assert result.n_feature_nodes == min(BUDGET, result.n_active_features)


def test_scores_equal_circuit_tracers_own_scoring(generated, reference):
    """The file's replacement and completeness scores are circuit-tracer's `compute_graph_scores` of
    the same graph, built independently by the `reference` fixture."""
    from circuit_tracer.graph import compute_graph_scores

    result, _ = generated
    graph = reference[0]
    replacement, completeness = compute_graph_scores(graph)
    scores = result.graph["metadata"]["scores"]
    assert scores["replacement_score"] == pytest.approx(replacement, rel=1e-5, abs=1e-6)
    assert scores["completeness_score"] == pytest.approx(completeness, rel=1e-5, abs=1e-6)
    assert 0.0 < scores["replacement_score"] <= 1.0 and 0.0 < scores["completeness_score"] <= 1.0


def test_every_edge_equals_circuit_tracers_pruned_adjacency(generated, reference):
    result, _ = generated
    graph, node_mask, edge_mask, _ = reference
    want = expected_edges(graph, node_mask, edge_mask)
    got = {(e["source"], e["target"]): e["weight"] for e in result.graph["links"]}
    assert len(got) == len(result.graph["links"]) and set(got) == set(want)
    assert [got[k] for k in want] == pytest.approx([want[k] for k in want], rel=1e-5, abs=1e-7)
    # the viewer at the file's thresholds draws exactly these edges
    shown = display_graph(result.graph, 0.8, 1.0)
    assert {(s, t): w for s, t, w in shown.edges} == got
    assert {n.id for n in shown.nodes} == {n["node_id"] for n in result.graph["nodes"]}
    kept = int(node_mask.sum())
    assert len(result.graph["nodes"]) <= kept


def test_features_and_influence_match_the_reference_graph(generated, reference):
    result, _ = generated
    graph, node_mask, _, scores = reference
    ids = expected_ids(graph)
    by_id = {n["node_id"]: n for n in result.graph["nodes"]}
    n_features = len(graph.selected_features)
    checked = 0
    for i in node_mask.nonzero().flatten().tolist():
        if i < n_features and ids[i] in by_id:
            node = by_id[ids[i]]
            assert node["influence"] == pytest.approx(float(scores[i]), rel=1e-5)
            act = graph.activation_values[graph.selected_features[i]].item()
            assert node["activation"] == pytest.approx(act, rel=1e-5)
            checked += 1
    assert checked > 0
    tokens = result.graph["metadata"]["prompt_tokens"]
    assert len(tokens) == graph.n_pos == result.n_tokens


def test_replacement_model_computes_what_the_demo_model_does(backend, generated):
    """The pack's state dict mapped onto the wrapped MLPs gives the plain model's logits."""
    entry = backend.model_entry("demo")
    rm = backend.graphs.replacement_model(entry, entry.transcoder_set("demo"))
    plain = backend.load("demo")
    ids = plain.model.to_tokens(PROMPT)
    with torch.no_grad(), rm.use(60) as a, plain.use(60) as b:
        assert torch.allclose(a(ids), b(ids), atol=1e-5)


def test_progress_goes_through_attributions_phases(generated):
    result, seen = generated
    messages = [m for _, m in seen]
    order = ["Phase 0", "Phase 1", "Phase 3", "Phase 4", "Pruning", "Writing the graph JSON"]
    firsts = [next(i for i, m in enumerate(messages) if m.startswith(p)) for p in order]
    assert firsts == sorted(firsts)
    fractions = [f for f, m in seen if f is not None and m.startswith("Phase")]
    assert fractions == sorted(fractions) and fractions[-1] >= 0.9
    last_feature = [m for m in messages if m.startswith("Phase 4")][-1]
    assert f"{BUDGET:,} / {BUDGET:,}" in last_feature
    assert {"attribution", "prune", "json"} <= set(result.timings_ms)


def test_revisiting_is_served_from_the_cache(backend, generated):
    first, _ = generated
    again = backend.attribute(graph_request(slug_identifier="fox-again"))
    assert again.cached and again.graph["links"] == first.graph["links"]
    assert again.graph["metadata"]["slug"] == "fox-again" and again.slug == "fox-again"


def test_other_thresholds_reprune_without_attribution(backend, generated, reference):
    from circuit_tracer.graph import prune_graph

    graph = reference[0]
    result = backend.attribute(graph_request(node_threshold=0.6, edge_threshold=0.7))
    assert not result.cached
    assert "attribution" not in result.timings_ms and "prune" in result.timings_ms
    node_mask, edge_mask, _ = prune_graph(graph, 0.6, 0.7)
    want = expected_edges(graph, node_mask, edge_mask)
    got = {(e["source"], e["target"]): e["weight"] for e in result.graph["links"]}
    assert set(got) == set(want)


def test_raw_graph_round_trips_without_pickle(tmp_path, reference):
    from backend.local.graph_cache import GraphCache

    graph = reference[0]
    cache = GraphCache(tmp_path, 1 << 30)
    cache.put_raw("k", graph, background=False)
    back = cache.get_raw("k")
    for name in ("adjacency_matrix", "active_features", "selected_features"):
        ours, theirs = getattr(back, name), getattr(graph, name)
        assert torch.equal(ours.to(theirs.device), theirs), name
    assert back.logit_targets == graph.logit_targets and back.scan == graph.scan
    assert back.cfg.n_layers == graph.cfg.n_layers


def test_a_file_from_create_graph_files_loads_and_matches_ours(tmp_path, generated, reference):
    from circuit_tracer.utils.create_graph_files import create_graph_files

    result, _ = generated
    graph = reference[0]
    create_graph_files(graph, "ct-fox", str(tmp_path), node_threshold=0.8, edge_threshold=0.85)
    doc = read_graph_file(tmp_path / "ct-fox.json")
    assert json.loads((tmp_path / "graph-metadata.json").read_text())["graphs"][0]["slug"] == "ct-fox"
    shown = display_graph(doc, 1.0, 1.0)
    assert len(shown.nodes) == len({n["node_id"] for n in doc["nodes"]}) and shown.edges
    renamed = {n["node_id"]: f"0_{n['layer']}_{n['ctx_idx']}" for n in result.graph["nodes"]
               if n["node_id"].startswith("err_")}
    ours = {(renamed.get(e["source"], e["source"]), renamed.get(e["target"], e["target"]))
            for e in result.graph["links"]}
    theirs = {(e["source"], e["target"]) for e in doc["links"]}
    assert ours == theirs


def test_seed_bodies_validate_and_resolve(backend):
    body = {"prompt": "1 2 ", "model_id": "google/gemma-2-2b", "batch_size": 48, "max_n_logits": 10,
            "desired_logit_prob": 0.95, "node_threshold": 0.8, "edge_threshold": 0.85,
            "slug_identifier": "count-1-2", "max_feature_nodes": 5000}
    from backend.http.seed_routes import GenerateGraphRequest

    req = GraphRequest.model_validate(GenerateGraphRequest.model_validate(body).model_dump())
    assert req.model == "google/gemma-2-2b" and req.transcoder_set is None and req.offload is None
    GenerateGraphRequest.model_validate({**body, "signed_url": "https://bucket.s3/put?sig=x", "compress": True})
    defaults = GraphRequest(prompt="x", model="demo")
    assert (defaults.batch_size, defaults.max_n_logits, defaults.desired_logit_prob, defaults.node_threshold,
            defaults.edge_threshold, defaults.max_feature_nodes) == (48, 10, 0.95, 0.8, 0.85, 5000)
    engine = backend.graphs
    cases = {("google/gemma-2-2b", None): ("gemma-2-2b", "gemma"),
             ("google/gemma-2-2b", "mntss/clt-gemma-2-2b-2.5M"): ("gemma-2-2b", "clt-2.5M"),
             ("Qwen/Qwen3-4B", "mwhanna/qwen3-4b-transcoders"): ("qwen3-4b", "qwen3-4b-transcoders"),
             ("meta-llama/Llama-3.2-1B", "llama"): ("llama-3.2-1b", "llama"),
             ("demo", "demo"): ("demo", "demo")}
    for (model, tc), want in cases.items():
        entry, tset = engine.resolve(model, tc)
        assert (entry.id, tset.id) == want
    with pytest.raises(NotFound, match="gemma-2-2b"):
        engine.resolve("no-such-model", None)


def test_estimate_for_gemma_before_anything_is_downloaded(backend):
    """Offline, with no Gemma files: an upper-bound estimate from the catalog's published figures."""
    from backend import compute
    from backend.compute import GB

    prompt = "The capital of Texas is"
    res = backend.attribute(GraphRequest(prompt=prompt, model="google/gemma-2-2b", estimate_only=True))
    est = res.estimate
    assert res.graph is None and res.transcoder_set == "gemma"
    assert not est.tokens_exact and est.n_tokens == len(prompt.encode()) + 1
    entry = backend.model_entry("gemma-2-2b")
    nbytes = compute.DTYPE_BYTES[backend.dtype_for(entry)]  # float32 on a CPU, bfloat16 on a GPU
    weights = (entry.n_params + 26 * (16384 * 2304 + 16384)) * nbytes  # lazy decoders
    assert est.model_gb == pytest.approx(weights / GB, abs=1e-3)
    assert est.backward_passes == -(-10 // 48) + -(-est.feature_rows // 48)
    if est.fits is False:  # this machine cannot hold it: the estimate says so, with the figures
        assert any("needs about" in note and "batch_size" in note for note in est.notes)
    assert not backend.models.resident() or all(m.entry.id != "gemma-2-2b" for m in backend.models.resident())


@pytest.fixture(scope="module")
def strict(test_root):
    """A backend with small limits and a tiny memory budget (nothing is loaded by its refusals)."""
    from backend.local import LocalBackend

    limits = Limits(max_graph_prompt_tokens=8, max_feature_nodes=100, max_batch_size=32, max_graph_logits=5)
    return LocalBackend(Settings(limits=limits, data_dir=test_root / "data"))


def test_over_limit_prompt_is_refused_with_the_limit(strict):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(strict.pack().tokenizer_dir()))
    prompt = "A prompt that is clearly longer than eight tokens of the tiny tokenizer"
    n = len(tok(prompt, add_special_tokens=False).input_ids) + 1
    with pytest.raises(LimitExceeded) as err:
        strict.attribute(GraphRequest(prompt=prompt, model="demo", max_feature_nodes=50, batch_size=16,
                                      max_n_logits=5))
    assert f"is {n:,}; the limit is 8" in err.value.message and "tokens" in err.value.message
    assert not strict.models.resident(), "refused before any model was loaded"


@pytest.mark.parametrize("field, value, limit", [("max_feature_nodes", 101, 100), ("batch_size", 33, 32),
                                                 ("max_n_logits", 6, 5)])
def test_over_limit_budgets_are_refused_with_the_limit(strict, field, value, limit):
    fields = {"max_feature_nodes": 50, "batch_size": 16, "max_n_logits": 5, field: value}
    with pytest.raises(LimitExceeded) as err:
        strict.attribute(GraphRequest(prompt="short", model="demo", **fields))
    assert err.value.message.startswith(f"{field} is {value:,}; the limit is {limit:,}.")
    assert not strict.models.resident()


def test_a_graph_that_cannot_fit_is_refused_with_the_figures(test_root):
    from backend.local import LocalBackend

    tiny = LocalBackend(Settings(memory_budget_gb=0.0005, data_dir=test_root / "data"))
    with pytest.raises(DoesNotFit) as err:
        tiny.attribute(GraphRequest(prompt="short prompt", model="demo", max_feature_nodes=100))
    msg = err.value.message
    assert "GB" in msg and "available" in msg and "batch_size" in msg
    assert not tiny.models.resident()


# ---------------------------------------------------------------- the hub path, offline
TC_REPO = "featurescope-test/gpt2-transcoders"


@pytest.fixture(scope="module")
def hub_backend(hf_cache, test_root):
    """Tiny GPT-2 under `gpt2` plus per-layer transcoders in circuit-tracer's hub layout."""
    from safetensors.torch import save_file

    from backend.local import LocalBackend
    from tests.hf_fixtures import TINY_GPT2, add_files

    d, t = TINY_GPT2["n_embd"], 48
    gen = torch.Generator().manual_seed(5)
    tmp = test_root / "gpt2-tc"
    tmp.mkdir(exist_ok=True)
    files: dict[str, Path | bytes | str] = {
        "config.yaml": "model_kind: transcoder_set\nfeature_input_hook: hook_resid_mid\n"
                       "feature_output_hook: hook_mlp_out\n"}
    for layer in range(TINY_GPT2["n_layer"]):
        path = tmp / f"layer_{layer}.safetensors"
        save_file({"W_enc": torch.randn(t, d, generator=gen) / d**0.5,
                   "W_dec": torch.randn(t, d, generator=gen) / t**0.5,
                   "b_enc": torch.randn(t, generator=gen) * 0.1, "b_dec": torch.zeros(d)}, str(path))
        files[f"layer_{layer}.safetensors"] = path
    add_files(hf_cache, TC_REPO, files)
    catalog = test_root / "graph-catalog.yaml"
    catalog.write_text("models:\n  gpt2-small:\n    transcoder_sets:\n      test-tc:\n"
                       f"        display_name: Test transcoders\n        circuit_tracer: {TC_REPO}\n"
                       f"        kind: per_layer\n        d_transcoder: {t}\n")
    return LocalBackend(Settings(catalog_path=catalog, data_dir=test_root / "data"))


def test_hub_sets_load_through_replacement_model_from_pretrained(hub_backend):
    from circuit_tracer.frontend.graph_models import Model

    result = hub_backend.attribute(GraphRequest(prompt="The fox", model="gpt2", transcoder_set=TC_REPO,
                                                max_feature_nodes=40))
    assert (result.model, result.transcoder_set) == ("gpt2-small", "test-tc")
    Model.model_validate(result.graph)
    assert result.graph["metadata"]["scan"] == TC_REPO
    assert any(n["feature_type"] == "cross layer transcoder" for n in result.graph["nodes"])
    assert result.n_feature_nodes == 40


def test_a_prompt_with_nothing_to_attribute_is_refused(strict):
    from backend.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="no token to attribute"):
        strict.attribute(GraphRequest(prompt="<|endoftext|>", model="demo", max_feature_nodes=50, batch_size=16,
                                      max_n_logits=5))


def dense_pack(root: Path) -> Path:
    """The demo pack with every transcoder feature active (thresholds far below any pre-activation):
    the shape of a dense transcoder set, for which the assumed density is far too low."""
    from safetensors.torch import load_file, save_file

    src = REPO / "assets" / "demo"
    root.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name != "transcoders":
            (root / item.name).symlink_to(item)
    for f in (src / "transcoders").rglob("*.safetensors"):
        tensors = load_file(f)
        tensors["activation_function.threshold"] = torch.full_like(tensors["activation_function.threshold"], -1e9)
        out = root / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, out)
    return root


def test_dense_transcoders_are_refused_after_the_forward_pass(tmp_path):
    """The estimate before running assumes a density and says 'fits'; once the prompt has run, the
    features are counted (every one is active here) and the graph is refused with the figures before
    circuit-tracer allocates their encoder and decoder vectors."""
    from transformers import AutoTokenizer

    from backend.local import LocalBackend

    pack = dense_pack(tmp_path / "dense")
    dense = LocalBackend(Settings(memory_budget_gb=0.04, data_dir=tmp_path / "data", demo_dir=pack))
    req = GraphRequest(prompt="The ships saw the lamp", model="demo", max_feature_nodes=100, batch_size=16)
    est = dense.attribute(req.model_copy(update={"estimate_only": True})).estimate
    assert est.fits is True, "the density assumed before running says it fits"
    with pytest.raises(DoesNotFit) as err:
        dense.attribute(req)
    tok = AutoTokenizer.from_pretrained(str(REPO / "assets" / "demo" / "tokenizer"))
    n_tokens = len(tok(req.prompt, add_special_tokens=False).input_ids) + 1
    every = 4 * (n_tokens - 1) * 2048  # 4 layers x positions after BOS x 2,048 features: all active
    msg = err.value.message
    assert f"{every:,} active features counted after the forward pass" in msg
    need, have = (float(x) for x in re.findall(r"([0-9.]+) GB", msg)[:2])
    assert need > have > 0, msg
    cached = [p for p in (tmp_path / "data" / "graphs").rglob("*") if p.suffix in (".safetensors", ".gz")]
    assert cached == [], "nothing was attributed"
