"""What the steering playground shows: the two generations side by side with the differing tokens
marked, per-position top-k tables, the cost on the prompt, the interventions, and sweep plots.

Model tokens reach HTML only through `html.escape` (side-by-side view) or as plain text in
dataframes; plotly labels go through `components.text.plot_label`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from backend.schemas import SteerResult, SteerSweepResult
from components.text import plot_label, plot_text, visible

# Inline styles: st.html sanitises its input and does no markdown, so token text stays text.
_BOX = (
    "font-size:0.95rem;line-height:1.7;white-space:pre-wrap;word-break:break-word;"
    "border:1px solid rgba(128,128,128,.35);border-radius:6px;padding:.5rem .7rem;min-height:4rem"
)
_PROMPT = "color:#777"
_GEN = "font-weight:600"
_DIFF = "font-weight:600;background:rgba(255,140,0,.35);border-radius:3px;padding:0 1px"


def differing_positions(a: Sequence[int], b: Sequence[int], start: int) -> set[int]:
    """Positions >= start where the two token sequences differ (including where one is longer)."""
    return {p for p in range(start, max(len(a), len(b))) if p >= len(a) or p >= len(b) or a[p] != b[p]}


def generation_html(tokens: Sequence[str], n_prompt: int, diff: set[int], skip_first: bool) -> str:
    """One generation as escaped HTML: the prompt greyed, generated tokens bold, differences marked."""
    parts = []
    for pos, tok in enumerate(tokens):
        if pos == 0 and skip_first:
            continue
        text = html.escape(tok, quote=True)
        if pos < n_prompt:
            parts.append(f'<span style="{_PROMPT}">{text}</span>')
        elif pos in diff:
            parts.append(f'<mark style="{_DIFF}" title="differs from the other run">{text}</mark>')
        else:
            parts.append(f'<span style="{_GEN}">{text}</span>')
    return f'<div style="{_BOX}">' + "".join(parts) + "</div>"


def render_side_by_side(result: SteerResult) -> None:
    n_prompt = len(result.prompt_tokens)
    default_tokens = [t for t, _ in result.default_logits_by_token]
    steered_tokens = [t for t, _ in result.steered_logits_by_token]
    diff = differing_positions(result.default_ids, result.steered_ids, n_prompt)
    skip = bool(result.prompt_tokens and result.prompt_tokens[0].special)
    left, right = st.columns(2)
    with left:
        st.markdown("**DEFAULT**")
        st.html(generation_html(default_tokens, n_prompt, diff, skip))
    with right:
        st.markdown("**STEERED**")
        st.html(generation_html(steered_tokens, n_prompt, diff, skip))
    n_gen = max(len(result.default_ids), len(result.steered_ids)) - n_prompt
    st.caption(f"{len(diff)} of {n_gen} generated tokens differ (marked). Prompt in grey.")


def _topk_text(pairs: Sequence[tuple[str, float]]) -> str:
    return "  ".join(f"{visible(tok)} {prob:.3f}" for tok, prob in pairs)


def topk_frame(result: SteerResult) -> pd.DataFrame:
    """One row per position: each run's token and its top-k next tokens, and the KL on the prompt."""
    n_prompt = len(result.prompt_tokens)
    kl = result.metrics.kl_by_position if result.metrics else []
    rows = []
    for pos in range(max(len(result.default_logits_by_token), len(result.steered_logits_by_token))):
        d = result.default_logits_by_token[pos] if pos < len(result.default_logits_by_token) else ("", [])
        s = result.steered_logits_by_token[pos] if pos < len(result.steered_logits_by_token) else ("", [])
        rows.append(
            {
                "pos": pos,
                "part": "prompt" if pos < n_prompt else "generated",
                "default token": visible(d[0]),
                "default top-k": _topk_text(d[1]),
                "steered token": visible(s[0]),
                "steered top-k": _topk_text(s[1]),
                "KL": kl[pos] if pos < len(kl) else None,
            }
        )
    return pd.DataFrame(
        rows,
        columns=["pos", "part", "default token", "default top-k", "steered token", "steered top-k", "KL"],
    )


def interventions_frame(result: SteerResult) -> pd.DataFrame:
    rows = []
    for iv in result.interventions:
        acts = [iv.clean_activations[p] for p in iv.prompt_positions if p < len(iv.clean_activations)]
        rows.append(
            {
                "feature": f"{iv.layer}:{iv.index}",
                "set": iv.sae_set,
                "kind": iv.kind,
                "operation": iv.operation,
                "amount": iv.amount,
                "value set": iv.target_value,
                "positions": ", ".join(map(str, iv.prompt_positions)) or "—",
                "generated tokens": iv.generated_tokens,
                "activation there (default)": ", ".join(f"{a:.3f}" for a in acts[:12]) or "—",
                "peak on prompt": max(iv.clean_activations, default=0.0),
                "explanation": iv.explanation or "",
                "writes to": iv.out_hook_name,
            }
        )
    return pd.DataFrame(rows)


def render_metrics(result: SteerResult) -> None:
    m = result.metrics
    if m is None:
        return
    c = st.columns(4)
    c[0].metric("ΔCE loss on the prompt", f"{m.delta_ce_loss:+.4f}", help="steered − default, nats per token")
    c[1].metric("KL(default ‖ steered)", f"{m.kl_divergence:.4f}", help="mean over prompt positions")
    c[2].metric("CE default", f"{m.ce_loss_default:.4f}")
    c[3].metric("CE steered", f"{m.ce_loss_steered:.4f}")
    if m.top_logit_deltas:
        frame = pd.DataFrame(
            [{"token": visible(t), "mean logit change": round(v, 4)} for t, v in m.top_logit_deltas]
        )
        st.dataframe(frame, hide_index=True, width="stretch", key="st_logit_deltas")


def kl_figure(result: SteerResult) -> go.Figure:
    x = [plot_label(t.text, t.position) for t in result.prompt_tokens]
    fig = go.Figure(
        go.Bar(
            x=x,
            y=result.metrics.kl_by_position if result.metrics else [],
            hovertemplate="%{x}<br>KL %{y:.4f}<extra></extra>",
            marker_color="#e8590c",
        )
    )
    fig.update_layout(
        height=260,
        margin=dict(l=10, r=10, t=30, b=10),
        xaxis=dict(tickangle=-60),
        yaxis_title="KL at position",
        title="Where steering moved the prediction (prompt)",
    )
    return fig


def sweep_figure(result: SteerSweepResult) -> go.Figure:
    alphas = [p.alpha for p in result.points]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(
            x=alphas,
            y=[p.metrics.delta_ce_loss for p in result.points],
            mode="lines+markers",
            name="ΔCE loss",
        ),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=alphas, y=[p.metrics.kl_divergence for p in result.points], mode="lines+markers", name="KL"
        ),
        secondary_y=True,
    )
    fig.update_xaxes(title_text="alpha")
    fig.update_yaxes(title_text="ΔCE loss (nats)", secondary_y=False)
    fig.update_yaxes(title_text="KL(default ‖ steered)", secondary_y=True)
    fig.update_layout(
        height=320,
        margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h"),
        title=plot_text(f"Feature {result.feature.layer}:{result.feature.index} scaled by alpha"),
    )
    return fig


def sweep_frame(result: SteerSweepResult, tokenize_generated) -> pd.DataFrame:
    """One row per alpha: the cost and the generated continuation (plain text)."""
    rows = [
        {
            "alpha": p.alpha,
            "ΔCE loss": round(p.metrics.delta_ce_loss, 5),
            "KL": round(p.metrics.kl_divergence, 5),
            "same as default": p.steered_ids == result.default_ids,
            "generation": tokenize_generated(p.steered_generation),
        }
        for p in result.points
    ]
    return pd.DataFrame(rows, columns=["alpha", "ΔCE loss", "KL", "same as default", "generation"])
