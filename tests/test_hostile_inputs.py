"""Hostile strings into every text input of every page (the graph page has its own test): no
exception, no traceback or validation dump, no markup, no long echo, and a visible answer (a
message saying what to do, or the result)."""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from components.steer_form import features_from_rows, initial_rows
from tests.test_app_pages import app

HOSTILE = {
    "empty": "",
    "whitespace": "  \n\t \u00a0 ",
    "100k": "x" * 100_000,
    "control": "a\x00b\x01c\x07d\x1b[31m red \x7f",
    "rtl": "abc \u202eevil.exe\u202c def",
    "emoji": "🙂🧪 emoji 👩‍🔬 text",
    "injection": "<script>alert(1)</script> **bold** [x](https://evil.example) <img src=x onerror=alert(1)>",
}
MUST_REFUSE = {"empty", "whitespace", "100k"}


def everything_shown(at: AppTest) -> list[str]:
    parts = [e.proto.body for kind in ("markdown", "caption", "warning", "error", "info", "text")
             for e in at.get(kind)]
    parts += [e.proto.body for e in at.get("html")]
    parts += [s.label for s in at.status]
    return parts


def messages(at: AppTest) -> list[str]:
    return [e.proto.body for kind in ("warning", "error", "info") for e in at.get(kind)]


def check(at: AppTest, name: str, answered: bool) -> None:
    """No exception; nothing echoes the input at length or shows a traceback; a visible answer."""
    assert not at.exception, (name, at.exception)
    shown = "\n".join(everything_shown(at))
    assert "Traceback" not in shown and "validation error" not in shown.lower(), (name, shown[:500])
    assert "x" * 81 not in shown, f"{name}: the input is echoed at length"
    for body in messages(at):  # markdown: whatever came from the input is escaped, so stays text
        assert not re.search(r"(?<!\\)[<\[*]", body), (name, body)
        assert not re.search(r"(?<!\\)\]\(", body), (name, body)
    assert "onerror=" not in "".join(e.proto.body for e in at.get("html")), name
    if name in MUST_REFUSE:
        assert messages(at), f"{name}: a message says what to do"
    else:
        assert answered or messages(at), f"{name}: neither a result nor a message"


@pytest.fixture(scope="module")
def pages(hf_cache):
    """One app per page, opened once (each input is typed in turn)."""
    out = {}
    for page in ("highlighter", "features", "steer", "compare"):
        at = app(model="demo", sae_set="res", **({"feature": "1:5"} if page == "features" else {})).run()
        if page != "highlighter":
            at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, at.exception
        out[page] = at
    return out


@pytest.mark.parametrize("name", list(HOSTILE))
def test_highlighter_text_and_track(pages, name):
    at = pages["highlighter"]
    at.text_input(key="hl.track").input("")
    at.text_area(key="hl.text").input(HOSTILE[name])
    at.button[0].click().run()
    check(at, name, answered=bool(at.get("bidi_component")))
    at.text_area(key="hl.text").input("Plain words.")
    at.text_input(key="hl.track").input(HOSTILE[name])
    at.button[0].click().run()
    check(at, name if name not in ("empty", "whitespace") else "ok-empty-track", answered=True)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_feature_browser_searches(pages, name):
    at = pages["features"]
    at.text_area(key="fb.search_text").input(HOSTILE[name])
    next(b for b in at.button if b.label == "Search").click().run()
    check(at, name, answered=bool(at.dataframe))
    at.text_input(key="fb.search_words").input(HOSTILE[name])
    [b for b in at.button if b.label == "Search"][1].click().run()
    check(at, name, answered=True)


@pytest.mark.parametrize("name", ["100k", "control", "injection"])
def test_feature_browser_explanation_editor(pages, backend, name):
    at = pages["features"]
    (editor,) = [t for t in at.text_area if "expl_text" in t.key]
    editor.input(HOSTILE[name])
    next(b for b in at.button if b.label == "Save explanation").click().run()
    try:
        check(at, name, answered=True)
        if name == "100k":
            assert any("the limit is" in m for m in messages(at))
    finally:
        backend.explanations.save("demo", "res", 1, 5, "")


@pytest.mark.parametrize("name", list(HOSTILE))
def test_steering_prompt_sweep_and_passages(pages, name):
    at = pages["steer"]
    at.text_area(key="st.prompt").input(HOSTILE[name])
    at.button(key="st_run").click().run()
    check(at, name, answered=True)
    at.text_input(key="st_sweep_feature").input(HOSTILE[name])
    at.button(key="st_sweep_run").click().run()
    check(at, "whitespace" if name == "empty" else name, answered=False)
    at.text_area(key="st.prompt").input("The weather today is")
    at.text_input(key="st.sweep_alphas").input(HOSTILE[name])
    at.text_input(key="st_sweep_feature").input("1:5")
    at.button(key="st_sweep_run").click().run()
    check(at, "whitespace" if name == "empty" else name, answered=False)
    at.text_input(key="st.sweep_alphas").input("0, 1")
    at.radio(key="st_exp_corpus").set_value("my passages")
    at.text_area(key="st.passages").input(HOSTILE[name])
    next(b for b in at.button if b.label == "Run experiment").click().run()
    check(at, name, answered=bool(at.dataframe))


@pytest.mark.parametrize("name", list(HOSTILE))
def test_steering_grid_cells(name):
    rows = initial_rows("1:5", None)
    rows.loc[0, "amount"] = HOSTILE[name]
    with pytest.raises(ValueError) as err:
        features_from_rows(rows, "res")
    assert "Row 1" in str(err.value)
    rows = initial_rows("1:5", None)
    rows.loc[0, "feature"] = HOSTILE[name]
    if name in ("empty", "whitespace"):
        with pytest.raises(ValueError, match="Row 1 has no feature"):
            features_from_rows(rows, "res")
    else:
        with pytest.raises(ValueError, match="not layer:index"):
            features_from_rows(rows, "res")


def test_steering_grid_reads_a_feature_typed_as_an_amount_as_an_error():
    rows = initial_rows("3:51", None)
    rows.loc[0, "amount"] = "3:51"
    with pytest.raises(ValueError, match="not a number"):
        features_from_rows(rows, "res")


@pytest.mark.parametrize("name", list(HOSTILE))
def test_compare_sentences_and_terms(pages, name):
    at = pages["compare"]
    at.multiselect(key="cmp_models").set_value(["demo"])
    at.text_area(key="cmp.terms").input("cat")
    at.text_area(key="cmp.sentences").input(HOSTILE[name])
    at.button(key="cmp_run").click().run()
    check(at, name, answered=bool(at.dataframe))
    at.text_area(key="cmp.sentences").input("The cat sat.")
    at.text_area(key="cmp.terms").input(HOSTILE[name])
    at.button(key="cmp_run").click().run()
    check(at, name if name not in ("empty", "whitespace") else "ok", answered=True)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_feature_browser_try_your_own_text(pages, name):
    at = pages["features"]
    at.text_area(key="fb.try_text").input(HOSTILE[name])
    next(b for b in at.button if b.label == "Show activations").click().run()
    check(at, name, answered=any("fs-try" in h.proto.body or "Fires on" in h.proto.body
                                 for h in [*at.get("html"), *at.caption]))


@pytest.mark.parametrize("name", list(HOSTILE))
def test_experiment_alphas(pages, name):
    at = pages["steer"]
    at.text_area(key="st.prompt").input("The weather today is")
    at.radio(key="st_exp_corpus").set_value("my passages")
    at.text_area(key="st.passages").input("The cat sat on the mat.\nThe dog ran in the park.")
    at.text_input(key="st_exp_alphas").input(HOSTILE[name])
    next(b for b in at.button if b.label == "Run experiment").click().run()
    check(at, name, answered=bool(at.dataframe))
    at.text_input(key="st_exp_alphas").input("0, 1")


TINY_GRAPH = {
    "metadata": {"slug": "tiny", "scan": "x", "prompt_tokens": ["<bos>", " a", " b"], "prompt": "<bos> a b"},
    "nodes": [{"node_id": "E_1_1", "layer": "E", "ctx_idx": 1, "feature_type": "embedding"},
              {"node_id": "0_5_2", "layer": "0", "ctx_idx": 2, "feature_type": "cross layer transcoder",
               "influence": 0.1, "activation": 1.0, "clerp": "one"},
              {"node_id": "1_7_2", "layer": "1", "ctx_idx": 2, "feature_type": "cross layer transcoder",
               "influence": 0.2, "activation": 2.0, "clerp": "two"},
              {"node_id": "3_9_2", "layer": "3", "ctx_idx": 2, "feature_type": "logit",
               "token_prob": 0.5, "clerp": 'Output "x" (p=0.500)'}],
    "links": [{"source": "E_1_1", "target": "0_5_2", "weight": 1.0},
              {"source": "0_5_2", "target": "1_7_2", "weight": 1.0},
              {"source": "1_7_2", "target": "3_9_2", "weight": 1.0}],
}


@pytest.fixture(scope="module")
def graph_page(hf_cache, tmp_path_factory):
    """The graph page with a tiny graph file open and two feature nodes pinned."""
    import json

    path = tmp_path_factory.mktemp("graphs") / "tiny.json"
    path.write_text(json.dumps(TINY_GRAPH))
    at = app(model="demo", sae_set="res").run()
    at.switch_page("pages/graph.py").run()
    at.text_input(key="graph_path").input(str(path)).run()
    at.button(key="graph_open_path").click().run()
    assert not at.exception, at.exception
    for node in ("0_5_2", "1_7_2"):
        at.selectbox(key="graph_node_pick").select(node).run()
        at.button(key=f"graph_pin_{node}").click().run()
    assert at.session_state["graph_pinned"] == ["0_5_2", "1_7_2"]
    return at, path


@pytest.mark.parametrize("name", list(HOSTILE))
def test_graph_prompt_slug_path_and_supernode_label(graph_page, name):
    at, path = graph_page
    at.text_area(key="graph_prompt").input(HOSTILE[name])
    at.button(key="FormSubmitter:graph_form-Estimate").click().run()
    check(at, name, answered=bool(at.metric))
    at.text_area(key="graph_prompt").input("A short prompt")
    at.text_input(key="graph_slug").input(HOSTILE[name])
    at.button(key="FormSubmitter:graph_form-Estimate").click().run()
    check(at, "ok" if name in ("empty", "whitespace") else name, answered=True)
    at.text_input(key="graph_slug").input("")
    at.text_input(key="graph_path").input(HOSTILE[name]).run()
    if not at.button(key="graph_open_path").disabled:
        at.button(key="graph_open_path").click().run()
        check(at, name, answered=False)  # no such file: an error naming what to do
        assert at.session_state["graph_doc"]["metadata"]["slug"] == "tiny", "the open graph stays"
    else:
        assert name in ("empty", "whitespace")
    before = [list(sn) for sn in at.session_state["graph_supernodes"]]
    at.multiselect(key="graph_group_members").set_value(["0_5_2", "1_7_2"]).run()
    at.text_input(key="graph_group_label").input(HOSTILE[name]).run()
    at.button(key="graph_group").click().run()
    check(at, name, answered=True)
    after = at.session_state["graph_supernodes"]
    if name in MUST_REFUSE or len(HOSTILE[name]) > 80:  # a label is a short name (80 characters)
        assert after == before, "a refused label groups nothing"
        assert any("label" in m.lower() for m in messages(at))
    else:
        assert len(after) == len(before) + 1 and after[-1][0] == " ".join(HOSTILE[name].split())
        at.button(key=f"graph_ungroup_{len(after) - 1}").click().run()
    assert not at.exception, at.exception
