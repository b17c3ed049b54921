"""Text highlighter: which SAE features fire on each token of a text."""

from __future__ import annotations

import streamlit as st

from backend.schemas import AnalyzeRequest, AnalyzeResult, LayerFeature
from components import state
from components.feature_links import render_feature_actions
from components.feature_views import (
    heatmap_figure,
    render_top_features_table,
    shown_positions,
    top_features_frame,
    tracked_figure,
)
from components.token_view import render_token_view, token_view_data

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog. In 1905, Einstein published four papers."
URL_TEXT_LIMIT = 1500  # longer texts are not put in the URL


def parse_track(text: str) -> list[LayerFeature]:
    return [LayerFeature.parse(part) for part in text.replace(";", ",").split(",") if part.strip()]


def selected_feature() -> tuple[int, int] | None:
    if "hl_selected" not in st.session_state:
        raw = state.query_param("feature")
        try:
            f = LayerFeature.parse(raw) if raw else None
        except ValueError:
            f = None
        st.session_state["hl_selected"] = (f.layer, f.index) if f else None
    return st.session_state["hl_selected"]


def select(feature: tuple[int, int] | None) -> None:
    if feature != st.session_state.get("hl_selected"):
        st.session_state["hl_selected"] = feature
        state.set_query_params(feature=None if feature is None else f"{feature[0]}:{feature[1]}")
        st.rerun()


def analyze(req: AnalyzeRequest) -> AnalyzeResult | None:
    return state.session_cached("hl", "analyze", req, "Analysing…", size=32)

def main() -> None:
    selection = state.selection()
    if selection is None or selection.sae_set is None:
        st.info("Pick a model with an SAE set in the sidebar.")
        return
    model, sae_set_id = selection.model, selection.sae_set
    sae_set = next(s for s in model.sae_sets if s.id == sae_set_id)
    st.title("Text highlighter")
    st.caption(f"{model.display_name} · {sae_set.display_name} · hook `{sae_set.hook}`")

    layer_key = f"hl_layer::{model.id}::{sae_set_id}"
    if "hl_text" not in st.session_state:  # first run of the session: restore a shared view
        st.session_state["hl_text"] = state.query_param("text", DEFAULT_TEXT)
        url_layer = state.query_param("layer")
        st.session_state["hl_mode"] = "All layers" if url_layer == "all" else "One layer"
        if url_layer and url_layer.isdigit() and int(url_layer) in sae_set.layers:
            st.session_state[layer_key] = int(url_layer)
        url_k = state.query_param("k", "10")
        st.session_state["hl_k"] = min(max(int(url_k), 1), 100) if url_k.isdigit() else 10
    with st.form("hl_form", border=False):
        text = st.text_area("Text", key="hl_text", height=110,
                            help="Type or paste text; the backend refuses texts over its token limit.")
        c1, c2, c3, c4 = st.columns([1.2, 1, 0.8, 2])
        mode = c1.radio("Layers", ["One layer", "All layers"], key="hl_mode", horizontal=True)
        if layer_key not in st.session_state:
            st.session_state[layer_key] = sae_set.layers[len(sae_set.layers) // 2]
        layer = c2.selectbox("Layer", sae_set.layers, key=layer_key, disabled=mode == "All layers")
        k = c3.number_input("k", min_value=1, max_value=100, key="hl_k")
        track_text = c4.text_input("Track features (layer:index, comma-separated)", key="hl_track",
                                   placeholder="e.g. 1:42, 1:7")
        submitted = st.form_submit_button("Analyse", type="primary")
    if submitted:
        st.session_state["hl_run"] = True
    if not st.session_state.get("hl_run") and state.query_param("text") is None:
        st.caption("Press **Analyse** to see which features fire on each token.")
        return
    try:
        track = parse_track(track_text)
    except ValueError as exc:
        st.warning(str(exc))
        return
    chosen = selected_feature()
    if chosen and LayerFeature(layer=chosen[0], index=chosen[1]) not in track:
        track = [*track, LayerFeature(layer=chosen[0], index=chosen[1])]
    layers = None if mode == "All layers" else [layer]
    req = AnalyzeRequest(model=model.id, sae_set=sae_set_id, text=text, layers=layers, k=int(k), track=track)
    result = analyze(req)
    if result is None:
        return
    state.set_query_params(text=text if len(text) <= URL_TEXT_LIMIT else None,
                           layer="all" if layers is None else layer, k=int(k))
    if result.label:
        st.info(f"Results from a {result.label}.", icon=":material/science:")

    shown_layers = [lt.layer for lt in result.layers]
    c_show, c_special = st.columns([1, 1], vertical_alignment="bottom")
    if len(shown_layers) > 1:
        pick = c_show.selectbox("Show layer", ["All analysed layers", *shown_layers], key="hl_show")
        if pick != "All analysed layers":
            shown_layers = [int(pick)]
    include_special = c_special.checkbox(
        "Include special tokens (BOS)", key="hl_special",
        help="SAEs fire hard and meaninglessly on BOS (an attention sink); by default the tables, the "
             "heatmap and the tint's scale leave special tokens out.")
    positions = shown_positions(result, include_special)

    selected_values, label = None, None
    if chosen:
        tracked = next((t for t in result.tracked if (t.layer, t.index) == chosen), None)
        if tracked is not None:
            selected_values = tracked.values
            label = f"{chosen[0]}:{chosen[1]}" + (f" ({tracked.explanation})" if tracked.explanation else "")
    data = token_view_data(result, shown_layers, chosen, selected_values, label, set(positions))
    clicked = render_token_view(data, key="hl_tokens")
    if clicked:
        f = LayerFeature.parse(clicked)
        select((f.layer, f.index))
    st.caption(f"{len(result.tokens)} tokens · {len(result.layers)} layer(s) · {result.elapsed_ms:.0f} ms"
               + (f" · windows of {result.window} tokens" if result.window else ""))

    if chosen:
        render_feature_actions(model, sae_set, chosen, selected_values, on_clear=lambda: select(None))

    frame = top_features_frame(result, shown_layers, positions)
    tab_table, tab_heat, tab_track = st.tabs(["Top features per token", "Heatmap", "Tracked features"])
    with tab_table:
        picked = render_top_features_table(frame, key="hl_table")
        if picked and picked != st.session_state.get("hl_table_pick"):
            st.session_state["hl_table_pick"] = picked  # act on a new row choice only
            select(picked)
    with tab_heat:
        if frame.empty:
            st.caption("No active features to plot.")
        else:
            st.plotly_chart(heatmap_figure(result, shown_layers, positions), key="hl_heatmap", width="stretch")
    with tab_track:
        if result.tracked:
            st.plotly_chart(tracked_figure(result, result.tracked), key="hl_tracked", width="stretch")
        else:
            st.caption("Add features to *Track features* to follow their activation on every token.")


main()
