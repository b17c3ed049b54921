"""The interaction layer under AppTest: one error path (errors are errors, never a "done" over
nothing), one typed state per page (kept across reruns, pages and the URL), widgets keyed by what
they edit, links that carry their context."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from backend.errors import LimitExceeded, NotFound
from components.state import markdown_text
from tests.test_app_pages import app


def status_labels(at: AppTest) -> list[tuple[str, str]]:
    """(label, state) of every status box on the page."""
    return [(s.label, s.state) for s in at.status]


def visible_errors(at: AppTest) -> list[str]:
    return [e.proto.body for e in at.error]


# ----- the one error helper ------------------------------------------------------------------


def _helper_app() -> None:
    import streamlit as st

    from backend.errors import BackendError
    from components import state

    def failing(req, progress):
        progress(0.5, "half way")
        raise st.session_state["raise"]

    def working(req, progress):
        progress(1.0, "all of it")
        return {"answer": req}

    if st.session_state.get("raise") is not None:
        assert isinstance(st.session_state["raise"], BaseException)
        st.session_state["got"] = state.run("Doing it…", failing, "x")
    else:
        st.session_state["got"] = state.run("Doing it…", working, "x")
    st.session_state["ok"] = isinstance(BackendError, type)


@pytest.mark.parametrize("exc", [NotFound("Unknown model 'nope'. Pick one of demo, gpt2-small."),
                                 LimitExceeded("Text length (characters)", 100_000, 20_000, "Shorten it."),
                                 RuntimeError("boom at line 3"), ValueError("x" * 500)])
def test_a_failed_call_ends_the_box_in_error_and_shows_the_error_outside_it(exc):
    at = AppTest.from_function(_helper_app)
    at.session_state["raise"] = exc
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["got"] is None
    ((label, icon),) = status_labels(at)
    assert label == "Doing it — failed" and icon == "error", (label, icon)
    # Shown outside the box (visible without opening it), not inside the status.
    assert not at.status[0].get("error") and not at.status[0].get("warning")
    (shown,) = [e.proto.body for e in at.main.get("error") + at.main.get("warning") + at.main.get("info")]
    if isinstance(exc, (NotFound, LimitExceeded)):  # the backend's message, escaped for markdown
        assert shown == markdown_text(exc.message) and shown.replace("\\", "") == exc.message
    else:  # anything unexpected: no traceback, no dump of the input, a pointer to the log
        assert "Traceback" not in shown and "x" * 81 not in shown and "server log" in shown


def test_a_working_call_ends_done_and_returns_its_answer():
    at = AppTest.from_function(_helper_app).run()
    assert not at.exception, at.exception
    assert at.session_state["got"] == {"answer": "x"}
    assert status_labels(at)[0][0] == "Doing it — done"
    assert not at.error


def test_messages_never_echo_more_than_80_characters_of_input():
    from components.state import clip_message

    long = "a" * 100_000
    for message in (f"Unknown model '{long}'. Pick one of demo.", f'Feature "{long}" is not layer:index.',
                    f"Could not read {long} at all"):
        shown = clip_message(message)
        assert "a" * 81 not in shown and "100,000 characters" in shown
        assert len(shown) < 300
    assert clip_message("Unknown model 'short'. Pick one.") == "Unknown model 'short'. Pick one."


# ----- errors on the real pages ----------------------------------------------------------------


def test_a_link_to_a_feature_that_does_not_exist_is_an_error_not_a_done(hf_cache):
    at = app(model="demo", sae_set="res", feature="1:99999").run()
    at.switch_page("pages/features.py").run()
    assert not at.exception, at.exception
    (shown,) = visible_errors(at)
    assert "1:99999 does not exist" in shown and "2,048" in shown
    assert not any(label.endswith("done") for label, _ in status_labels(at))


def test_compare_with_an_unavailable_model_shows_an_error(hf_cache, backend):
    gone = next(m.id for m in backend.catalog().models if not m.available and m.sae_sets)
    at = app(model="demo", sae_set="res").run()
    at.switch_page("pages/compare.py").run()
    at.multiselect(key="cmp_models").set_value(["demo", gone])
    at.button(key="cmp_run").click().run()
    assert not at.exception, at.exception
    assert visible_errors(at), "the refusal is an error"
    assert any(label.endswith("failed") for label, _ in status_labels(at))


# ----- the state model -------------------------------------------------------------------------


def test_highlighter_text_and_settings_survive_another_page(hf_cache):
    at = app(model="demo", sae_set="res").run()
    at.text_area(key="hl.text").input("A text of my own, typed here.")
    at.radio(key="hl.all_layers").set_value(True)
    at.number_input(key="hl.k").set_value(7)
    at.text_input(key="hl.track").input("1:5")
    at.button[0].click().run()
    assert not at.exception, at.exception
    at.switch_page("pages/steer.py").run()
    assert not at.exception, at.exception
    at.switch_page("pages/highlighter.py").run()
    assert not at.exception, at.exception
    assert at.text_area(key="hl.text").value == "A text of my own, typed here."
    assert at.radio(key="hl.all_layers").value is True
    assert at.number_input(key="hl.k").value == 7
    assert at.text_input(key="hl.track").value == "1:5"
    assert at.query_params["text"] == ["A text of my own, typed here."] or \
        at.query_params["text"] == "A text of my own, typed here."


def test_the_url_wins_when_it_changes_as_back_and_forward_do(hf_cache):
    at = app(model="demo", sae_set="res", text="First text.", layer="1", k="3").run()
    assert not at.exception, at.exception
    assert at.text_area(key="hl.text").value == "First text."
    # Browser Back/Forward rerun the page with the URL of that view: the state follows it.
    at.query_params["text"] = "Second text."
    at.query_params["layer"] = "all"
    at.query_params["k"] = "5"
    at.run()
    assert not at.exception, at.exception
    assert at.text_area(key="hl.text").value == "Second text."
    assert at.radio(key="hl.all_layers").value is True and at.number_input(key="hl.k").value == 5
    # A rerun that finds the URL as the page wrote it keeps what the user typed.
    at.text_area(key="hl.text").input("Typed after.")
    at.button[0].click().run()
    assert at.text_area(key="hl.text").value == "Typed after."


def test_the_layer_picker_follows_the_mode_without_analysing(hf_cache):
    at = app(model="demo", sae_set="res").run()
    at.radio(key="hl.all_layers").set_value(True).run()
    assert at.selectbox(key="hl.layer").disabled
    at.radio(key="hl.all_layers").set_value(False).run()
    assert not at.selectbox(key="hl.layer").disabled, "enabled at once, not after Analyse"


def test_a_new_analysis_starts_with_no_table_row_ticked(hf_cache):
    at = app(model="demo", sae_set="res", text="One text here.", layer="1").run()
    first = [d.key for d in at.dataframe]
    at.text_area(key="hl.text").input("Another text entirely.")
    at.button[0].click().run()
    assert not at.exception, at.exception
    second = [d.key for d in at.dataframe]
    assert first and second and first[0] != second[0], "the table's selection belongs to one analysis"


def test_the_explanation_editor_belongs_to_its_feature(hf_cache, backend):
    at = app(model="demo", sae_set="res", feature="1:1636").run()
    at.switch_page("pages/features.py").run()
    (editor,) = [t for t in at.text_area if "expl_text" in t.key]
    editor.input("typed for 1:1636 only")
    at.button(key="fb_next").click().run()
    assert not at.exception, at.exception
    (editor,) = [t for t in at.text_area if "expl_text" in t.key]
    assert editor.value != "typed for 1:1636 only"
    before = backend.explanations.get("demo", "res", 1, 1637)
    assert editor.value == (before[0] if before else "")


def test_links_carry_their_context(hf_cache):
    at = app(model="demo", sae_set="res", text="Steer from this text.", layer="1", feature="1:5").run()
    assert not at.exception, at.exception
    links = {el.proto.label: el.proto for el in at.get("page_link")}
    steer = links["Steer it"]
    assert "prompt=Steer" in steer.query_string or "prompt" in steer.query_string, steer
    at.switch_page("pages/features.py").run()
    links = {el.proto.label: el.proto for el in at.get("page_link")}
    assert "feature=1%3A5" in links["Steer it"].query_string or "feature=1:5" in links["Steer it"].query_string


def test_heatmap_labels_are_escaped_once(hf_cache):
    at = app(model="demo", sae_set="res", text='She said "hi" & <left>.', layer="1").run()
    heat = next(json.loads(c.proto.spec) for c in at.get("plotly_chart"))
    labels = heat["data"][0]["x"] + heat["data"][0]["y"]
    assert not any("&quot;" in label or "&#x27;" in label or "&amp;amp;" in label for label in labels)
    assert any("&lt;" in label for label in labels), "markup is still escaped for plotly"


def test_dense_features_are_hidden_by_default_and_counted(hf_cache, backend):
    import re

    from backend.schemas import AnalyzeRequest

    text = "The value of the result is returned to the caller in the end."
    at = app(model="demo", sae_set="res", text=text, layer="1", k="10").run()
    assert not at.exception, at.exception
    want = backend.analyze(AnalyzeRequest(model="demo", sae_set="res", text=text, layers=[1], k=10))
    lt = want.layers[0]

    # A feature's density is the backend's field (the corpus store's count / tokens once an earlier
    # test has built the store, else the pack's statistics); only where it is None does the demo
    # explanation's note "(dense: fires on 20% of tokens)" stand in.
    def density(pos: int, j: int, index: int) -> float | None:
        if lt.densities is not None and lt.densities[pos][j] is not None:
            return lt.densities[pos][j]
        m = re.search(r"dense: fires on (\d+)% of tokens", lt.explanations.get(index, ""))
        return int(m.group(1)) / 100 if m else None

    rows = [(pos, i) for pos, idx in enumerate(lt.indices) if not want.tokens[pos].special for i in idx]
    hidden = {i for pos, idx in enumerate(lt.indices) if not want.tokens[pos].special
              for j, i in enumerate(idx) if (density(pos, j, i) or 0.0) >= 0.10}
    assert hidden, "this text meets dense features of the demo pack"
    frame = at.dataframe[0].value
    assert sorted(zip(frame["pos"], frame["feature"])) == sorted((p, i) for p, i in rows if i not in hidden)
    assert any(f"{len(hidden)} dense feature(s) hidden" in c.proto.body for c in at.caption)
    at.toggle(key="hl_dense_on").set_value(False).run()
    frame = at.dataframe[0].value
    assert sorted(zip(frame["pos"], frame["feature"])) == sorted(rows)


def test_markdown_text_keeps_bare_urls_and_addresses_from_becoming_links():
    """GFM turns a bare URL, `www.` name or e-mail address in text into a link after parsing, escapes
    or not (seen in Chromium on a graph slug): an invisible word joiner keeps it text, reading the same."""
    import re

    from components.state import markdown_text

    for raw in ("see https://evil.example/x now", "HTTP://A.B", "www.example.org", "me@host.example.com"):
        shown = markdown_text(raw)
        plain = shown.replace("\\", "").replace("\u2060", "")
        assert plain == raw
        assert not re.search(r"(?i)https?:/|www\.|@\w", shown.replace("\\", "")), shown
    assert markdown_text("plain words, 3:51") == "plain words, 3\\:51"
