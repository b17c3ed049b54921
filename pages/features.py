"""Feature browser: any feature's dashboard, picked by id, by a link, or by search.

The URL holds the view (`model`, `sae_set`, `feature=L:I`), so links from the highlighter and the
graph viewer (whose nodes are transcoder features: `sae_set` may name a transcoder set) open here.
"""

from __future__ import annotations

import streamlit as st

from backend.schemas import (
    AnalyzeRequest,
    ExplanationEdit,
    FeatureRef,
    FeatureRequest,
    FeatureResult,
    LayerFeature,
    ModelInfo,
    SearchRequest,
)
from components import dense, state
from components.feature_dashboard import render_dashboard, try_text_html
from components.feature_search import render_hits
from components.page_state import URL_VALUE_LIMIT, FeatureBrowserState


def dictionary_options(model: ModelInfo) -> dict[str, tuple[str, list[int], int | None]]:
    """set id -> (display name, layers, number of features), SAE sets then per-layer transcoder sets."""
    out = {s.id: (s.display_name, list(s.layers), s.d_sae) for s in model.sae_sets}
    for t in model.transcoder_sets:
        if t.kind == "per_layer":
            out[t.id] = (f"{t.display_name} (transcoders)", list(t.layers), t.d_transcoder)
    return out


def url_news(name: str) -> str | None:
    """The URL's value at the start of this run when it is not what this page last wrote there
    (a link, an edited URL, a first visit); else None."""
    value = state.query_param_at_start(name)
    return value if value is not None and value != st.session_state.setdefault("fb_wrote", {}).get(name) else None


def write_url(**values: str | None) -> None:
    state.set_query_params(**values)
    st.session_state.setdefault("fb_wrote", {}).update(values)


def choose_set(model: ModelInfo, options: dict, sidebar_set: str | None) -> str:
    key = f"fb_set::{model.id}"
    from_url = url_news("sae_set")
    if key not in st.session_state:
        st.session_state[key] = next((s for s in (from_url, sidebar_set) if s in options), next(iter(options)))
    elif from_url in options:
        st.session_state[key] = from_url
    elif st.session_state.get("fb_sidebar_last") not in (None, sidebar_set) and sidebar_set in options:
        st.session_state[key] = sidebar_set  # the user picked another set in the sidebar
    st.session_state["fb_sidebar_last"] = sidebar_set
    return st.selectbox("Dictionary", list(options), key=key, format_func=lambda s: options[s][0])


def open_feature(feature: tuple[int, int]) -> None:
    if feature != st.session_state.get("fb_feature"):
        st.session_state["fb_feature"] = feature
        st.rerun()


def pick_feature(model: ModelInfo, set_id: str, layers: list[int], width: int | None) -> tuple[int, int] | None:
    top = (width - 1) if width else None
    raw = url_news("feature")
    if raw:
        st.session_state.setdefault("fb_wrote", {})["feature"] = raw  # read once: not news again
        try:
            f = LayerFeature.parse(raw)
        except ValueError:
            st.error(state.markdown_text(state.clip_message(f"The link's feature '{raw}' is not layer:index, "
                                                            "e.g. 1:42.")))
        else:
            if f.layer not in layers:
                st.error(f"Layer {f.layer} is not in this dictionary; its layers are {layers}.")
            elif top is not None and f.index > top:
                st.error(f"Feature {f.layer}:{f.index} does not exist: this dictionary has {width:,} features "
                         f"per layer (indices 0 to {top:,}).")
            else:
                st.session_state["fb_feature"] = (f.layer, f.index)
    feature = st.session_state.get("fb_feature")
    if feature is not None and (feature[0] not in layers or (top is not None and feature[1] > top)):
        feature = st.session_state["fb_feature"] = None  # from another dictionary
    layer_key, index_key = f"fb_layer::{model.id}::{set_id}", f"fb_index::{model.id}::{set_id}"
    if feature is not None and st.session_state.get("fb_synced") != (set_id, feature):
        st.session_state[layer_key], st.session_state[index_key] = feature
        st.session_state["fb_synced"] = (set_id, feature)
    with st.form("fb_pick", border=False):
        c1, c2, c3 = st.columns([1, 1, 1], vertical_alignment="bottom")
        layer = c1.selectbox("Layer", layers, key=layer_key)
        index = c2.number_input("Feature index", min_value=0, max_value=top, step=1, key=index_key,
                                help=None if top is None else f"0 to {top:,}")
        if c3.form_submit_button("Open", type="primary"):
            open_feature((int(layer), int(index)))
    if feature is not None:
        c1, c2, _ = st.columns([1, 1, 4])
        if c1.button("← Previous", key="fb_prev", disabled=feature[1] == 0):
            open_feature((feature[0], feature[1] - 1))
        if c2.button("Next →", key="fb_next", disabled=top is not None and feature[1] >= top):
            open_feature((feature[0], feature[1] + 1))
    return feature


def hits_key(name: str, result) -> str:
    """A hits table's key, new for every search: a ticked row belongs to one list of hits."""
    return f"fb_hits_{name}_table::{st.session_state.get(f'fb_hits_{name}_n', 0)}"


def show_hits(name: str, threshold: float | None) -> None:
    """The hits of the last search `name` (dense ones hidden when asked); a ticked row opens its feature."""
    result = st.session_state.get(f"fb_hits_{name}")
    if result is None:
        return
    kept = [h for h in result.hits if not dense.is_dense(h.density, threshold, h.explanation)]
    dense.hidden_note(len(result.hits) - len(kept), threshold)
    picked = render_hits(result.model_copy(update={"hits": kept}), key=hits_key(name, None))
    if picked and picked != st.session_state.get(f"fb_hits_{name}_pick"):
        st.session_state[f"fb_hits_{name}_pick"] = picked
        open_feature(picked)


def search(name: str, req_fields: dict, *, with_progress: bool) -> None:
    req = state.build(SearchRequest, **req_fields)
    if req is None:
        return
    fn = state.backend().search
    result = state.run("Searching…", fn, req) if with_progress else state.call(fn, req)
    st.session_state[f"fb_hits_{name}"] = result
    st.session_state[f"fb_hits_{name}_n"] = st.session_state.get(f"fb_hits_{name}_n", 0) + 1


def search_panel(model: ModelInfo, set_id: str, expanded: bool) -> None:
    fs = FeatureBrowserState.load()
    lim = state.limits()
    with st.expander("Find features", expanded=expanded):
        threshold = dense.render_filter(key="fb_dense")
        tab_text, tab_expl = st.tabs(["Fire most on a text", "Explanation contains"])
        with tab_text, st.form("fb_search_text_form", border=False):
            text = fs.take("search_text", st.text_area("Text", key=fs.bind("search_text"), height=80,
                                                       placeholder="Features that fire most on this text…"))
            if st.form_submit_button("Search"):
                if problem := state.text_problem(text, "The text", "Type some text to search with."):
                    state.warn(problem)
                else:
                    search("text", dict(model=model.id, sae_set=set_id, mode="text", text=text,
                                        k=min(20, lim.max_k)), with_progress=True)
        with tab_text:
            show_hits("text", threshold)
        with tab_expl, st.form("fb_search_expl_form", border=False):
            words = fs.take("search_words", st.text_input("Words", key=fs.bind("search_words"),
                                                          placeholder="e.g. plasma confinement"))
            if st.form_submit_button("Search"):
                if problem := state.text_problem(words, "The query", "Type a word or two to look for."):
                    state.warn(problem)
                else:
                    search("expl", dict(model=model.id, sae_set=set_id, mode="explanation", query=words,
                                        k=min(50, lim.max_k)), with_progress=False)
        with tab_expl:
            show_hits("expl", threshold)


def try_your_text(model: ModelInfo, set_id: str, feature: tuple[int, int], result: FeatureResult) -> None:
    """This feature's activation on every token of a text typed here, tinted, without leaving the page."""
    fs = FeatureBrowserState.load()
    if set_id not in {s.id for s in model.sae_sets}:  # the highlighter's reading is for SAE sets only
        with st.expander("Try your own text"):
            st.caption("Reading a typed text works for SAE features. A transcoder feature's activations on "
                       "a prompt are in its attribution graph (Attribution graph page).")
        return
    with st.expander("Try your own text", expanded=bool(fs.try_text)):
        with st.form("fb_try_form", border=False):
            text = fs.take("try_text", st.text_area("Text", key=fs.bind("try_text"), height=70,
                                                    placeholder="Type a text to see where this feature fires…"))
            go = st.form_submit_button("Show activations")
        if not go and not fs.try_text:
            return
        if go:  # the URL follows what was tried (a link from a graph node brings its prompt here)
            write_url(text=text if len(text) <= URL_VALUE_LIMIT else None)
            fs._wrote["text"] = text
        if problem := state.text_problem(text, "The text", "Type a text to try."):
            state.warn(problem)
            return
        ref = LayerFeature(layer=feature[0], index=feature[1])
        req = state.build(AnalyzeRequest, model=model.id, sae_set=set_id, text=text, layers=[feature[0]], k=1,
                          track=[ref])
        answer = state.session_cached("fb_try", "analyze", req, "Reading the text…", size=8) if req else None
        if answer is None:
            return
        tracked = next((t for t in answer.tracked if (t.layer, t.index) == feature), None)
        if tracked is None:
            st.caption("The backend returned no activations for this feature.")
            return
        st.html(try_text_html([t.text for t in answer.tokens], tracked.values, [t.special for t in answer.tokens],
                              result.max_activation or 0.0))
        fired = sum(v > 0 for v, t in zip(tracked.values, answer.tokens) if not t.special)
        st.caption(f"Fires on {fired} of {sum(not t.special for t in answer.tokens)} tokens.")


def dashboard(req: FeatureRequest, refresh: bool = False) -> FeatureResult | None:
    return state.session_cached("fb", "feature", req, "Loading the feature…", size=32, refresh=refresh)


def first_look(req: FeatureRequest) -> FeatureResult | None:
    """The dashboard without waiting for a corpus store: the full answer when this session has it,
    else what needs no store (explanation, logits), which comes at once even while the demo's store
    is still being built."""
    if state.session_has("fb", req):
        return dashboard(req)
    quick = dashboard(req.model_copy(update={"wait_for_store": False}), refresh=True)
    if quick is None or quick.store_status == "pending":
        return quick
    return dashboard(req)  # the store is there: the full answer, cached for the next rerun


def fill_in_examples(req: FeatureRequest) -> None:
    """The store was pending: build it (or wait for the build under way) with progress under the
    dashboard already shown, then show the full dashboard."""
    if dashboard(req) is not None:
        st.rerun()

def main() -> None:
    selection = state.selection()
    if selection is None:
        return
    model = selection.model
    options = dictionary_options(model)
    st.title("Feature browser")
    if not options:
        st.info(f"{model.display_name} has no SAE or per-layer transcoder set. Pick another model.")
        return
    linked_model = state.query_param_at_start("model")
    if linked_model not in (None, model.id, st.session_state.get("fb_model_last")):
        st.info(f"The link is for model '{linked_model}'; pick it in the sidebar to open its feature.")
    st.session_state["fb_model_last"] = model.id
    set_id = choose_set(model, options, selection.sae_set)
    name, layers, width = options[set_id]
    feature = pick_feature(model, set_id, layers, width)
    search_panel(model, set_id, expanded=feature is None)
    if feature is None:
        write_url(sae_set=set_id, feature=None)
        st.caption("Open a feature by its layer and index, from the highlighter, or by search.")
        return
    write_url(sae_set=set_id, feature=f"{feature[0]}:{feature[1]}")
    req = FeatureRequest(feature=FeatureRef(model=model.id, sae_set=set_id, layer=feature[0], index=feature[1]),
                         n_examples=20, n_quantiles=5, examples_per_quantile=3, context_tokens=12)
    result = first_look(req)
    if result is None:
        return
    steer = state.page("steer")
    if steer is not None:
        st.page_link(steer, label="Steer it", icon=":material/tune:",
                     query_params={"model": model.id, "sae_set": set_id, "feature": f"{feature[0]}:{feature[1]}"})
    to_save = render_dashboard(result, name, key=f"fb_dash::{set_id}::{feature[0]}:{feature[1]}")
    if to_save is not None and (problem := state.too_long("The explanation", to_save,
                                                          state.limits().max_explanation_chars)):
        state.warn(problem)
    elif to_save is not None:
        saved = state.call(state.backend().save_explanation, ExplanationEdit(feature=req.feature, text=to_save))
        if saved is not None and dashboard(req, refresh=True) is not None:
            st.toast("Explanation saved." if saved.explanation_source == "user" else "Your explanation was removed.")
            st.rerun()
    try_your_text(model, set_id, feature, result)
    if result.store_status == "pending":
        fill_in_examples(req)


main()
