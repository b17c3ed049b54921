"""Every page under Streamlit's AppTest, asserting on what it shows."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from backend.schemas import AnalyzeRequest, LayerFeature
from tests.conftest import REPO

XSS = "Hi <script>alert(1)</script> and <img src=x onerror=alert(1)> end"


def app(**query: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    for k, v in query.items():
        at.query_params[k] = v
    return at


def token_view(at: AppTest) -> dict:
    (el,) = [e for e in at.get("bidi_component") if e.proto.component_name == "featurescope.token_view"]
    return json.loads(el.proto.json)


def all_markup(at: AppTest) -> str:
    """Every string Streamlit would render as markdown or HTML on the page."""
    parts = [e.proto.body for e in at.get("markdown")] + [e.proto.body for e in at.get("caption")]
    parts += [e.proto.body for kind in ("alert", "info", "warning", "error") for e in at.get(kind)]
    parts += [e.proto.body for e in at.get("html")]
    return "\n".join(parts)


@pytest.fixture(scope="module")
def analysed(hf_cache):
    """The highlighter after analysing the XSS text with the demo model at layer 1."""
    at = app().run()
    assert not at.exception
    at.text_area(key="hl.text").input(XSS)
    at.selectbox(key="hl.layer").select(1)
    at.number_input(key="hl.k").set_value(4)
    at.button[0].click().run()
    assert not at.exception, at.exception
    at.toggle(key="hl_dense_on").set_value(False).run()  # every feature, dense ones too
    assert not at.exception, at.exception
    return at


def test_highlighter_shows_tokens_as_text_never_markup(analysed, backend):
    data = token_view(analysed)
    want = backend.analyze(AnalyzeRequest(model="demo", sae_set="res", text=XSS, layers=[1], k=4))
    assert [t["t"] for t in data["tokens"]] == [t.text for t in want.tokens]
    joined = "".join(t["t"] for t in data["tokens"] if not t["s"])
    assert joined == XSS, "the strip receives the exact text, to be written with textContent"
    markup = all_markup(analysed)
    assert "<script" not in markup and "<img" not in markup
    # The per-token table holds the same features as the backend, token by token (BOS left out).
    frame = analysed.dataframe[0].value
    assert isinstance(frame, pd.DataFrame)
    lt = want.layers[0]
    assert want.tokens[0].special and lt.indices[0], "features fire on BOS: the table must leave it out"
    expected_rows = [(pos, i, v) for pos, (idx, vals) in enumerate(zip(lt.indices, lt.values))
                     if not want.tokens[pos].special for i, v in zip(idx, vals)]
    got_rows = list(zip(frame["pos"], frame["feature"], frame["activation"]))
    assert [(p, i) for p, i, _ in got_rows] == [(p, i) for p, i, _ in expected_rows]
    assert [a for _, _, a in got_rows] == pytest.approx([round(a, 4) for _, _, a in expected_rows], abs=1e-4)
    assert any("<" in tok for tok in frame["token"]), "tables show tokens as plain text"


def test_special_tokens_join_the_table_and_heatmap_when_asked(hf_cache, backend):
    text = "Special tokens on request."
    at = app(model="demo", sae_set="res", text=text, layer="1", k="3").run()
    assert not at.exception, at.exception
    want = backend.analyze(AnalyzeRequest(model="demo", sae_set="res", text=text, layers=[1], k=3))
    at.toggle(key="hl_dense_on").set_value(False).run()  # the rows of every feature, dense ones too
    assert 0 not in set(at.dataframe[0].value["pos"])
    (chart,) = at.get("plotly_chart")
    assert len(json.loads(chart.proto.spec)["data"][0]["x"]) == len(want.tokens) - 1
    at.checkbox(key="hl_special").check().run()
    assert not at.exception, at.exception
    frame = at.dataframe[0].value
    assert list(frame[frame["pos"] == 0]["feature"]) == want.layers[0].indices[0]
    (chart,) = at.get("plotly_chart")
    assert len(json.loads(chart.proto.spec)["data"][0]["x"]) == len(want.tokens)


def test_highlighter_heatmap_escapes_token_labels(analysed):
    (chart,) = analysed.get("plotly_chart")
    spec = json.loads(chart.proto.spec)
    labels = spec["data"][0]["x"]
    assert not any("<" in label for label in labels), "plotly interprets tags: labels must be escaped"
    assert any("&lt;" in label for label in labels)


def test_shared_url_restores_text_and_selected_feature(hf_cache, backend):
    text = "Pick the layer one feature seven."
    at = app(model="demo", sae_set="res", text=text, feature="1:7", layer="1", k="3").run()
    assert not at.exception, at.exception
    assert at.text_area(key="hl.text").value == text
    data = token_view(at)
    assert data["selected"] == "1:7"
    want = backend.analyze(AnalyzeRequest(model="demo", sae_set="res", text=text, layers=[1], k=3,
                                          track=[LayerFeature(layer=1, index=7)]))
    assert [[f[1] for f in feats] for feats in data["features"]] == \
        want.layers[0].indices
    assert data["values"] == pytest.approx(want.tracked[0].values, abs=1e-6)
    assert "Selected feature `1:7`" in all_markup(at)
    assert at.query_params["feature"] == "1:7" and at.query_params["k"] == "3"


def test_tracked_features_are_plotted(hf_cache):
    at = app().run()
    at.text_area(key="hl.text").input("Track these tokens please")
    at.radio(key="hl.all_layers").set_value(True)
    at.text_input(key="hl.track").input("0:3, 1:5")
    at.button[0].click().run()
    assert not at.exception, at.exception
    charts = at.get("plotly_chart")
    traces = [t["name"] for c in charts for t in json.loads(c.proto.spec)["data"] if t.get("type") == "scatter"]
    assert any(name.startswith("0:3") for name in traces) and any(name.startswith("1:5") for name in traces)


def test_bad_track_syntax_says_what_to_type(hf_cache):
    at = app().run()
    at.text_input(key="hl.track").input("three")
    at.button[0].click().run()
    assert any("layer:index" in w.proto.body.replace("\\", "") for w in at.warning)


def test_over_limit_text_is_refused_politely(hf_cache):
    at = app().run()
    at.text_area(key="hl.text").input("token " * 1500)
    at.button[0].click().run()
    assert not at.exception
    assert any("the limit is" in e.proto.body for e in at.error), "an error, shown as one"


def test_system_page_reports_device_estimates_and_unloads(hf_cache):
    at = app().run()
    at.button[0].click().run()  # analyse the default text: loads the demo model
    at.switch_page("pages/system.py").run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Device"] == "CPU"
    assert metrics["Environment"]
    loaded = at.dataframe[0].value
    assert "demo" in list(loaded["id"])
    estimates = at.dataframe[1].value
    assert {"GPT-2 small", "Gemma-2-2B", "Gemma-2-2B-IT", "Llama-3.1-8B"} <= set(estimates["model"])
    llama = estimates[estimates["model"] == "Llama-3.1-8B"].iloc[0]
    assert llama["GPU needed"]
    (code,) = at.code
    assert "Featurescope diagnostics" in code.value and "torch:" in code.value
    at.selectbox(key="sys_unload_model").select("demo")
    at.button(key="sys_unload").click().run()
    assert not at.exception
    assert "No model is loaded yet" in all_markup(at)
