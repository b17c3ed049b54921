"""Feature search results: a table whose rows open a feature."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend.schemas import SearchResult
from components import dense
from components.text import visible


def hits_frame(result: SearchResult) -> pd.DataFrame:
    rows = []
    for h in result.hits:
        rows.append({"feature": f"{h.feature.layer}:{h.feature.index}", "layer": h.feature.layer,
                     "index": h.feature.index, "score": round(h.score, 4),
                     "vs corpus max": None if h.relative is None else round(h.relative, 3),
                     "top token": visible(h.top_token) if h.top_token is not None else "",
                     "density": h.density, "explanation": h.explanation or ""})
    return pd.DataFrame(rows, columns=["feature", "layer", "index", "score", "vs corpus max", "top token",
                                       "density", "explanation"])


def render_hits(result: SearchResult, *, key: str) -> tuple[int, int] | None:
    """The hits; selecting a row returns its (layer, index)."""
    if not result.hits:
        st.caption("No feature matched." if result.mode == "explanation" else "No feature fires on this text.")
        return None
    for note in result.notes:
        st.caption(note)
    frame = hits_frame(result)
    columns = [c for c in frame.columns if c not in ("layer", "index")]
    if result.mode == "explanation":
        columns = [c for c in columns if c not in ("vs corpus max", "top token")]
    event = st.dataframe(frame[columns], key=key, on_select="rerun", selection_mode="single-row", hide_index=True,
                         width="stretch",
                         column_config={"density": dense.column(),
                                        "explanation": st.column_config.TextColumn("explanation", width="large")})
    rows = event.selection.rows if event is not None else []
    if rows:
        row = frame.iloc[rows[0]]
        return int(row["layer"]), int(row["index"])
    return None
