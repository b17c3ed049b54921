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
