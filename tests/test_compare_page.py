"""The Model compare page under AppTest, on the demo pack and the tiny gpt2: what it shows equals
what the backend computes, tokens stay text, absent terms say so, limits are refused politely."""

from __future__ import annotations

import json

import pytest

from backend.schemas import CompareRequest
from tests.test_app_pages import all_markup, app

COMPARE = "pages/compare.py"


def view_data(at) -> dict:
    (el,) = [e for e in at.get("bidi_component") if e.proto.component_name == "featurescope.surprisal_view"]
    return json.loads(el.proto.json)


def chart(at, key: str) -> dict:
    (el,) = [e for e in at.get("plotly_chart") if e.key == key]
    return json.loads(el.proto.spec)


def frames(at, column: str) -> list:
    """The tables on the page that have `column` (read-only tables carry no key)."""
    return [d.value for d in at.dataframe if column in d.value.columns]


def frame(at, column: str):
    (table,) = frames(at, column)
    return table


@pytest.fixture(scope="module", autouse=True)
def unload_afterwards(hf_cache):
    """The app's backend is shared by every AppTest of the session: leave it as found (nothing
    loaded by this module), through the System page's own button."""
    yield
    at = app().run()
    at.switch_page("pages/system.py").run()
    if any(b.key == "sys_unload_all" for b in at.button):
        at.button(key="sys_unload_all").click().run()
    assert "No model is loaded yet" in all_markup(at)


@pytest.fixture(scope="module")
def compared(hf_cache):
    at = app().run()
    at.switch_page(COMPARE).run()
    assert not at.exception, at.exception
    assert "Press **Compare**" in all_markup(at)
    at.button(key="cmp_run").click().run()
    assert not at.exception, at.exception
    return at


def test_defaults_are_the_seed_example(compared):
    from components.compare_views import DEFAULT_SENTENCES, DEFAULT_TERMS

    assert compared.multiselect(key="cmp_models").value == ["demo", "gpt2-small"]
    assert compared.text_area(key="cmp.sentences").value.splitlines() == DEFAULT_SENTENCES
    assert DEFAULT_SENTENCES[0] == "The tokamak achieved H-mode"
    assert compared.text_area(key="cmp.terms").value == ", ".join(DEFAULT_TERMS)
    assert {"tokamak", "plasma", "confinement"} <= set(DEFAULT_TERMS)
    assert compared.query_params["models"] == "demo,gpt2-small"


@pytest.fixture(scope="module")
def want(backend):
    from components.compare_views import DEFAULT_SENTENCES, DEFAULT_TERMS

    return backend.compare(CompareRequest(models=["demo", "gpt2-small"], sentences=DEFAULT_SENTENCES,
                                          domain_terms=DEFAULT_TERMS))


def test_sentences_are_tinted_by_the_backends_surprisal(compared, want):
    data = view_data(compared)
    assert len(data["sentences"]) == len(want.sentences)
    peak = 0.0
    for i, sent in enumerate(data["sentences"]):
        assert sent["text"] == want.sentences[i]
        assert [r["model"] for r in sent["rows"]] == [m.display_name for m in want.models]
        for row, m in zip(sent["rows"], want.models):
            sr = m.sentences[i]
            assert [t["t"] for t in row["tokens"]] == [t.text for t in sr.tokens]
            assert [t["b"] for t in row["tokens"]] == \
                [None if b is None else round(b, 3) for b in sr.surprisal_bits]
            assert [t["term"] for t in row["tokens"]] == sr.term_of
            peak = max([peak] + [b for b, t in zip(sr.surprisal_bits, sr.tokens)
                                 if b is not None and not t.special])
        assert sent["absent"] == want.models[0].sentences[i].absent_terms
    assert data["max_bits"] == pytest.approx(peak, abs=1e-3)
    assert data["sentences"][3]["absent"] == ["tokamak", "plasma", "confinement", "H-mode"]


def test_side_by_side_figures_equal_the_result(compared, want):
    metrics = [(m.label, m.value) for m in compared.metric]
    assert metrics == [item for m in want.models for item in (
        ("Tokens per word", f"{m.mean_tokens_per_word:.2f}"),
        ("Bits/token on terms", f"{m.mean_surprisal_terms:.2f}"))]
    summary = frame(compared, "bits/token on terms")
    assert list(summary["id"]) == ["demo", "gpt2-small"]
    for (_, row), m in zip(summary.iterrows(), want.models):
        assert row["bits/token on terms"] == pytest.approx(round(m.mean_surprisal_terms, 3))
        assert row["bits/token elsewhere"] == pytest.approx(round(m.mean_surprisal_other, 3))
        assert row["tokens per word"] == pytest.approx(round(m.mean_tokens_per_word, 2))
        assert row["features on terms"] == m.features.n_active_on_terms
        assert row["specific (top k)"] == f"{m.features.n_specific} of {len(m.features.features)}"
    bits = chart(compared, "cmp_term_bits")
    assert [t["name"] for t in bits["data"]] == [m.display_name for m in want.models]
    for trace, m in zip(bits["data"], want.models):
        assert trace["y"] == pytest.approx([s.mean_bits for s in m.term_summaries])
    frag = chart(compared, "cmp_fragmentation")
    for trace, m in zip(frag["data"], want.models):
        assert trace["y"] == [t.n_tokens for t in m.terms]
        assert trace["name"].endswith(f"{m.mean_tokens_per_word:.2f} tokens/word")
    side = frame(compared, "GPT-2 small · pieces")
    assert list(side["term"]) == want.domain_terms
    for m in want.models:
        assert list(side[f"{m.display_name} · pieces"]) == \
            [f"{'|'.join(p.replace(' ', '·') for p in t.pieces)}  ({t.n_tokens})" for t in m.terms]


def test_features_tables_link_to_neuronpedia(compared, want):
    compared.toggle(key="cmp_dense_on").set_value(False).run()  # every feature, dense ones too
    assert not compared.exception, compared.exception
    tables = frames(compared, "mean on terms")
    assert len(tables) == 2
    for table, m in zip(tables, want.models):
        assert list(table["feature"]) == [f.index for f in m.features.features]
        assert list(table["specific"]) == [f.specific for f in m.features.features]
    base = "https://www.neuronpedia.org/gpt2-small/6-res-jb/"
    assert list(tables[1]["neuronpedia"]) == [f"{base}{f.index}" for f in want.models[1].features.features]
    # every feature id opens its own dashboard: this model, this dictionary, this layer:index
    from urllib.parse import parse_qs, urlsplit

    for table, m in zip(tables, want.models):
        f = m.features
        opened = [urlsplit(u) for u in table["dashboard"]]
        assert {u.path for u in opened} == {"features"}
        assert [parse_qs(u.query) for u in opened] == [
            {"model": [m.model], "sae_set": [f.sae_set], "feature": [f"{f.layer}:{x.index}"]} for x in f.features]
    guesses = frame(compared, "model's guesses")
    n_occ = sum(len(sr.occurrences) for m in want.models for sr in m.sentences)
    assert len(guesses) == n_occ
    labels = [b.label for b in compared.download_button]
    assert labels == ["All (JSON)", "Summary CSV", "Terms CSV", "Tokens CSV", "Guesses CSV", "Features CSV"]


def test_exports_hold_what_is_shown(want):
    import io

    import pandas as pd

    from backend.schemas import CompareResult
    from components.compare_views import exports

    files = exports(want)
    assert CompareResult.model_validate_json(files["All (JSON)"][1]) == want
    tokens = pd.read_csv(io.BytesIO(files["Tokens CSV"][1]), keep_default_na=False)
    assert len(tokens) == sum(len(sr.tokens) for m in want.models for sr in m.sentences)
    terms = pd.read_csv(io.BytesIO(files["Terms CSV"][1]))
    assert list(terms["tokens"]) == [t.n_tokens for m in want.models for t in m.terms]


XSS_SENTENCES = ["A <script>alert(1)</script> tokamak", "Tag <img src=x onerror=alert(1)> here"]
XSS_TERMS = "tokamak, <img src=x onerror=alert(1)>, divertor"


def test_shared_url_on_the_tiny_gpt2_escapes_tokens_and_shows_absent_terms(hf_cache, backend):
    at = app(models="gpt2-small", terms=XSS_TERMS, sentences="\n".join(XSS_SENTENCES)).run()
    at.switch_page(COMPARE).run()
    assert not at.exception, at.exception
    assert at.multiselect(key="cmp_models").value == ["gpt2-small"]
    markup = all_markup(at)
    assert "<script" not in markup and "<img" not in markup
    data = view_data(at)
    row = data["sentences"][0]["rows"][0]
    assert "".join(t["t"] for t in row["tokens"] if not t["s"]) == XSS_SENTENCES[0], \
        "the view gets the exact text, to be written with textContent"
    assert data["sentences"][0]["absent"] == ["<img src=x onerror=alert(1)>", "divertor"]
    bits = chart(at, "cmp_term_bits")
    assert bits["data"][0]["x"] == ["tokamak", "&lt;img src=x onerror=alert(1)&gt;", "divertor"]
    assert bits["data"][0]["y"][2] is None, "an absent term has no bar, not a zero"
    assert [a["text"] for a in bits["layout"]["annotations"]] == ["absent"]
    side = frame(at, "GPT-2 small · pieces")
    assert list(side["GPT-2 small · bits"])[2] == "absent"
    want = backend.compare(CompareRequest(models=["gpt2-small"], sentences=XSS_SENTENCES,
                                          domain_terms=[t.strip() for t in XSS_TERMS.split(",")]))
    assert list(side["GPT-2 small · bits"])[:2] == \
        [f"{s.mean_bits:.1f}" for s in want.models[0].term_summaries[:2]]

    at.text_area(key="cmp.sentences").input("\n".join(f"Sentence {i}." for i in range(40)))
    at.button(key="cmp_run").click().run()
    assert not at.exception
    assert any("40 sentences; the limit is 32" in w.proto.body for w in at.warning), "checked before sending"
