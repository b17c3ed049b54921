"""Text highlighter: which SAE features fire on each token of a text."""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from backend.schemas import AnalyzeRequest, AnalyzeResult, LayerFeature
from components import demo_defaults, dense, state
from components.feature_links import render_feature_actions
from components.feature_views import (
    heatmap_figure,
    render_top_features_table,
    shown_positions,
    top_features_frame,
    tracked_figure,
)
from components.page_state import DEFAULT_TEXT, HighlighterState
from components.token_view import render_token_view, token_view_data

STEER_PROMPT_LIMIT = 500  # longer texts are not carried to the steering page's URL


def parse_track(text: str) -> list[LayerFeature]:
    return [LayerFeature.parse(part) for part in text.replace(";", ",").split(",") if part.strip()]


def selected_feature(s: HighlighterState) -> tuple[int, int] | None:
    try:
        f = LayerFeature.parse(s.selected) if s.selected else None
    except ValueError:
        s.selected = None
        return None
    return (f.layer, f.index) if f else None


def select(s: HighlighterState, feature: tuple[int, int] | None) -> None:
    value = None if feature is None else f"{feature[0]}:{feature[1]}"
    if value != s.selected:
        s.selected = value
        s.save_url("selected")
        st.rerun()


def analyze(req: AnalyzeRequest) -> AnalyzeResult | None:
    return state.session_cached("hl", "analyze", req, "Analysing…", size=32)


def check_input(text: str, track_text: str, lim) -> tuple[list[LayerFeature] | None, str | None]:
    """The tracked features, or a message saying what to fix (checked before anything is sent)."""
    if message := state.text_problem(text, "The text", "Type or paste some text to analyse.", lim.max_text_chars):
        return None, message
    try:
        track = parse_track(track_text)
    except ValueError as exc:
        return None, state.clip_message(f"Track features: {exc}")
    if len(track) > lim.max_tracked_features:
        return None, (f"{len(track)} tracked features; the limit is {lim.max_tracked_features}. "
                      "Track fewer.")
    return track, None


def main() -> None:
    selection = state.selection()
    if selection is None or selection.sae_set is None:
        st.info("Pick a model with an SAE set in the sidebar.")
        return
    model, sae_set_id = selection.model, selection.sae_set
    sae_set = next(s for s in model.sae_sets if s.id == sae_set_id)
    st.title("Text highlighter")
    st.caption(f"{model.display_name} · {sae_set.display_name} · hook `{sae_set.hook}`")
    s = HighlighterState.load()
    if s.text == DEFAULT_TEXT and model.source == "demo":  # the demo pack's own showcase lines
        s.text = demo_defaults.highlighter_text(state.settings().demo_dir, sae_set_id, DEFAULT_TEXT)
        st.session_state.pop(s.key("text"), None)
    lim = state.limits()
    if s.layer not in sae_set.layers:
        s.layer = sae_set.layers[len(sae_set.layers) // 2]
    if st.session_state.get(s.key("layer"), s.layer) not in sae_set.layers:
        st.session_state.pop(s.key("layer"))
    s.k = min(max(int(s.k), 1), lim.max_k)

    c1, c2, _ = st.columns([1.2, 1, 2.8])
    # Outside the form: the layer picker's state follows the mode at once.
    all_layers = s.take("all_layers", c1.radio("Layers", [False, True], key=s.bind("all_layers"),
                                               format_func=lambda a: "All layers" if a else "One layer",
                                               horizontal=True))
    layer = s.take("layer", c2.selectbox("Layer", sae_set.layers, disabled=all_layers,
                                         key=s.bind("layer")))
    with st.form("hl_form", border=False):
        text = st.text_area("Text", key=s.bind("text"), height=110,
                            help=f"Up to {lim.max_text_chars:,} characters and {lim.max_prompt_tokens:,} tokens.")
        c3, c4 = st.columns([0.8, 3.2])
        k = c3.number_input("k", min_value=1, max_value=lim.max_k, key=s.bind("k"))
        track_text = c4.text_input("Track features (layer:index, comma-separated)", key=s.bind("track"),
                                   placeholder="e.g. 1:42, 1:7")
        submitted = st.form_submit_button("Analyse", type="primary")
    s.text, s.k, s.track = text, int(k), track_text
    if submitted:
        s.analysed = True
    if not s.analysed:
        st.caption("Press **Analyse** to see which features fire on each token.")
        return
    track, problem = check_input(text, track_text, lim)
    if problem:
        state.warn(problem)
        return
    chosen = selected_feature(s)
    if chosen and LayerFeature(layer=chosen[0], index=chosen[1]) not in track:
        track = [*track, LayerFeature(layer=chosen[0], index=chosen[1])]
    layers = None if all_layers else [layer]
    req = state.build(AnalyzeRequest, model=model.id, sae_set=sae_set_id, text=text, layers=layers, k=int(k),
                      track=track)
    if req is None:
        return
    result = analyze(req)
    if result is None:
        return
    s.save_url()
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
        select(s, (f.layer, f.index))
    st.caption(f"{len(result.tokens)} tokens · {len(result.layers)} layer(s) · {result.elapsed_ms:.0f} ms"
               + (f" · windows of {result.window} tokens" if result.window else ""))

    if chosen:
        render_feature_actions(model, sae_set, chosen, selected_values, on_clear=lambda: select(s, None),
                               steer_params={"prompt": text} if len(text) <= STEER_PROMPT_LIMIT else {})

    frame = top_features_frame(result, shown_layers, positions)
    threshold = dense.render_filter(key="hl_dense")
    hidden = frame[~pd.Series(dense.keep(frame["density"], frame["explanation"], threshold), index=frame.index,
                              dtype=bool)]
    skip = frozenset(zip(hidden["layer"], hidden["feature"]))
    frame = frame.drop(hidden.index).reset_index(drop=True)
    dense.hidden_note(len(skip), threshold)
    tab_table, tab_heat, tab_track = st.tabs(["Top features per token", "Heatmap", "Tracked features"])
    with tab_table:
        # Keyed by the request: a new analysis starts with no row ticked (row 3 of another text is
        # another feature).
        table_key = "hl_table::" + hashlib.sha1(req.model_dump_json().encode()).hexdigest()[:12]
        picked = render_top_features_table(frame, key=table_key)
        if picked and picked != st.session_state.get("hl_table_pick", {}).get(table_key):
            st.session_state["hl_table_pick"] = {table_key: picked}  # act on a new row choice only
            select(s, picked)
    with tab_heat:
        if frame.empty:
            st.caption("No active features to plot.")
        else:
            figure = heatmap_figure(result, shown_layers, positions, skip=skip)
            st.plotly_chart(figure, key="hl_heatmap", width="stretch")
    with tab_track:
        if result.tracked:
            st.plotly_chart(tracked_figure(result, result.tracked), key="hl_tracked", width="stretch")
        else:
            st.caption("Add features to *Track features* to follow their activation on every token.")


main()
