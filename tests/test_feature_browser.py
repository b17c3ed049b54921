"""The feature browser page under AppTest, on the demo pack, against the backend's own answers."""

from __future__ import annotations

import html
import json
import re
from urllib.parse import parse_qsl

import pytest

from backend.schemas import Example, FeatureRef, FeatureRequest, SearchRequest
from components.feature_dashboard import examples_html
from components.text import visible
from tests.test_app_pages import all_markup, app

PAGE = "pages/features.py"
REQ = dict(n_examples=20, n_quantiles=5, examples_per_quantile=3, context_tokens=12)


def browser(**query: str):
    at = app(**query).run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def shown_examples(markup: str) -> list[list[tuple[str, bool]]]:
    """Per example block: (token text, is the activating token) as the browser will show them."""
    out = []
    for block in re.split(r'<div class="fs-ex">', markup)[1:]:
        spans = re.findall(r'<span class="(tok(?: max)?)"[^>]*>(.*?)</span>', block, flags=re.S)
        out.append([(html.unescape(text), cls == "tok max") for cls, text in spans])
    return out


@pytest.fixture(scope="module")
def opened(hf_cache):
    return browser(model="demo", sae_set="res", feature="1:7")


def test_dashboard_shows_the_backends_examples_histogram_and_logits(opened, backend):
    at = opened
    want = backend.feature(FeatureRequest(feature=FeatureRef(model="demo", sae_set="res", layer=1, index=7), **REQ))
    assert want.examples, "the demo store has examples for this feature"
    html_blocks = [e.proto.body for e in at.get("html")]
    top = shown_examples(html_blocks[0])
    assert len(top) == len(want.examples)
    for shown, ex in zip(top, want.examples):
        assert [t for t, _ in shown] == [t.replace("\n", "↵") for t in ex.tokens]
        assert [i for i, (_, is_max) in enumerate(shown) if is_max] == [ex.max_position]
    bands = [shown_examples(b) for b in html_blocks[1:]]
    assert [len(b) for b in bands] == [len(q.examples) for q in want.quantiles if q.examples]
    (chart,) = at.get("plotly_chart")
    spec = json.loads(chart.proto.spec)
    assert spec["data"][0]["y"] == want.histogram.counts
    top_frame, bottom_frame = at.dataframe[0].value, at.dataframe[1].value
    assert list(top_frame["id"]) == [t.id for t in want.top_logits]
    assert list(top_frame["token"]) == [visible(t.token) for t in want.top_logits]
    assert list(top_frame["logit"]) == pytest.approx([t.value for t in want.top_logits], abs=1e-4)
    assert list(bottom_frame["id"]) == [t.id for t in want.bottom_logits]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Density"] == f"{want.density:.4%}"
    assert metrics["Fires on"] == f"{want.n_active:,} tokens"
    assert at.query_params["feature"] == "1:7" and at.query_params["sae_set"] == "res"
    assert "sequential_from_start" in all_markup(at), "sampling metadata is shown"


def test_next_moves_to_the_next_feature_and_the_url_follows(hf_cache):
    at = browser(model="demo", sae_set="res", feature="0:9")
    at.button(key="fb_next").click().run()
    assert not at.exception, at.exception
    assert at.query_params["feature"] == "0:10"
    assert at.number_input(key="fb_index::demo::res").value == 10
    assert [h.value for h in at.subheader] == ["Feature 0:10"]


def test_a_graph_link_to_a_transcoder_feature_opens_it(hf_cache, backend):
    at = browser(model="demo", sae_set="demo", feature="0:3")
    assert at.selectbox(key="fb_set::demo").value == "demo"
    assert at.query_params["sae_set"] == "demo", "the sidebar's SAE set does not overwrite the link"
    assert "(transcoder)" in all_markup(at) and [h.value for h in at.subheader] == ["Feature 0:3"]
    want = backend.feature(FeatureRequest(feature=FeatureRef(model="demo", sae_set="demo", layer=0, index=3), **REQ))
    assert list(at.dataframe[0].value["id"]) == [t.id for t in want.top_logits]


def test_a_link_with_a_text_shows_the_feature_on_it(hf_cache, backend):
    """A link's `text` opens the dashboard's 'Try your own text' with it, tinting the feature's
    activation on each token as the backend reads it; a transcoder feature says where to look instead
    of failing (the highlighter's reading is for SAE sets)."""
    from backend.schemas import AnalyzeRequest, LayerFeature

    prompt = "Return the path of the file as a string"
    at = browser(model="demo", sae_set="res", feature="1:33", text=prompt)
    assert not at.exception, at.exception
    assert at.text_area(key="fb.try_text").value == prompt
    want = backend.analyze(AnalyzeRequest(model="demo", sae_set="res", text=prompt, layers=[1], k=1,
                                          track=[LayerFeature(layer=1, index=33)]))
    values = want.tracked[0].values
    fired = sum(v > 0 for v, t in zip(values, want.tokens, strict=True) if not t.special)
    n = sum(not t.special for t in want.tokens)
    assert any(c.value == f"Fires on {fired} of {n} tokens." for c in at.caption), [c.value for c in at.caption]
    top = max(v for v, t in zip(values, want.tokens, strict=True) if not t.special)
    assert any(f"peak here {top:.4g}" in h.proto.body for h in at.get("html"))
    tc = browser(model="demo", sae_set="demo", feature="0:3", text=prompt)
    assert not tc.exception and not tc.error, (tc.exception, tc.error)
    assert any("works for SAE features" in c.value for c in tc.caption)


def test_an_edited_explanation_is_saved_and_shown(hf_cache, backend):
    at = browser(model="demo", sae_set="res", feature="0:21")
    at.text_area(key="fb_dash::res::0:21_expl_text").input("Fires on <b>bold</b> claims")
    next(b for b in at.button if b.label == "Save explanation").click().run()
    assert not at.exception, at.exception
    try:
        assert backend.explanations.get("demo", "res", 0, 21) == ("Fires on <b>bold</b> claims", "user")
        assert any(t.value == "Fires on <b>bold</b> claims" for t in at.get("text")), "shown as plain text"
        assert "(from user)" in all_markup(at)
    finally:
        backend.explanations.save("demo", "res", 0, 21, "")


def test_search_by_text_lists_the_backends_hits(hf_cache, backend):
    at = browser(model="demo", sae_set="res")
    text = "Return the path as a string."
    at.text_area(key="fb.search_text").input(text)
    next(b for b in at.button if b.label == "Search").click().run()
    assert not at.exception, at.exception
    want = backend.search(SearchRequest(model="demo", sae_set="res", mode="text", text=text, k=20))

    def dense(h) -> bool:  # the hit's density; without one, the pack's note "(dense: fires on N% of tokens)"
        if h.density is not None:
            return h.density >= 0.10
        m = re.search(r"dense: fires on (\d+)%", h.explanation or "")
        return bool(m) and int(m.group(1)) >= 10

    kept = [h for h in want.hits if not dense(h)]
    frame = at.dataframe[0].value
    assert list(frame["feature"]) == [f"{h.feature.layer}:{h.feature.index}" for h in kept], "dense hidden"
    assert list(frame["score"]) == pytest.approx([h.score for h in kept], abs=1e-4)
    if len(kept) < len(want.hits):
        assert any(f"{len(want.hits) - len(kept)} dense feature(s) hidden" in c.proto.body for c in at.caption)
    at.toggle(key="fb_dense_on").set_value(False).run()
    frame = at.dataframe[0].value
    assert list(frame["feature"]) == [f"{h.feature.layer}:{h.feature.index}" for h in want.hits]
    assert list(frame["score"]) == pytest.approx([h.score for h in want.hits], abs=1e-4)


def test_example_tokens_are_escaped():
    ex = Example(doc_id=1, tokens=["<script>", "alert(1)", "</script>", "\n<img src=x onerror=alert(1)>"],
                 activations=[0.0, 2.0, 0.5, 0.1], max_position=1, max_activation=2.0,
                 metadata={"user": "<b>me</b>"})
    markup = examples_html([ex])
    assert "<script" not in markup and "<img" not in markup and "<b>" not in markup
    assert "&lt;script&gt;" in markup and "&lt;b&gt;me&lt;/b&gt;" in markup
    assert [t for t, _ in shown_examples(markup)[0]] == ["<script>", "alert(1)", "</script>", "↵<img src=x onerror=alert(1)>"]


def test_the_highlighter_links_a_selected_feature_to_the_browser(hf_cache):
    at = app(model="demo", sae_set="res", text="Link me to the browser.", feature="1:7", layer="1").run()
    assert not at.exception, at.exception
    (link,) = [e.proto for e in at.get("page_link") if e.proto.label == "Feature browser"]
    assert link.page == "features"
    assert dict(parse_qsl(link.query_string)) == {"model": "demo", "sae_set": "res", "feature": "1:7"}


def test_search_by_explanation_words_lists_matching_features(hf_cache, backend):
    backend.explanations.save("demo", "res", 1, 33, "Closing brackets of Python calls")
    try:
        at = browser(model="demo", sae_set="res")
        at.text_input(key="fb.search_words").input("closing bracket")
        [b for b in at.button if b.label == "Search"][1].click().run()
        assert not at.exception, at.exception
        frame = at.dataframe[0].value
        assert list(frame["feature"]) == ["1:33"]
        assert list(frame["explanation"]) == ["Closing brackets of Python calls"]
    finally:
        backend.explanations.save("demo", "res", 1, 33, "")


def test_a_dashboard_does_not_wait_for_a_store_being_built(backend):
    """While another request builds the demo's store (its build lock held here), a dashboard asked not
    to wait answers at once with the explanation and logits and says the store is pending; one that
    waits relays the builder's progress and answers in full once the build is done."""
    import threading

    from backend.local.dashboard import stores

    ref = FeatureRef(model="demo", sae_set="res", layer=1, index=7)
    full = backend.feature(FeatureRequest(feature=ref, n_examples=3))  # builds the store if it is not there
    assert full.store_status == "ready" and full.examples
    reg = stores(backend.runtime)
    path = reg.path("demo", "res")
    lock = reg.build_lock(path)
    assert lock.acquire(blocking=False)
    relay = reg.report(path, lambda fraction, message: None)
    relay(0.25, "Building the demo corpus store: 25%")
    try:
        quick = backend.feature(FeatureRequest(feature=ref, n_examples=3, wait_for_store=False))
        assert quick.store_status == "pending" and not quick.examples
        # the complete store already on disk (builds rename into place) still gives the density
        assert quick.density == full.density == full.n_active / full.store_tokens
        assert quick.explanation == full.explanation
        assert [e.id for e in quick.top_logits] == [e.id for e in full.top_logits]
        assert any("being built" in n for n in quick.notes)

        seen: list[tuple[float | None, str]] = []
        answers: list = []
        waiter = threading.Thread(target=lambda: answers.append(backend.feature(
            FeatureRequest(feature=ref, n_examples=3), progress=lambda f, m: seen.append((f, m)))))
        waiter.start()
        waiter.join(timeout=2.0)
        assert waiter.is_alive(), "a request that waits must wait for the build"
    finally:
        reg.done_building(path)
        lock.release()
    waiter.join(timeout=120)
    assert (0.25, "Building the demo corpus store: 25%") in seen
    assert answers and answers[0].store_status == "ready"
    assert [e.max_activation for e in answers[0].examples] == [e.max_activation for e in full.examples]
