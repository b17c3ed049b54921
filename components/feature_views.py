"""Tables and charts of an analysis: per-token top features, a heatmap, tracked features."""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from backend.schemas import AnalyzeResult, TrackedActivations
from components import dense
from components.text import plot_label, plot_text, visible


def shown_positions(result: AnalyzeResult, include_special: bool) -> list[int]:
    """Token positions to tabulate and plot. Special tokens (BOS) are left out unless asked for:
    SAEs fire hard and meaninglessly there (attention-sink activations), drowning the text."""
    return [t.position for t in result.tokens if include_special or not t.special]


def top_features_frame(result: AnalyzeResult, layers: Sequence[int],
                       positions: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per (token, active feature) of the chosen layers at `positions` (None: every token),
    strongest first per token."""
    rows = []
    keep = set(range(len(result.tokens)) if positions is None else positions)
    for lt in result.layers:
        if lt.layer not in layers:
            continue
        for pos, (indices, values) in enumerate(zip(lt.indices, lt.values)):
            if pos not in keep:
                continue
            tok = visible(result.tokens[pos].text)
            dens = lt.densities[pos] if lt.densities is not None else [None] * len(indices)
            for rank, (index, value, d) in enumerate(zip(indices, values, dens)):
                rows.append({"pos": pos, "token": tok, "layer": lt.layer, "feature": index,
                             "id": f"{lt.layer}:{index}", "activation": round(value, 4), "density": d,
                             "explanation": lt.explanations.get(index, ""), "rank": rank})
    frame = pd.DataFrame(rows, columns=["pos", "token", "layer", "feature", "id", "activation", "density",
                                        "explanation", "rank"])
    return frame.sort_values(["pos", "activation"], ascending=[True, False], ignore_index=True)


def render_top_features_table(frame: pd.DataFrame, *, key: str) -> tuple[int, int] | None:
    """The per-token table; selecting a row selects its feature (returns (layer, index))."""
    if frame.empty:
        st.caption("No feature is active on these tokens.")
        return None
    event = st.dataframe(
        frame.drop(columns=["rank", "id"]),
        key=key,
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        column_config={
            "activation": st.column_config.ProgressColumn(
                "activation", format="%.3f", min_value=0.0, max_value=float(frame["activation"].max() or 1.0)),
            "density": dense.column(),
            "explanation": st.column_config.TextColumn("explanation", width="large"),
        },
    )
    rows = event.selection.rows if event is not None else []
    if rows:
        row = frame.iloc[rows[0]]
        return int(row["layer"]), int(row["feature"])
    return None


def heatmap_figure(result: AnalyzeResult, layers: Sequence[int], positions: Sequence[int] | None = None,
                   max_features: int = 30, skip: AbstractSet[tuple[int, int]] = frozenset()) -> go.Figure:
    """Tokens (at `positions`; None: all) x top features by peak activation there; zero where a
    feature is not in a token's top-k. Features in `skip` (layer, index) are left out."""
    cols = list(range(len(result.tokens))) if positions is None else list(positions)
    peak: dict[tuple[int, int], float] = {}
    names: dict[tuple[int, int], str] = {}
    for lt in result.layers:
        if lt.layer not in layers:
            continue
        for pos in cols:
            for index, value in zip(lt.indices[pos], lt.values[pos]):
                key = (lt.layer, index)
                if key in skip:
                    continue
                peak[key] = max(peak.get(key, 0.0), value)
                names[key] = lt.explanations.get(index, "")
    chosen = sorted(peak, key=lambda k: -peak[k])[:max_features]
    z = [[0.0] * len(cols) for _ in chosen]
    row_of = {k: i for i, k in enumerate(chosen)}
    for lt in result.layers:
        for j, pos in enumerate(cols):
            for index, value in zip(lt.indices[pos], lt.values[pos]):
                i = row_of.get((lt.layer, index))
                if i is not None:
                    z[i][j] = value
    x = [plot_label(result.tokens[pos].text, pos) for pos in cols]
    y = [plot_text(f"{layer}:{index} {names[(layer, index)][:40]}".strip()) for layer, index in chosen]
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, colorscale="Oranges", hoverongaps=False,
                               hovertemplate="%{y}<br>%{x}<br>activation %{z:.3f}<extra></extra>"))
    fig.update_layout(height=max(260, 22 * len(chosen) + 120), margin=dict(l=10, r=10, t=30, b=10),
                      yaxis=dict(autorange="reversed"), xaxis=dict(tickangle=-60))
    return fig


def tracked_figure(result: AnalyzeResult, tracked: Sequence[TrackedActivations]) -> go.Figure:
    x = [plot_label(t.text, t.position) for t in result.tokens]
    fig = go.Figure()
    for t in tracked:
        name = plot_text(f"{t.layer}:{t.index} {(t.explanation or '')[:30]}".strip())
        fig.add_trace(go.Scatter(x=x, y=t.values, mode="lines+markers", name=name))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10), xaxis=dict(tickangle=-60),
                      yaxis_title="activation", legend=dict(orientation="h"))
    return fig
