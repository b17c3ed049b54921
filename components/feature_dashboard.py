"""One feature's dashboard: explanation, statistics, histogram, logits, examples, quantile bands.

Tokens are shown escaped: examples as HTML built here with `html.escape` on every token and
every metadata value; logits as plain text in dataframes; plotly labels via `plot_label`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from backend.schemas import Example, FeatureResult, Histogram, LogitEntry, Sampling
from components.text import visible

_CSS = """
<style>
.fs-ex { font-size: 0.92rem; line-height: 1.9; margin: 0.15rem 0 0.55rem 0; }
.fs-ex .meta { font-size: 0.75rem; color: #777; margin-bottom: -0.2rem; }
.fs-ex .tok { white-space: pre-wrap; border-radius: 3px; padding: 0.05rem 0; }
.fs-ex .tok.max { outline: 2px solid #c0392b; font-weight: 600; }
</style>
"""


def render_header(result: FeatureResult, set_name: str) -> None:
    f = result.feature
    kind = "transcoder" if result.dictionary_kind == "transcoder" else "SAE"
    c1, c2 = st.columns([4, 1])
    c1.subheader(f"Feature {f.layer}:{f.index}")
    c1.caption(f"{set_name} ({kind}) · layer {f.layer} · hook `{result.hook_name}` · {result.d_sae:,} features")
    if result.neuronpedia_url:
        c2.link_button("Neuronpedia ↗", result.neuronpedia_url)
    if result.label:
        st.info(f"Results from a {result.label}.", icon=":material/science:")
    for note in result.notes:
        st.info(note, icon=":material/info:")


def render_explanation(result: FeatureResult, *, key: str) -> str | None:
    """The explanation and an editor; returns the text to save when the user presses Save."""
    source = f" (from {result.explanation_source})" if result.explanation_source else ""
    st.markdown(f"**Explanation**{source}")
    if result.explanation:
        st.text(result.explanation)
    else:
        st.caption("No explanation yet. Write one below: it is saved for everyone using this backend.")
    with st.form(key=f"{key}_form", border=False):
        text = st.text_area("Your explanation", value=result.explanation or "", key=f"{key}_text", height=70,
                            help="Saved as the user's explanation (empty removes it).")
        saved = st.form_submit_button("Save explanation")
    return text if saved else None


def render_stats(result: FeatureResult) -> None:
    cols = st.columns(4)
    density = "—" if result.density is None else f"{result.density:.4%}"
    cols[0].metric("Density", density, help="Fraction of corpus tokens where the feature fires.")
    cols[1].metric("Fires on", "—" if result.n_active is None else f"{result.n_active:,} tokens")
    cols[2].metric("Max activation", "—" if result.max_activation is None else f"{result.max_activation:.4g}")
    cols[3].metric("Mean when active", "—" if result.mean_activation is None else f"{result.mean_activation:.4g}")
    if result.store_tokens is not None:
        st.caption(f"Corpus store: {result.store_tokens:,} tokens in {result.store_docs:,} documents.")


def histogram_figure(hist: Histogram, bands: Sequence[tuple[float, float]] = ()) -> go.Figure:
    """Counts per activation bin. Log-spaced bins are drawn on a log axis; the bin of activations
    below the first edge (0 to 1e-4) is drawn one bin width lower."""
    edges, counts = list(hist.bin_edges), hist.counts
    log_x = hist.log_bins and len(edges) > 2
    if log_x and edges[0] <= 0:
        edges[0] = edges[1] * edges[1] / edges[2]
    lows, highs = edges[:-1], edges[1:]
    mids = [(lo * hi) ** 0.5 if log_x else (lo + hi) / 2 for lo, hi in zip(lows, highs)]
    widths = [hi - lo for lo, hi in zip(lows, highs)]
    shown_lows = list(hist.bin_edges[:-1])
    fig = go.Figure(go.Bar(x=mids, y=counts, width=widths, marker_color="#e67e22",
                           customdata=[[lo, hi] for lo, hi in zip(shown_lows, highs)],
                           hovertemplate="%{customdata[0]:.3g}–%{customdata[1]:.3g}: %{y:,} tokens<extra></extra>"))
    for i, (lo, hi) in enumerate(bands):  # the quantile bands, shaded in turn
        if i % 2 == 0:
            fig.add_vrect(x0=max(lo, edges[0]), x1=hi, line_width=0, fillcolor="#3498db", opacity=0.07)
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), bargap=0.05,
                      xaxis=dict(title="activation" + (" (log scale)" if log_x else ""), type="log" if log_x else "linear"),
                      yaxis=dict(title="tokens"), title=dict(text="Activation histogram", font=dict(size=13)))
    return fig


def logits_frame(entries: Sequence[LogitEntry]) -> pd.DataFrame:
    return pd.DataFrame({"token": [visible(e.token) for e in entries], "id": [e.id for e in entries],
                         "logit": [round(e.value, 4) for e in entries]}, columns=["token", "id", "logit"])


def render_logits(result: FeatureResult, *, key: str) -> None:
    st.markdown("**Logits** — decoder direction through the unembedding")
    c1, c2 = st.columns(2)
    c1.caption("Promoted (top positive)")
    c1.dataframe(logits_frame(result.top_logits), hide_index=True, key=f"{key}_top", width="stretch")
    c2.caption("Suppressed (top negative)")
    c2.dataframe(logits_frame(result.bottom_logits), hide_index=True, key=f"{key}_bottom", width="stretch")


def _token_html(text: str, value: float, peak: float, is_max: bool) -> str:
    alpha = max(0.0, min(1.0, value / peak)) if peak > 0 else 0.0
    style = f"background-color: rgba(230, 126, 34, {0.06 + 0.8 * alpha:.3f});" if value > 0 else ""
    shown = html.escape(text.replace("\n", "↵"), quote=True)
    cls = "tok max" if is_max else "tok"
    return f'<span class="{cls}" style="{style}" title="{value:.4g}">{shown}</span>'


def _meta_html(ex: Example) -> str:
    parts = [f"doc {ex.doc_id}", f"token {ex.doc_position}", f"activation {ex.max_activation:.4g}"]
    parts += [f"{k}: {v}" for k, v in ex.metadata.items() if v is not None and k != "line"]
    return html.escape(" · ".join(str(p) for p in parts), quote=True)


def examples_html(examples: Sequence[Example], peak: float | None = None) -> str:
    """Examples as escaped HTML: each context token tinted by its activation, the activating one
    outlined. `peak` scales the tint (default: the strongest example)."""
    if peak is None:
        peak = max((ex.max_activation for ex in examples), default=0.0)
    blocks = []
    for ex in examples:
        toks = "".join(_token_html(t, v, peak, i == ex.max_position)
                       for i, (t, v) in enumerate(zip(ex.tokens, ex.activations)))
        blocks.append(f'<div class="fs-ex"><div class="meta">{_meta_html(ex)}</div>{toks}</div>')
    return _CSS + "".join(blocks)


def try_text_html(tokens: Sequence[str], values: Sequence[float], special: Sequence[bool], peak: float) -> str:
    """A typed text's tokens tinted by this feature's activation (escaped, as the examples are);
    special tokens (BOS) left out. `peak` scales the tint (the feature's max on the corpus, when known)."""
    top = max((v for v, sp in zip(values, special) if not sp), default=0.0)
    scale = peak if peak and peak > 0 else top
    strongest = max((i for i, sp in enumerate(special) if not sp), key=lambda i: values[i], default=-1)
    toks = "".join(_token_html(t, v, scale, i == strongest and v > 0)
                   for i, (t, v, sp) in enumerate(zip(tokens, values, special)) if not sp)
    meta = html.escape(f"peak here {top:.4g}" + (f" · corpus max {peak:.4g}" if peak else ""), quote=True)
    return _CSS + f'<div class="fs-ex"><div class="meta">{meta}</div>{toks}</div>'


def render_examples(examples: Sequence[Example], peak: float | None = None) -> None:
    if not examples:
        st.caption("No examples.")
        return
    st.html(examples_html(examples, peak))


def render_sampling(label: str, sampling: Sampling | None) -> None:
    if sampling is not None:
        st.caption(f"{label}: *{sampling.method}* — {sampling.description} "
                   f"({sampling.tokens_scanned:,} tokens, coverage {sampling.corpus_coverage:.1%})")


def render_quantiles(result: FeatureResult) -> None:
    for band in result.quantiles:
        title = f"{band.low:.3g} – {band.high:.3g} · {band.count:,} activations"
        with st.expander(title, expanded=False):
            render_examples(band.examples, result.max_activation)


def render_dashboard(result: FeatureResult, set_name: str, *, key: str) -> str | None:
    """The whole dashboard; returns an explanation to save, if the user saved one."""
    render_header(result, set_name)
    to_save = render_explanation(result, key=f"{key}_expl")
    render_stats(result)
    left, right = st.columns([3, 2])
    with left:
        if result.histogram is not None:
            bands = [(b.low, b.high) for b in result.quantiles]
            st.plotly_chart(histogram_figure(result.histogram, bands), key=f"{key}_hist", width="stretch")
        elif result.store is not None:
            st.caption("The feature never fires on the corpus: no histogram.")
        render_sampling("Statistics", result.sampling)
    with right:
        render_logits(result, key=f"{key}_logits")
    st.markdown("**Max-activating examples**")
    render_examples(result.examples)
    render_sampling("Examples", result.examples_sampling)
    if result.quantiles:
        st.markdown("**Examples across the activation range**")
        render_quantiles(result)
        render_sampling("Bands", result.quantiles_sampling)
    return to_save
