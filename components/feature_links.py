"""The selected-feature bar: what it is, and where to go with it (Neuronpedia, other pages)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import streamlit as st

from backend.links import neuronpedia_url
from backend.schemas import ModelInfo, SaeSetInfo
from components import state


def render_feature_actions(model: ModelInfo, sae_set: SaeSetInfo, feature: tuple[int, int],
                           values: Sequence[float] | None, *, on_clear: Callable[[], None],
                           steer_params: dict[str, str] | None = None) -> None:
    """The bar; the steering link also carries `steer_params` (the text being read, as its prompt)."""
    layer, index = feature
    with st.container(border=True):
        c1, c2 = st.columns([1, 1])
        c1.markdown(f"**Selected feature `{layer}:{index}`** of {sae_set.display_name}")
        if values is not None:
            peak = max(values) if values else 0.0
            fired = sum(v > 0 for v in values)
            c1.caption(f"Peak activation here {peak:.3f}; active on {fired} of {len(values)} tokens.")
        source = sae_set.neuronpedia.format(layer=layer) if sae_set.neuronpedia else None
        url = neuronpedia_url(source, index)
        params = {"model": model.id, "sae_set": sae_set.id, "feature": f"{layer}:{index}"}
        pages = [(state.page(name), label) for name, label in (("features", "Feature browser"),
                                                               ("steer", "Steer it"))]
        pages = [(page, label) for page, label in pages if page is not None]
        slots = iter(c2.columns(len(pages) + bool(url)) if pages or url else [])
        if url:
            next(slots).link_button("Neuronpedia ↗", url)
        for page, label in pages:
            extra = steer_params or {} if label == "Steer it" else {}
            next(slots).page_link(page, label=label, query_params={**params, **extra})
        if c2.button("Clear selection", key="clear_feature"):
            on_clear()
