"""Featurescope: SAE features, steering, attribution graphs and model comparison in one app."""

from __future__ import annotations

import streamlit as st

from components import gate, state
from components.sidebar import render_sidebar

st.set_page_config(page_title="Featurescope", page_icon=":material/biotech:", layout="wide")
state.mark_app_shell()

settings = state.settings()


def sign_in() -> None:
    gate.render_gate(settings)


if not gate.allowed(settings):  # a visitor without access gets the sign-in page and nothing else
    st.navigation([st.Page(sign_in, title="Sign in", url_path="sign-in")], position="hidden").run()
    st.stop()

PAGES = {
    "highlighter": st.Page("pages/highlighter.py", title="Text highlighter", icon=":material/format_color_text:",
                           default=True, url_path="highlighter"),
    "features": st.Page("pages/features.py", title="Feature browser", icon=":material/manage_search:",
                        url_path="features"),
    "steer": st.Page("pages/steer.py", title="Steering", icon=":material/tune:", url_path="steer"),
    "compare": st.Page("pages/compare.py", title="Model compare", icon=":material/compare_arrows:",
                       url_path="compare"),
    "graph": st.Page("pages/graph.py", title="Attribution graph", icon=":material/account_tree:", url_path="graph"),
    "system": st.Page("pages/system.py", title="System", icon=":material/memory:", url_path="system"),
}
state.PAGES.clear()
state.PAGES.update(PAGES)

navigation = st.navigation({
    "Explore": [PAGES["highlighter"], PAGES["features"], PAGES["graph"], PAGES["steer"], PAGES["compare"]],
    "Settings": [PAGES["system"]],
})
state.snapshot_query_params()  # before the sidebar rewrites model/sae_set
st.session_state["selection"] = render_sidebar()
state.prebuild_demo_stores()  # examples ready by the time the user opens a dashboard
with st.sidebar:
    gate.render_account(settings)
navigation.run()
