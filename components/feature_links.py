"""The selected-feature bar: what it is, and where to go with it (Neuronpedia, other pages)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import streamlit as st

from backend.links import neuronpedia_url
from backend.schemas import ModelInfo, SaeSetInfo
from components import state


def render_feature_actions(model: ModelInfo, sae_set: SaeSetInfo, feature: tuple[int, int],
                           values: Sequence[float] | None, *, on_clear: Callable[[], None]) -> None:
    layer, index = feature
    with st.container(border=True):
        c1, c2 = st.columns([3, 2])
        c1.markdown(f"**Selected feature `{layer}:{index}`** of {sae_set.display_name}")
        if values is not None:
            peak = max(values) if values else 0.0
            fired = sum(v > 0 for v in values)
            c1.caption(f"Peak activation here {peak:.3f}; active on {fired} of {len(values)} tokens.")
        links = c2.columns(3)
        source = sae_set.neuronpedia.format(layer=layer) if sae_set.neuronpedia else None
        url = neuronpedia_url(source, index)
        if url:
            links[0].link_button("Neuronpedia ↗", url)
        params = {"model": model.id, "sae_set": sae_set.id, "feature": f"{layer}:{index}"}
        browser = state.page("features")
        if browser is not None:
            links[1].page_link(browser, label="Feature browser", query_params=params)
        steer = state.page("steer")
        if steer is not None:
            links[2].page_link(steer, label="Steer it", query_params=params)
        if c2.button("Clear selection", key="clear_feature"):
            on_clear()
