"""An experiment's result in the playground: the CLI's tables (same columns as its CSVs), the two
plots (ΔCE by layer at the headline alpha; metrics against alpha) and the example snippets."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from backend.experiments.outputs import per_feature_frame, per_layer_frame
from backend.schemas import ExperimentResult
from components.text import visible


def layer_figure(result: ExperimentResult) -> go.Figure:
    layers = per_layer_frame(result)
    at = layers[layers["alpha"] == result.alpha]
    fig = go.Figure(
        go.Scatter(
            x=at["layer"],
            y=at["delta_ce_loss_mean"],
            mode="lines+markers",
            error_y=dict(type="data", array=at["delta_ce_loss_std"]),
            name="ΔCE",
        )
    )
    fig.update_layout(
        height=300,
        margin=dict(l=10, r=10, t=30, b=10),
        xaxis_title="layer",
        yaxis_title="ΔCE loss (nats)",
        title=f"ΔCE by layer at alpha = {result.alpha:g}",
    )
    return fig


def alpha_figure(result: ExperimentResult) -> go.Figure:
    layers = per_layer_frame(result)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("ΔCE loss", "KL(default ‖ steered)"))
    for layer, group in layers.groupby("layer"):
        fig.add_trace(
            go.Scatter(
                x=group["alpha"],
                y=group["delta_ce_loss_mean"],
                mode="lines+markers",
                name=f"layer {layer}",
                legendgroup=str(layer),
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=group["alpha"],
                y=group["kl_mean"],
                mode="lines+markers",
                name=f"layer {layer}",
                legendgroup=str(layer),
                showlegend=False,
            ),
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="alpha")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h"))
    return fig


def snippets_frame(result: ExperimentResult) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "feature": f"{s.layer}:{s.feature}",
                "KL": round(s.kl, 4),
                "passage": s.passage,
                "pos": s.position,
                "context": visible(s.before[-60:]),
                "token": visible(s.token),
                "after": visible(s.after[:40]),
                "default next": visible(s.default_next),
                "steered next": visible(s.steered_next),
            }
            for s in result.snippets
        ],
        columns=[
            "feature",
            "KL",
            "passage",
            "pos",
            "context",
            "token",
            "after",
            "default next",
            "steered next",
        ],
    )


def render_experiment(result: ExperimentResult, *, key: str) -> None:
    if result.label:
        st.info(f"Results from a {result.label}.", icon=":material/science:")
    st.caption(
        f"{result.corpus}: {result.n_passages} passages, {result.n_tokens:,} tokens · hook "
        f"`{result.hook}` · {len(result.features)} features × {len(result.alphas)} alphas · "
        f"{result.elapsed_ms / 1000:.1f} s"
    )
    c1, c2 = st.columns(2)
    c1.plotly_chart(layer_figure(result), key=f"{key}_plot_layer", width="stretch")
    c2.plotly_chart(alpha_figure(result), key=f"{key}_plot_alpha", width="stretch")
    features = per_feature_frame(result)
    layers = per_layer_frame(result)
    st.markdown("**Per feature** (per_feature_metrics.csv)")
    st.dataframe(features, hide_index=True, width="stretch", key=f"{key}_features")
    st.markdown("**Per layer** (per_layer_summary.csv)")
    st.dataframe(layers, hide_index=True, width="stretch", key=f"{key}_layers")
    d1, d2 = st.columns(2)
    d1.download_button(
        "per_feature_metrics.csv",
        features.to_csv(index=False),
        "per_feature_metrics.csv",
        "text/csv",
        key=f"{key}_dl_features",
    )
    d2.download_button(
        "per_layer_summary.csv",
        layers.to_csv(index=False),
        "per_layer_summary.csv",
        "text/csv",
        key=f"{key}_dl_layers",
    )
    if result.snippets:
        st.markdown(f"**Example snippets at alpha = {result.alpha:g}** (where the prediction moved most)")
        st.dataframe(snippets_frame(result), hide_index=True, width="stretch", key=f"{key}_snippets")
    for note in result.notes:
        st.caption(note)
