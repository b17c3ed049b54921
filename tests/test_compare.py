"""Model compare against independent computations, on two tiny models with different tokenizers:
the demo pack's model and the tiny `gpt2` of the local Hugging Face cache.

Every expected figure is computed here from the tokenizer's own `decode`, TransformerLens'
`to_tokens` and logits, `torch.log_softmax`, and SAELens' own `encode`, never from the backend's
helpers.
"""

from __future__ import annotations

import math

import pytest
import torch

from backend.errors import DoesNotFit, InvalidRequest, LimitExceeded, NotFound
from backend.local import LocalBackend
from backend.schemas import CompareRequest, CompareResult
from backend.settings import Limits, Settings

MODELS = ["demo", "gpt2-small"]
SENTENCES = [
    "The tokamak achieved H-mode",
    "Plasma confinement improved once the TOKAMAK reached H-mode.",
    "The weather was pleasant, so we walked to the station.",
    "Two tokamaks and a stellarator share one plasma lab.",
]
# 'divertor' occurs nowhere; 'tokamak' is missing from sentences 2 and 3 ('tokamaks' is another word).
TERMS = ["tokamak", "plasma", "confinement", "H-mode", "divertor"]
K = 6
BODY = {"models": ["demo"], "sentences": ["The tokamak achieved H-mode"], "domain_terms": ["tokamak"]}


def ref_model(backend, model_id: str):
    return backend.models.get(backend.model_entry(model_id), "float32").model


def ref_pieces(tok, ids: list[int]) -> list[str]:
    return [tok.decode([i]) for i in ids]


def ref_char_spans(tok, ids: list[int], text: str) -> list[tuple[int, int]]:
    """Each token's characters, by laying the decoded pieces end to end (specials are empty)."""
    specials = set(tok.all_special_ids)
    spans, pos = [], 0
    for i in ids:
        piece = "" if i in specials else tok.decode([i])
        spans.append((pos, pos + len(piece)))
        pos += len(piece)
    assert "".join("" if i in specials else tok.decode([i]) for i in ids) == text
    return spans


def ref_matches(text: str, term: str) -> list[tuple[int, int]]:
    """Whole-word, case-insensitive occurrences, found by scanning."""
    low, t, out = text.lower(), term.lower(), []
    i = low.find(t)
    while i >= 0:
        before = text[i - 1] if i > 0 else " "
        j = i + len(t)
        after = text[j] if j < len(text) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            out.append((i, j))
        i = low.find(t, i + 1)
    return out


def ref_sentence(model, text: str, terms: list[str]):
    """Token ids, surprisal in bits (None first), term of each token, and the model's log-probs."""
    tok = model.tokenizer
    tokens = model.to_tokens(text)
    ids = tokens[0].tolist()
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens)[0].double(), dim=-1)
    bits = [None] + [float(-logp[p - 1, ids[p]] / math.log(2)) for p in range(1, len(ids))]
    spans = ref_char_spans(tok, ids, text)
    owner: list[set[str]] = [set() for _ in ids]
    occurrences = []
    for term in terms:
        for a, b in ref_matches(text, term):
            pos = [p for p, (s, e) in enumerate(spans) if e > s and s < b and e > a]
            for p in pos:
                owner[p].add(term)
            lead = []
            p = pos[0] - 1
            while p >= 0 and spans[p][1] > spans[p][0] and not text[spans[p][0]:spans[p][1]].strip():
                lead.insert(0, p)
                p -= 1
            partial = bool(text[spans[pos[0]][0]:a].strip() or text[b:spans[pos[-1]][1]].strip())
            occurrences.append((term, a, pos, lead, partial))
    return ids, bits, owner, logp, occurrences


@pytest.fixture(scope="module")
def result(backend) -> CompareResult:
    return backend.compare(CompareRequest(models=MODELS, sentences=SENTENCES, domain_terms=TERMS, k=K))


def test_the_two_models_tokenize_differently(result):
    demo, gpt2 = result.models
    assert (demo.model, gpt2.model) == ("demo", "gpt2-small")
    assert demo.d_vocab != gpt2.d_vocab
    assert [t.pieces for t in demo.terms] != [t.pieces for t in gpt2.terms]


@pytest.mark.parametrize("index", [0, 1])
def test_fragmentation_equals_the_tokenizer(result, backend, index):
    reading = result.models[index]
    tok = ref_model(backend, reading.model).tokenizer
    for tt, term in zip(reading.terms, TERMS):
        ids = tok.encode(" " + term, add_special_tokens=False)
        kept = [i for i in ids if tok.decode([i]).strip()]  # whitespace-only pieces are not the term
        assert tt.term == term
        assert tt.ids == kept and tt.pieces == ref_pieces(tok, kept)
        assert tt.n_tokens == len(kept) and tt.n_words == len(term.split())
        assert tt.tokens_per_word == pytest.approx(len(kept) / len(term.split()))
        assert tt.pieces_initial == ref_pieces(tok, tok.encode(term, add_special_tokens=False))
    n_tok = [len([i for i in tok.encode(" " + t, add_special_tokens=False) if tok.decode([i]).strip()])
             for t in TERMS]
    assert reading.mean_tokens_per_term == pytest.approx(sum(n_tok) / len(TERMS))
    assert reading.mean_tokens_per_word == pytest.approx(sum(n_tok) / sum(len(t.split()) for t in TERMS))


@pytest.mark.parametrize("index", [0, 1])
def test_surprisal_equals_log_softmax(result, backend, index):
    reading = result.models[index]
    model = ref_model(backend, reading.model)
    term_bits, other_bits = [], []
    for sr, text in zip(reading.sentences, SENTENCES):
        ids, bits, owner, logp, occurrences = ref_sentence(model, text, TERMS)
        assert [t.id for t in sr.tokens] == ids
        assert sr.surprisal_bits[0] is None and bits[0] is None
        assert sr.surprisal_bits[1:] == pytest.approx(bits[1:], rel=1e-4, abs=1e-4)
        assert [o is not None for o in sr.term_of] == [bool(o) for o in owner]
        assert all(o is None or o in owner[p] for p, o in enumerate(sr.term_of))
        assert sr.predicted[1:] == ref_pieces(model.tokenizer, logp[:-1].argmax(-1).tolist())
        for p in range(1, len(ids)):
            (term_bits if owner[p] else other_bits).append(bits[p])
        # Each occurrence: its tokens, its total bits (with the whitespace before it), the guesses.
        assert [(o.term, o.start, o.positions) for o in sr.occurrences] == \
            sorted([(t, a, pos) for t, a, pos, _, _ in occurrences], key=lambda x: (x[1], x[0]))
        for occ in sr.occurrences:
            _, _, pos, lead, partial = next(x for x in occurrences if (x[0], x[1]) == (occ.term, occ.start))
            assert occ.partial == partial
            want = sum(bits[p] for p in lead + pos)
            assert occ.bits == pytest.approx(want, rel=1e-4)
            assert occ.bits_per_token == pytest.approx(want / len(pos), rel=1e-4)
            first = (lead + pos)[0]
            top = torch.topk(logp[first - 1].exp(), 5)
            assert [g.id for g in occ.guesses] == top.indices.tolist()
            assert [g.prob for g in occ.guesses] == pytest.approx(top.values.tolist(), rel=1e-4)
            assert occ.actual_prob == pytest.approx(float(logp[first - 1, ids[first]].exp()), rel=1e-4)
            assert occ.actual_rank == 1 + int((logp[first - 1] > logp[first - 1, ids[first]]).sum())
    assert reading.mean_surprisal_terms == pytest.approx(sum(term_bits) / len(term_bits), rel=1e-4)
    assert reading.mean_surprisal_other == pytest.approx(sum(other_bits) / len(other_bits), rel=1e-4)
    assert (reading.n_term_tokens, reading.n_other_tokens) == (len(term_bits), len(other_bits))


def test_absent_terms_are_absent_not_zero(result):
    for reading in result.models:
        by_term = {s.term: s for s in reading.term_summaries}
        divertor = by_term["divertor"]
        assert not divertor.present and divertor.n_occurrences == 0
        assert divertor.mean_bits is None and divertor.mean_bits_per_token is None
        tokamak = by_term["tokamak"]
        assert tokamak.present and tokamak.sentences == [0, 1], "'TOKAMAK' matches, 'tokamaks' does not"
        assert by_term["plasma"].sentences == [1, 3]
        for sr in reading.sentences:
            found = {o.term for o in sr.occurrences}
            assert set(sr.absent_terms) == set(TERMS) - found
            assert "divertor" in sr.absent_terms
            assert all(o.bits is not None and o.bits > 0 for o in sr.occurrences)
        assert reading.sentences[2].occurrences == [] and reading.sentences[2].term_of == \
            [None] * len(reading.sentences[2].tokens)
        assert "tokamak" in reading.sentences[3].absent_terms


def _ref_sae(backend, model_id: str, layer: int):
    from sae_lens import SAE

    if model_id == "demo":
        return SAE.load_from_disk(backend.pack().sae_dir("res", layer), device=backend.device)
    return SAE.from_pretrained("gpt2-small-res-jb", f"blocks.{layer}.hook_resid_pre", device=backend.device)


@pytest.mark.parametrize("index", [0, 1])
def test_features_on_terms_equal_saelens_encode(result, backend, index):
    reading = result.models[index]
    fr = reading.features
    model = ref_model(backend, reading.model)
    # The SAE layer read is the one closest to half depth (resid_pre L reads depth L/n, resid_post (L+1)/n).
    n = model.cfg.n_layers
    if reading.model == "gpt2-small":
        assert (fr.layer, fr.hook_name, fr.relative_depth) == (6, "blocks.6.hook_resid_pre", 0.5)
    else:
        layers = backend.model_entry("demo").sae_sets["res"].layers
        assert fr.layer == min(layers, key=lambda L: (abs((L + 1) / n - 0.5), L))
        assert fr.relative_depth == pytest.approx((fr.layer + 1) / n)
    sae = _ref_sae(backend, reading.model, fr.layer)
    z_terms, z_other, fired_terms = [], [], {}
    for text in SENTENCES:
        ids, _, owner, _, _ = ref_sentence(model, text, TERMS)
        with torch.no_grad():
            _, cache = model.run_with_cache(model.to_tokens(text), names_filter=fr.hook_name)
            z = sae.encode(cache[fr.hook_name])[0].cpu()
        for p in range(1, len(ids)):  # position 0 is BOS
            (z_terms if owner[p] else z_other).append(z[p])
            for t in owner[p]:
                fired_terms.setdefault(t, torch.zeros(z.shape[-1], dtype=torch.bool))
                fired_terms[t] |= z[p] > 0
    zt, zo = torch.stack(z_terms), torch.stack(z_other)
    mean = zt.clamp(min=0).mean(0)
    active = (zt > 0).any(0)
    other_rate = (zo > 0).float().mean(0)
    specific = active & (other_rate <= 0.05)
    assert (fr.n_term_tokens, fr.n_other_tokens) == (len(z_terms), len(z_other))
    assert fr.n_active_on_terms == int(active.sum())
    assert fr.n_specific_all == int(specific.sum())
    want = sorted(range(len(mean)), key=lambda i: -float(mean[i]) if active[i] else 1.0)[:K]
    want = [i for i in want if active[i]]
    assert [f.index for f in fr.features] == want
    for f in fr.features:
        assert f.mean_on_terms == pytest.approx(float(mean[f.index]), rel=1e-4, abs=1e-6)
        assert f.max_on_terms == pytest.approx(float(zt[:, f.index].max()), rel=1e-4, abs=1e-6)
        assert f.term_rate == pytest.approx(float((zt[:, f.index] > 0).float().mean()))
        assert f.other_rate == pytest.approx(float(other_rate[f.index]))
        assert f.specific == bool(specific[f.index])
        assert f.terms == [t for t in TERMS if t in fired_terms and bool(fired_terms[t][f.index])]
    assert fr.n_specific == sum(bool(specific[i]) for i in want)
    spec = [i for i in sorted(range(len(mean)), key=lambda i: -float(mean[i])) if specific[i]][:K]
    assert [f.index for f in fr.specific_features] == spec


def test_explanations_and_neuronpedia_links(result, backend):
    top = result.models[1].features.features[0]
    backend.explanations.save("gpt2-small", "res-jb", 6, top.index, "fusion devices")
    try:
        again = backend.compare(CompareRequest(models=["gpt2-small"], sentences=SENTENCES[:2],
                                               domain_terms=["tokamak"], sae_layer=6, k=50))
    finally:
        backend.explanations.save("gpt2-small", "res-jb", 6, top.index, "")
    fr = again.models[0].features
    assert fr.neuronpedia_id == "gpt2-small/6-res-jb"
    feat = next(f for f in fr.features if f.index == top.index)
    assert feat.explanation == "fusion devices"
    assert feat.neuronpedia_url == f"https://www.neuronpedia.org/gpt2-small/6-res-jb/{top.index}"
    assert all(f.explanation is None for f in fr.features if f.index != top.index)


def test_a_budget_for_one_model_still_compares_both(result, backend):
    """Each model fits the budget alone, not with the other: the first is unloaded for the second,
    with progress saying so, and the figures are those of the unconstrained run."""
    from backend import compute

    est = {m: compute.estimate_memory(backend.model_entry(m), seq_len=512, batch_size=1,
                                      dtype=backend.dtype_for(backend.model_entry(m)),
                                      device=backend.device).total_gb * compute.GB for m in MODELS}
    small, big = sorted(MODELS, key=est.get)
    budget = (est[big] + 4096) / compute.GB
    tight = LocalBackend(Settings(memory_budget_gb=budget))
    assert est[small] + est[big] > tight.models.budget_bytes
    seen: list[tuple[float | None, str]] = []
    got = tight.compare(CompareRequest(models=[small, big], sentences=SENTENCES, domain_terms=TERMS, k=K),
                        progress=lambda f, m: seen.append((f, m)))
    assert [m.entry.id for m in tight.models.resident()] == [big]
    name = {m: tight.model_entry(m).display_name for m in MODELS}
    assert f"Unloaded {name[small]} to make room for {name[big]}." in got.notes
    assert any("Unloaded" in msg for _, msg in seen)
    fractions = [f for f, _ in seen if f is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    want = {m.model: m for m in result.models}
    for reading in got.models:
        ref = want[reading.model]
        assert [s.surprisal_bits for s in reading.sentences] == [s.surprisal_bits for s in ref.sentences]
        assert reading.terms == ref.terms and reading.term_summaries == ref.term_summaries
        assert reading.features == ref.features
    assert [m.model for m in got.models] == [small, big], "results come in the requested order"
    # Again: the model still loaded is read first, so each model is loaded once, not twice.
    again = tight.compare(CompareRequest(models=[small, big], sentences=SENTENCES[:1], domain_terms=TERMS))
    dtype = tight.dtype_for(tight.model_entry(small))
    assert f"Loaded {name[small]} ({dtype}, {tight.device})." in again.notes
    assert not any(note.startswith(f"Loaded {name[big]}") for note in again.notes), again.notes
    assert [m.model for m in again.models] == [small, big]


def test_no_hook_outlives_the_call(result, backend):
    for model_id in MODELS:
        loaded = backend.models.get(backend.model_entry(model_id), "float32")
        assert all(not hp._forward_hooks for hp in loaded.model.hook_dict.values())


def test_seed_body_validates_and_the_seed_models_are_checked_before_loading(hf_cache):
    seed = {"models": ["gemma-2-2b", "llama-3.1-8b"], "sentences": ["The tokamak achieved H-mode"],
            "domain_terms": ["tokamak", "plasma", "confinement"]}
    req = CompareRequest.model_validate(seed)
    assert req.models == seed["models"] and req.domain_terms == seed["domain_terms"]
    small = LocalBackend(Settings(memory_budget_gb=2.0))
    with pytest.raises(DoesNotFit, match="Gemma-2-2B needs about"):
        small.compare(req)
    assert small.models.resident() == []


@pytest.mark.parametrize("limits,req,match", [
    ({"max_compare_models": 1}, {"models": ["demo", "gpt2-small"]}, "number of models is 2; the limit is 1"),
    ({"max_compare_sentences": 2}, {"sentences": ["a", "b", "c"]}, "sentences is 3; the limit is 2"),
    ({"max_compare_terms": 1}, {"domain_terms": ["x", "y"]}, "number of domain terms is 2; the limit is 1"),
    ({"max_compare_term_chars": 5}, {"domain_terms": ["confinement"]}, "(characters) is 11; the limit is 5"),
    ({"max_text_chars": 10}, {"sentences": ["123456", "123456"]}, "all together) is 12; the limit is 10"),
    ({"max_k": 3}, {"k": 4}, "k is 4; the limit is 3"),
    ({"max_k": 3}, {"k": 1, "top_guesses": 9}, "guesses is 9; the limit is 3"),
])
def test_limits_are_refused_before_any_work(hf_cache, limits, req, match):
    be = LocalBackend(Settings(limits=Limits(**limits)))
    body = {**BODY, **req}
    with pytest.raises(LimitExceeded) as err:
        be.compare(CompareRequest(**body))
    assert match in err.value.message
    assert be.models.resident() == []


def test_sentence_tokens_over_the_limit_name_the_sentence(hf_cache):
    be = LocalBackend(Settings(limits=Limits(max_prompt_tokens=4)))
    with pytest.raises(LimitExceeded, match="Sentence 2 in .*tokens.* the limit is 4"):
        be.compare(CompareRequest(models=["demo"], sentences=["ok", SENTENCES[1]], domain_terms=[]))


@pytest.mark.parametrize("req,error,match", [
    ({"models": ["nope"]}, NotFound, "Unknown model 'nope'"),
    ({"sae_layer": 99}, NotFound, "no SAE at layer 99"),
    ({"sae_layers": {"gpt2-small": 1}}, InvalidRequest, "not among the models"),
    ({"sae_sets": {"demo": "nope"}}, NotFound, "Unknown SAE set of demo 'nope'"),
    ({"sentences": ["fine", "  "]}, InvalidRequest, "Sentence 2 is empty"),
    ({"domain_terms": ["ok", ""]}, InvalidRequest, "Domain term 2 is empty"),
])
def test_bad_requests_say_what_to_do(hf_cache, req, error, match):
    be = LocalBackend(Settings())
    body = {**BODY, **req}
    with pytest.raises(error, match=match):
        be.compare(CompareRequest(**body))
    assert be.models.resident() == []
