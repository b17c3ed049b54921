"""Featurescope: SAE features, steering, attribution graphs and model comparison in one app."""

from __future__ import annotations

import streamlit as st

from components import state
from components.sidebar import render_sidebar

st.set_page_config(page_title="Featurescope", page_icon=":material/biotech:", layout="wide")

PAGES = {
    "highlighter": st.Page("pages/highlighter.py", title="Text highlighter", icon=":material/format_color_text:",
                           default=True, url_path="highlighter"),
    "graph": st.Page("pages/graph.py", title="Attribution graph", icon=":material/account_tree:", url_path="graph"),
    "system": st.Page("pages/system.py", title="System", icon=":material/memory:", url_path="system"),
}
state.PAGES.clear()
state.PAGES.update(PAGES)

navigation = st.navigation({
    "Explore": [PAGES["highlighter"], PAGES["graph"]],
    "Settings": [PAGES["system"]],
})
st.session_state["selection"] = render_sidebar()
navigation.run()
