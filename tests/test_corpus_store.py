"""The demo model's corpus store against brute force.

The store is built on first use by `Backend.feature`. Independently, every document is run again
window by window with `run_with_cache` and SAELens' own `encode`, giving the dense activations;
the statistics, the token-major rows, the feature-major index and the dashboard's answers must
all agree with them.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from backend.corpus import layout as L
from backend.errors import LimitExceeded, NotFound
from backend.schemas import ExplanationEdit, FeatureRef, FeatureRequest, SearchRequest


def feature(backend, layer, index, sae_set="res", **kw):
    return backend.feature(FeatureRequest(feature=FeatureRef(model="demo", sae_set=sae_set, layer=layer, index=index),
                                          **kw))


@pytest.fixture(scope="module")
def store(backend):
    feature(backend, 0, 0, n_examples=1)  # builds the store on first use
    return backend.stores.open(backend.stores.path("demo", "res"))


def dense_activations(model, store, encoders: dict[int, tuple[str, object]]) -> dict[int, np.ndarray]:
    """layer -> [n_tokens, d_sae]: each document cut into windows of seq_len (BOS first, padded), run in
    batches of the build's size. The batches matter on a GPU only: there a matrix product's last bits
    depend on the shape of the batch it is part of, and a JumpReLU threshold turns that into a flip."""
    from backend.corpus.build import BuildOptions

    seq_len, bos = int(store.attr("seq_len")), model.tokenizer.bos_token_id
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    batch_rows = max(1, BuildOptions.batch_tokens // seq_len)
    rows, valid = [], []
    for doc in range(store.n_docs):
        a, b = store.doc_bounds(doc)
        ids = store.tokens(a, b).tolist()
        for s in range(0, len(ids), seq_len - 1):
            chunk = ids[s:s + seq_len - 1]
            rows.append([bos] + chunk + [pad] * (seq_len - 1 - len(chunk)))
            valid.append([False] + [True] * len(chunk) + [False] * (seq_len - 1 - len(chunk)))
    out: dict[int, list[np.ndarray]] = {layer: [] for layer in encoders}
    hooks = [hook for hook, _ in encoders.values()]
    for r in range(0, len(rows), batch_rows):
        batch = torch.tensor(rows[r:r + batch_rows], device=model.cfg.device)
        mask = torch.tensor(valid[r:r + batch_rows], device=model.cfg.device)
        with torch.no_grad():
            _, cache = model.run_with_cache(batch, names_filter=hooks)
            for layer, (hook, encode) in encoders.items():
                out[layer].append(encode(cache[hook])[mask].float().cpu().numpy())
    return {layer: np.concatenate(rows) for layer, rows in out.items()}


@pytest.fixture(scope="module")
def dense(backend, store):
    from sae_lens import SAE

    pack = backend.pack()
    model = backend.load("demo").model
    encoders = {}
    for layer in store.layer_ids:
        sae = SAE.load_from_disk(pack.sae_dir("res", layer), device=backend.device)
        encoders[layer] = (f"blocks.{layer}.hook_resid_post", sae.encode)
    return dense_activations(model, store, encoders)


def test_store_holds_the_first_documents_of_the_pack_corpus(backend, store):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(backend.pack().tokenizer_dir()))
    path = backend.pack().corpus_path()
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    lengths = [len(tok(line, add_special_tokens=False)["input_ids"]) for line in lines]
    n = store.n_docs
    assert sum(lengths[:n]) == store.n_tokens <= 12000 < sum(lengths[:n + 1]), "capped by demo_store_max_tokens"
    for doc in (0, n // 2, n - 1):
        a, b = store.doc_bounds(doc)
        assert store.tokens(a, b).tolist() == tok(lines[doc], add_special_tokens=False)["input_ids"]
        assert store.meta(doc) == {"line": doc + 1}
    assert store.attr("docs_total") == len(lines) and store.attr("docs_used") == n


def test_statistics_equal_the_dense_activations(store, dense):
    for layer, z in dense.items():
        view = store.layer(layer)
        assert z.shape == (store.n_tokens, view.d_sae)
        firing = z > 0
        np.testing.assert_array_equal(view.count, firing.sum(0))
        np.testing.assert_allclose(view.peak, np.where(firing, z, 0).max(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(view.ds(L.STAT_SUM)[:], np.where(firing, z, 0).sum(0, dtype=np.float64),
                                   rtol=1e-4)
        rows, cols = np.nonzero(firing)
        hist = np.zeros((view.d_sae, L.N_BINS), np.int64)
        np.add.at(hist, (cols, L.bins_of(z[rows, cols])), 1)
        mismatched = np.abs(view.ds(L.STAT_HIST)[:] - hist).sum()
        assert mismatched <= 2e-5 * firing.sum(), "only values within float error of a bin edge may move"


def test_token_major_rows_are_each_tokens_top_k(store, dense):
    for layer, z in dense.items():
        view = store.layer(layer)
        z_idx, z_val = view.ds(L.Z_IDX)[:].astype(np.int64), view.ds(L.Z_VAL)[:]
        top = torch.topk(torch.from_numpy(z), view.k, dim=-1).values.numpy()
        np.testing.assert_allclose(z_val, top, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.take_along_axis(z, z_idx, axis=1), z_val, rtol=1e-4, atol=1e-5)


def brute_force_index(z_idx: np.ndarray, z_val: np.ndarray, feature: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, values) where `feature` fires among the rows, strongest first, ties in token order."""
    acts = np.where(z_idx == feature, z_val, 0).sum(1)
    tokens = np.flatnonzero(acts > 0)
    order = np.lexsort((tokens, -acts[tokens]))
    return tokens[order], acts[tokens[order]]


def test_feature_index_equals_a_scan_of_the_rows(store, dense):
    for layer, z in dense.items():
        view = store.layer(layer)
        z_idx, z_val = view.ds(L.Z_IDX)[:], view.ds(L.Z_VAL)[:]
        for f in range(view.d_sae):
            tokens, values = view.entries(f, 0, view.n_entries(f))
            want_t, want_v = brute_force_index(z_idx, z_val, f)
            np.testing.assert_array_equal(tokens, want_t)
            np.testing.assert_array_equal(values, want_v)
            np.testing.assert_allclose(values, z[tokens, f], rtol=1e-4, atol=1e-5)


def test_dashboard_answers_equal_brute_force(backend, store, dense):
    from sae_lens import SAE

    model = backend.load("demo").model
    layer = 1
    z = dense[layer]
    view = store.layer(layer)
    z_idx, z_val = view.ds(L.Z_IDX)[:], view.ds(L.Z_VAL)[:]
    counts = (z > 0).sum(0)
    sae = SAE.load_from_disk(backend.pack().sae_dir("res", layer), device=backend.device)
    for f in (int(np.argmax(counts)), int(np.argsort(counts)[len(counts) // 2]), 3):
        r = feature(backend, layer, f, n_examples=7, n_quantiles=4, examples_per_quantile=2, context_tokens=5,
                    n_logits=6)
        assert r.density == pytest.approx(counts[f] / store.n_tokens) and r.n_active == counts[f]
        assert r.max_activation == pytest.approx(z[:, f].max(), rel=1e-4)
        assert r.mean_activation == pytest.approx(z[:, f][z[:, f] > 0].mean(), rel=1e-4)
        tokens, values = brute_force_index(z_idx, z_val, f)
        assert [e.token_index for e in r.examples] == tokens[:7].tolist()
        assert [e.max_activation for e in r.examples] == pytest.approx(values[:7].tolist())
        for e in r.examples:
            a, b = store.doc_bounds(e.doc_id)
            assert a <= e.token_index < b and e.doc_position == e.token_index - a
            lo, hi = max(a, e.token_index - 5), min(b, e.token_index + 6)
            assert e.token_ids == store.tokens(lo, hi).tolist()
            assert e.tokens == [model.tokenizer.decode([i]) for i in e.token_ids]
            assert e.activations == pytest.approx(np.where(z_idx[lo:hi] == f, z_val[lo:hi], 0).sum(1).tolist())
            assert e.activations[e.max_position] == pytest.approx(e.max_activation)
        peak = values[0]
        for i, band in enumerate(r.quantiles):
            hi_edge, lo_edge = peak * (4 - i) / 4, peak * (3 - i) / 4
            assert band.high == pytest.approx(hi_edge) and band.low == pytest.approx(lo_edge)
            in_band = (values >= lo_edge) & ((values < hi_edge) if i else True)
            assert band.count == int(in_band.sum())
            assert all(lo_edge - 1e-6 <= e.max_activation <= hi_edge + 1e-6 for e in band.examples)
        row = view.ds(L.STAT_HIST)[f]
        nz = np.flatnonzero(row)
        assert r.histogram.counts == row[nz[0]:nz[-1] + 1].tolist()
        assert sum(r.histogram.counts) == counts[f]
        logits = (sae.W_dec[f] @ model.W_U).detach()
        assert [t.id for t in r.top_logits] == torch.topk(logits, 6).indices.tolist()
        assert [t.value for t in r.top_logits] == pytest.approx(torch.topk(logits, 6).values.tolist(), rel=1e-5)
        assert [t.id for t in r.bottom_logits] == torch.topk(-logits, 6).indices.tolist()
        assert r.sampling.method == "sequential_from_start" and r.sampling.tokens_scanned == store.n_tokens
        assert r.sampling.corpus_coverage == pytest.approx(store.n_docs / store.attr("docs_total"))
        assert r.examples_sampling.method == "top_by_activation" and "top 32" in r.examples_sampling.description


def test_transcoder_features_use_the_same_store_code(backend):
    """A per-layer transcoder set (graph nodes are transcoder features) gets its own store."""
    from circuit_tracer.transcoder.single_layer_transcoder import load_relu_transcoder

    r = feature(backend, 1, 4, sae_set="demo", n_examples=5)
    store = backend.stores.open(backend.stores.path("demo", "demo"))
    assert r.dictionary_kind == "transcoder" and r.hook_name == "blocks.1.hook_resid_mid"
    assert store.attr("dictionary_kind") == "transcoder"
    model = backend.load("demo").model
    path = backend.pack().transcoder_paths("demo")[1]
    tc = load_relu_transcoder(
        str(path), 1, device=torch.device(backend.device), dtype=torch.float32, lazy_encoder=False, lazy_decoder=False
    )
    z = dense_activations(model, store, {1: ("blocks.1.hook_resid_mid", tc.encode)})[1]
    np.testing.assert_array_equal(store.layer(1).count, (z > 0).sum(0))
    view = store.layer(1)
    tokens, values = brute_force_index(view.ds(L.Z_IDX)[:], view.ds(L.Z_VAL)[:], 4)
    assert [e.token_index for e in r.examples] == tokens[:5].tolist()
    np.testing.assert_allclose([e.max_activation for e in r.examples], z[tokens[:5], 4], rtol=1e-4)
    logits = tc.W_dec[4] @ model.W_U
    assert [t.id for t in r.top_logits] == torch.topk(logits, 10).indices.tolist()


def test_search_by_text_ranks_the_peak_activations(backend):
    from sae_lens import SAE

    text = "Return a new path with the suffix changed."
    res = backend.search(SearchRequest(model="demo", sae_set="res", mode="text", text=text, layers=[0], k=5))
    model = backend.load("demo").model
    sae = SAE.load_from_disk(backend.pack().sae_dir("res", 0), device=backend.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(text), names_filter="blocks.0.hook_resid_post")
        z = sae.encode(cache["blocks.0.hook_resid_post"])[0, 1:]  # without the BOS position
    peak = z.max(0)
    top = torch.topk(peak.values, 5)
    assert [h.feature.index for h in res.hits] == top.indices.tolist()
    assert [h.score for h in res.hits] == pytest.approx(top.values.tolist(), rel=1e-5)
    assert [h.top_position for h in res.hits] == [int(peak.indices[i]) + 1 for i in top.indices]
    store = backend.stores.open(backend.stores.path("demo", "res"))
    h = res.hits[0]
    assert h.relative == pytest.approx(h.score / store.layer(0).peak[h.feature.index], rel=1e-5)


def test_user_explanations_are_saved_shown_and_searchable(backend):
    ref = FeatureRef(model="demo", sae_set="res", layer=1, index=11)
    before = feature(backend, 1, 11, n_examples=0)  # the pack's own explanation, if it has one
    saved = backend.save_explanation(ExplanationEdit(feature=ref, text="  Docstring openings about pathlib objects "))
    assert (saved.explanation, saved.explanation_source) == ("Docstring openings about pathlib objects", "user")
    assert feature(backend, 1, 11, n_examples=0).explanation == "Docstring openings about pathlib objects"
    hits = backend.search(SearchRequest(model="demo", sae_set="res", mode="explanation", query="pathlib docstring"))
    assert [(h.feature.layer, h.feature.index) for h in hits.hits][:1] == [(1, 11)]
    assert backend.search(SearchRequest(model="demo", sae_set="res", mode="explanation", query="zebra")).hits == []
    cleared = backend.save_explanation(ExplanationEdit(feature=ref, text=""))
    assert (cleared.explanation, cleared.explanation_source) == (before.explanation, before.explanation_source)
    assert cleared.explanation_source != "user"
    assert feature(backend, 1, 11, n_examples=0).explanation_source == before.explanation_source


def test_saving_an_explanation_checks_the_feature_and_the_length(backend):
    with pytest.raises(NotFound, match="does not exist"):
        backend.save_explanation(ExplanationEdit(feature=FeatureRef(model="demo", sae_set="res", layer=1,
                                                                    index=10**6), text="x"))
    with pytest.raises(LimitExceeded, match="FEATURESCOPE_MAX_EXPLANATION_CHARS"):
        backend.save_explanation(ExplanationEdit(feature=FeatureRef(model="demo", sae_set="res", layer=1, index=1),
                                                 text="x" * (backend.limits.max_explanation_chars + 1)))
