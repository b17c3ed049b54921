"""Model compare: how several models read the same domain text."""

from __future__ import annotations

import streamlit as st

from backend.schemas import CompareRequest, CompareResult, ModelInfo
from components import dense, state
from components.compare_views import (
    DEFAULT_SENTENCES,
    DEFAULT_TERMS,
    fragmentation_figure,
    guesses_frame,
    render_exports,
    render_features,
    render_glance,
    summary_frame,
    term_surprisal_figure,
    terms_frame,
    terms_side_by_side,
)
from components.page_state import CompareState
from components.surprisal_view import render_surprisal_view, surprisal_view_data

URL_TEXT_LIMIT = 1500


def split_terms(text: str) -> list[str]:
    return [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in text.splitlines() if s.strip()]


def default_models(models: list[ModelInfo], current: str | None) -> list[str]:
    """The sidebar's model, and the first other available model with SAEs."""
    usable = [m.id for m in models if m.available]
    first = current if current in usable else (usable[0] if usable else None)
    other = next((m.id for m in models if m.available and m.sae_sets and m.id != first), None)
    return [m for m in (first, other) if m]


def restore_from_url(models: list[ModelInfo], current: str | None) -> None:
    """First run of the session: the URL's view, else the seed's example."""
    ids = {m.id for m in models}
    url_models = [m for m in (state.query_param("models") or "").split(",") if m in ids]
    st.session_state["cmp_models"] = url_models or default_models(models, current)
    url_sentences = state.query_param("sentences")
    cs = CompareState.load()
    cs.sentences = url_sentences or "\n".join(DEFAULT_SENTENCES)
    cs.terms = state.query_param("terms") or ", ".join(DEFAULT_TERMS)
    for field in ("sentences", "terms"):
        st.session_state.pop(cs.key(field), None)
    depth = state.query_param("depth", "0.5")
    try:
        st.session_state["cmp_depth"] = min(max(float(depth), 0.0), 1.0)
    except ValueError:
        st.session_state["cmp_depth"] = 0.5


def run_compare(req: CompareRequest) -> CompareResult | None:
    return state.session_cached("cmp", "compare", req, "Comparing models…", size=8)

def keep(*keys: str) -> None:
    """Keep these widgets' values when the user visits another page (Streamlit forgets the values of
    widgets a run does not draw; a value the script set itself is kept)."""
    for key in keys:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def check_input(models: list[str], sentences: list[str], terms: list[str], text: str, lim) -> str | None:
    """What to fix before comparing, or None."""
    if not models:
        return "Choose at least one model."
    if not sentences:
        return "Type at least one sentence (one per line)."
    if len(models) > lim.max_compare_models:
        return f"{len(models)} models; the limit is {lim.max_compare_models}. Remove some."
    if len(sentences) > lim.max_compare_sentences:
        return f"{len(sentences)} sentences; the limit is {lim.max_compare_sentences}. Remove some."
    if len(terms) > lim.max_compare_terms:
        return f"{len(terms)} domain terms; the limit is {lim.max_compare_terms}. Remove some."
    long_term = next((t for t in terms if len(t) > lim.max_compare_term_chars), None)
    if long_term is not None:
        return state.clip_message(f"The term '{long_term}' is {len(long_term):,} characters; the limit is "
                                  f"{lim.max_compare_term_chars}. Shorten it.")
    return state.too_long("The sentences", text, lim.max_text_chars)


def layer_choices(models: list[ModelInfo], chosen: list[str]) -> dict[str, int]:
    """Per-model SAE layer pickers (only when the user asks to choose layers)."""
    out: dict[str, int] = {}
    by_id = {m.id: m for m in models}
    cols = st.columns(max(len(chosen), 1))
    for col, mid in zip(cols, chosen):
        m = by_id[mid]
        if not m.sae_sets or not m.sae_sets[0].layers:
            col.caption(f"{m.display_name}: no SAE set")
            continue
        layers = m.sae_sets[0].layers
        out[mid] = col.selectbox(f"{m.display_name} layer", layers, index=len(layers) // 2,
                                 key=f"cmp_layer::{mid}")
    return out


def main() -> None:
    st.title("Model compare")
    st.caption("How several models read the same domain text: how they split the terms, how surprised they "
               "are by them, what they expected instead, and which SAE features fire on them.")
    cat = state.catalog()
    if cat is None:
        return
    selection = state.selection()
    current = selection.model.id if selection is not None else cat.default_model
    if "cmp_models" not in st.session_state:
        restore_from_url(cat.models, current)
    names = {m.id: m.display_name + ("" if m.available else " (unavailable)") for m in cat.models}

    lim = state.limits()
    cs = CompareState.load()
    keep("cmp_models", "cmp_layer_mode", "cmp_depth", "cmp_k", "cmp_guesses", "cmp_rate", "cmp_case")
    chosen = st.multiselect("Models", list(names), key="cmp_models", format_func=names.get,
                            max_selections=lim.max_compare_models,
                            help="Read one after another: models that do not fit in memory together are "
                                 f"unloaded and loaded in turn (at most {lim.max_compare_models}).")
    c1, c2 = st.columns([3, 2])
    sentences_text = cs.take("sentences", c1.text_area(
        f"Sentences (one per line, at most {lim.max_compare_sentences})", key=cs.bind("sentences"), height=140))
    terms_text = cs.take("terms", c2.text_area(
        f"Domain terms (comma-separated, at most {lim.max_compare_terms})", key=cs.bind("terms"), height=68,
        help="Found as whole words, ignoring case; add plural forms as terms of their own."))
    with c2.expander("Options"):
        mode = st.radio("SAE layer", ["Same relative depth", "Choose per model"], key="cmp_layer_mode",
                        horizontal=True)
        depth = st.slider("Relative depth", 0.0, 1.0, step=0.05, key="cmp_depth",
                          disabled=mode != "Same relative depth",
                          help="0 = embeddings, 1 = after the last layer; each model reads its SAE layer "
                               "closest to this depth.")
        k = st.number_input("Top features per model", 1, lim.max_k, min(10, lim.max_k), key="cmp_k")
        guesses = st.number_input("Guesses where a term starts", 1, lim.max_k, min(5, lim.max_k),
                                  key="cmp_guesses")  # the backend refuses more than max_k
        rate = st.slider("Specific: fires on at most this share of other tokens", 0.0, 0.5, 0.05, step=0.01,
                         key="cmp_rate")
        match_case = st.checkbox("Match case", key="cmp_case")
    sae_layers = layer_choices(cat.models, chosen) if mode == "Choose per model" else {}
    run = st.button("Compare", type="primary", key="cmp_run", disabled=not chosen)
    if run:
        st.session_state["cmp_active"] = True
    if not st.session_state.get("cmp_active") and state.query_param("terms") is None:
        st.caption("Press **Compare** to read the sentences with every chosen model.")
        return
    sentences, terms = split_sentences(sentences_text), split_terms(terms_text)
    if problem := check_input(chosen, sentences, terms, sentences_text, lim):
        state.warn(problem)
        return
    req = state.build(CompareRequest, models=chosen, sentences=sentences, domain_terms=terms,
                      relative_depth=float(depth), sae_layers=sae_layers, k=int(k), top_guesses=int(guesses),
                      specific_max_other_rate=float(rate), match_case=bool(match_case))
    if req is None:
        return
    result = run_compare(req)
    if result is None:
        return
    joined = "\n".join(sentences)
    state.set_query_params(models=",".join(chosen), terms=", ".join(terms),
                           sentences=joined if len(joined) <= URL_TEXT_LIMIT else None,
                           depth=f"{depth:g}" if not sae_layers else None)
    render_result(result)


def render_result(result: CompareResult) -> None:
    labels = sorted({m.label for m in result.models if m.label})
    for label in labels:
        st.info(f"Results from a {label}.", icon=":material/science:")
    render_glance(result)

    st.subheader("Sentences by surprisal")
    render_surprisal_view(surprisal_view_data(result), key="cmp_view")

    if result.domain_terms:
        c1, c2 = st.columns(2)
        with c1:
            st.markdown("**Surprisal per term**")
            st.caption("Bits to read the whole term after the text before it (mean over its occurrences); "
                       "comparable across tokenizers.")
            st.plotly_chart(term_surprisal_figure(result), key="cmp_term_bits", width="stretch")
        with c2:
            st.markdown("**Fragmentation**")
            st.caption("Tokens each term is split into, as read mid-sentence; the legend gives tokens "
                       "per word.")
            st.plotly_chart(fragmentation_figure(result), key="cmp_fragmentation", width="stretch")
    st.subheader("Summary")
    st.dataframe(summary_frame(result), hide_index=True, width="stretch", key="cmp_summary")

    tab_terms, tab_guess, tab_feat = st.tabs(["Tokenization of the terms", "Guesses where terms start",
                                              "Features on the terms"])
    with tab_terms:
        if not result.domain_terms:
            st.caption("No domain terms were given.")
        else:
            st.dataframe(terms_side_by_side(result), hide_index=True, width="stretch", key="cmp_terms_side")
            with st.expander("Per model, in detail"):
                st.dataframe(terms_frame(result), hide_index=True, width="stretch", key="cmp_terms_table")
            st.caption("Pieces are the term as read mid-sentence (after a space; · marks a space). Bits are "
                       "for the whole term, its leading space included, so they compare across tokenizers.")
    with tab_guess:
        frame = guesses_frame(result)
        if frame.empty:
            st.caption("No domain term occurs in the sentences.")
        else:
            st.dataframe(frame, hide_index=True, width="stretch", key="cmp_guesses_table")
    with tab_feat:
        specific_only = st.toggle("Only features specific to the terms", key="cmp_specific_only")
        threshold = dense.render_filter(key="cmp_dense")
        render_features(result, specific_only=specific_only, key="cmp_features", dense_threshold=threshold)

    st.subheader("Export")
    render_exports(result, key="cmp_export")
    if result.notes:
        with st.expander("Loading log"):
            st.code("\n".join(result.notes), language=None)
    st.caption(f"{len(result.models)} model(s) · {len(result.sentences)} sentence(s) · "
               f"{len(result.domain_terms)} term(s) · {result.elapsed_ms / 1000:.1f} s")


main()
