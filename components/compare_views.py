"""Model compare: the tables, charts and exports of a `CompareResult`.

Frames hold exactly what the page shows, and the CSV exports are those frames, so a download
matches the screen. Tokens are plain text in tables (whitespace made visible) and escaped in
plotly labels. An absent term is None in the data and "absent" on screen, never 0.
"""

from __future__ import annotations

import io
import json
from urllib.parse import urlencode

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from backend.schemas import CompareResult, ModelReading
from components import dense
from components.text import plot_label, plot_text, visible

# The page's defaults: the seed service's /compare example, with sentences that use its terms and
# one that uses none of them.
DEFAULT_SENTENCES = [
    "The tokamak achieved H-mode",
    "Plasma confinement improved once the tokamak reached H-mode.",
    "Magnetic confinement keeps the hot plasma away from the tokamak wall.",
    "The weather was pleasant, so we walked to the station.",
]
DEFAULT_TERMS = ["tokamak", "plasma", "confinement", "H-mode"]
ABSENT = "absent"
FEATURE_COLUMNS = ["model", "sae_set", "layer", "feature", "mean on terms", "max on terms", "fires on terms",
                   "fires elsewhere", "specific", "terms", "density", "explanation", "neuronpedia"]
PALETTE = ["#1f77b4", "#e8710a", "#2ca02c", "#9467bd", "#8c564b", "#d62728"]


def _name(m: ModelReading) -> str:
    return m.display_name or m.model


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def pieces_text(pieces: list[str]) -> str:
    """Tokens of a term as one line of text: ' to|k|am' with whitespace visible."""
    return "|".join(visible(p) for p in pieces)


# ----------------------------------------------------------------------------- frames
def summary_frame(result: CompareResult) -> pd.DataFrame:
    rows = []
    for m in result.models:
        f = m.features
        gap = (m.mean_surprisal_terms - m.mean_surprisal_other
               if m.mean_surprisal_terms is not None and m.mean_surprisal_other is not None else None)
        rows.append({
            "model": _name(m),
            "id": m.model,
            "tokens per term": _r(m.mean_tokens_per_term, 2),
            "tokens per word": _r(m.mean_tokens_per_word, 2),
            "bits/token on terms": _r(m.mean_surprisal_terms),
            "bits/token elsewhere": _r(m.mean_surprisal_other),
            "gap (terms − other)": _r(gap),
            "SAE layer": (f"{f.sae_set} L{f.layer} (depth {f.relative_depth:.2f})" if f
                          else (m.features_note or "—")),
            "features on terms": f.n_active_on_terms if f else None,
            "specific (top k)": f"{f.n_specific} of {len(f.features)}" if f else None,
            "specific (all)": f.n_specific_all if f else None,
            "vocabulary": m.d_vocab,
            "layers": m.n_layers,
        })
    return pd.DataFrame(rows)


def terms_frame(result: CompareResult) -> pd.DataFrame:
    """One row per (model, term): tokenization and surprisal; absent terms say so."""
    rows = []
    for m in result.models:
        summaries = {s.term: s for s in m.term_summaries}
        for tt in m.terms:
            s = summaries.get(tt.term)
            present = bool(s and s.present)
            rows.append({
                "model": _name(m),
                "term": tt.term,
                "pieces": pieces_text(tt.pieces),
                "tokens": tt.n_tokens,
                "tokens per word": round(tt.tokens_per_word, 2),
                "at text start": pieces_text(tt.pieces_initial),
                "found": f"{s.n_occurrences}× in sentence(s) {', '.join(str(i + 1) for i in s.sentences)}"
                         if present else ABSENT,
                "bits (whole term)": _r(s.mean_bits) if present else None,
                "bits per token": _r(s.mean_bits_per_token) if present else None,
            })
    return pd.DataFrame(rows)


def terms_side_by_side(result: CompareResult) -> pd.DataFrame:
    """One row per term, models side by side: their pieces and the bits to read the term."""
    rows = []
    for term in result.domain_terms:
        row: dict[str, object] = {"term": term}
        for m in result.models:
            tt = next((t for t in m.terms if t.term == term), None)
            s = next((x for x in m.term_summaries if x.term == term), None)
            name = _name(m)
            row[f"{name} · pieces"] = f"{pieces_text(tt.pieces)}  ({tt.n_tokens})" if tt else ""
            row[f"{name} · bits"] = f"{s.mean_bits:.1f}" if s and s.present and s.mean_bits is not None \
                else ABSENT
        rows.append(row)
    return pd.DataFrame(rows)


def tokens_frame(result: CompareResult) -> pd.DataFrame:
    rows = []
    for m in result.models:
        for sr in m.sentences:
            for p, tok in enumerate(sr.tokens):
                rows.append({
                    "model": m.model, "sentence": sr.index + 1, "position": p, "token": tok.text,
                    "token_id": tok.id, "special": tok.special,
                    "start": sr.offsets[p][0] if p < len(sr.offsets) else None,
                    "end": sr.offsets[p][1] if p < len(sr.offsets) else None,
                    "surprisal_bits": _r(sr.surprisal_bits[p], 4),
                    "model_guess": sr.predicted[p] if p < len(sr.predicted) else None,
                    "term": sr.term_of[p] if p < len(sr.term_of) else None,
                })
    return pd.DataFrame(rows)


def guesses_frame(result: CompareResult) -> pd.DataFrame:
    rows = []
    for m in result.models:
        for sr in m.sentences:
            for o in sr.occurrences:
                rows.append({
                    "model": _name(m),
                    "sentence": sr.index + 1,
                    "term": o.term,
                    "came": visible(o.actual) if o.actual is not None else "—",
                    "p(came)": _r(o.actual_prob, 4),
                    "rank": o.actual_rank,
                    "model's guesses": "  ".join(f"{visible(g.token)} {g.prob:.3f}" for g in o.guesses)
                                       or "— (first token: nothing predicts it)",
                    "bits": _r(o.bits),
                    "tokens here": pieces_text(o.pieces),
                    "shares a token": o.partial,
                })
    return pd.DataFrame(rows)


def features_frame(result: CompareResult, *, specific_only: bool = False) -> pd.DataFrame:
    rows = []
    for m in result.models:
        f = m.features
        if f is None:
            continue
        for feat in (f.specific_features if specific_only else f.features):
            rows.append({
                "model": _name(m), "sae_set": f.sae_set, "layer": f.layer, "feature": feat.index,
                "mean on terms": round(feat.mean_on_terms, 4), "max on terms": round(feat.max_on_terms, 4),
                "fires on terms": round(feat.term_rate, 3),
                "fires elsewhere": _r(feat.other_rate),
                "specific": feat.specific, "terms": ", ".join(feat.terms), "density": feat.density,
                "explanation": feat.explanation or "", "neuronpedia": feat.neuronpedia_url,
            })
    return pd.DataFrame(rows, columns=FEATURE_COLUMNS)


def exports(result: CompareResult) -> dict[str, tuple[str, bytes, str]]:
    """label -> (file name, bytes, mime type) for every download the page offers."""
    def csv(frame: pd.DataFrame) -> bytes:
        buf = io.StringIO()
        frame.to_csv(buf, index=False)
        return buf.getvalue().encode("utf-8")

    return {
        "All (JSON)": ("compare.json", json.dumps(result.model_dump(mode="json"), indent=1).encode(),
                              "application/json"),
        "Summary CSV": ("compare-summary.csv", csv(summary_frame(result)), "text/csv"),
        "Terms CSV": ("compare-terms.csv", csv(terms_frame(result)), "text/csv"),
        "Tokens CSV": ("compare-tokens.csv", csv(tokens_frame(result)), "text/csv"),
        "Guesses CSV": ("compare-guesses.csv", csv(guesses_frame(result)), "text/csv"),
        "Features CSV": ("compare-features.csv", csv(features_frame(result)), "text/csv"),
    }


# ----------------------------------------------------------------------------- charts
def _layout(fig: go.Figure, y_title: str) -> go.Figure:
    fig.update_layout(barmode="group", height=380, margin=dict(l=10, r=10, t=40, b=10), yaxis_title=y_title,
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0.0, xanchor="left"),
                      bargap=0.25, uniformtext=dict(minsize=9, mode="hide"))
    return fig


def term_surprisal_figure(result: CompareResult) -> go.Figure:
    """Bits to read each whole term (with its leading space), per model: comparable across
    tokenizers. Absent terms get no bar and an 'absent' mark."""
    terms = result.domain_terms
    x = [plot_text(t) for t in terms]
    fig = go.Figure()
    for j, m in enumerate(result.models):
        by = {s.term: s for s in m.term_summaries}
        y = [by[t].mean_bits if t in by and by[t].present else None for t in terms]
        fig.add_trace(go.Bar(
            x=x, y=y, name=plot_text(_name(m)), marker_color=PALETTE[j % len(PALETTE)],
            text=[f"{v:.1f}" if v is not None else "" for v in y], textposition="outside",
            customdata=[[by[t].mean_bits_per_token if t in by and by[t].present else None] for t in terms],
            hovertemplate="%{x}<br>%{y:.2f} bits (%{customdata[0]:.2f} per token)"
                          "<extra>%{fullData.name}</extra>",
        ))
    absent = [plot_text(t) for t in terms
              if all(not s.present for m in result.models for s in m.term_summaries if s.term == t)]
    for label in absent:
        fig.add_annotation(x=label, y=0, text=ABSENT, showarrow=False, yshift=10, font=dict(color="#888"))
    return _layout(fig, "bits for the whole term")


def fragmentation_figure(result: CompareResult) -> go.Figure:
    """Tokens per term, per model, with each model's mean tokens per word in the legend."""
    terms = result.domain_terms
    x = [plot_text(t) for t in terms]
    fig = go.Figure()
    for j, m in enumerate(result.models):
        by = {t.term: t for t in m.terms}
        y = [by[t].n_tokens if t in by else None for t in terms]
        mean = f" — {m.mean_tokens_per_word:.2f} tokens/word" if m.mean_tokens_per_word is not None else ""
        fig.add_trace(go.Bar(
            x=x, y=y, name=plot_text(_name(m) + mean), marker_color=PALETTE[j % len(PALETTE)],
            text=[str(v) if v is not None else "" for v in y], textposition="outside",
            customdata=[[plot_label(pieces_text(by[t].pieces))] if t in by else [""] for t in terms],
            hovertemplate="%{x}: %{y} token(s)<br>%{customdata[0]}<extra>%{fullData.name}</extra>",
        ))
    fig.update_yaxes(dtick=1, rangemode="tozero")
    return _layout(fig, "tokens")


# ----------------------------------------------------------------------------- renderers
def render_glance(result: CompareResult) -> None:
    """One card per model, side by side: the figures a screenshot should carry."""
    cols = st.columns(len(result.models))
    for col, m in zip(cols, result.models):
        with col.container(border=True):
            st.markdown(f"**{_name(m)}**")
            st.caption(f"`{m.model}` · {m.n_layers} layers · vocabulary {m.d_vocab:,}")
            a, b = st.columns(2)
            per_word = "—" if m.mean_tokens_per_word is None else f"{m.mean_tokens_per_word:.2f}"
            a.metric("Tokens per word", per_word,
                     help="Fragmentation of the domain terms: their tokens over their words.")
            if m.mean_surprisal_terms is not None and m.mean_surprisal_other is not None:
                gap = m.mean_surprisal_terms - m.mean_surprisal_other
                b.metric("Bits/token on terms", f"{m.mean_surprisal_terms:.2f}", delta=f"{gap:+.2f} vs other",
                         delta_color="inverse",
                         help="Mean surprisal on domain-term tokens; the delta compares it with every other "
                              "token of the sentences.")
            else:
                b.metric("Bits/token on terms", "—" if m.mean_surprisal_terms is None else
                         f"{m.mean_surprisal_terms:.2f}", help="No domain term occurs in the sentences.")
            f = m.features
            if f is not None:
                st.caption(f"SAE {f.sae_set_name}, layer {f.layer} (depth {f.relative_depth:.2f}): "
                           f"{f.n_active_on_terms} features fire on the terms; **{f.n_specific} of the top "
                           f"{len(f.features)}** are specific to them ({f.n_specific_all} in all).")
            elif m.features_note:
                st.caption(m.features_note)


def dashboard_url(model: str, sae_set: str, layer: int, index: int) -> str:
    """The feature browser's URL for one feature (relative: the app may live under a base path)."""
    return "features?" + urlencode({"model": model, "sae_set": sae_set, "feature": f"{layer}:{index}"}, safe=":")


def render_features(result: CompareResult, *, specific_only: bool, key: str,
                    dense_threshold: float | None = None) -> None:
    """Per model, the features on the terms; those dense above `dense_threshold` left out (counted)."""
    cols = st.columns(len(result.models))
    for j, (col, m) in enumerate(zip(cols, result.models)):
        with col:
            st.markdown(f"**{_name(m)}**")
            f = m.features
            if f is None:
                st.caption(m.features_note or "No features.")
                continue
            st.caption(f"{f.sae_set_name} · layer {f.layer} · `{f.hook_name}` · {f.d_sae:,} features · "
                       f"{f.n_term_tokens} term tokens, {f.n_other_tokens} other tokens. Specific: fires on "
                       f"terms and on at most {f.specific_max_other_rate:.0%} of the other tokens.")
            one = CompareResult(models=[m], sentences=result.sentences, domain_terms=result.domain_terms)
            frame = features_frame(one, specific_only=specific_only)
            hidden = ~pd.Series(dense.keep(frame["density"], frame["explanation"], dense_threshold),
                                index=frame.index, dtype=bool)
            dense.hidden_note(int(hidden.sum()), dense_threshold)
            frame = frame[~hidden].reset_index(drop=True)
            if frame.empty:
                st.caption("No feature fires on the domain-term tokens." if not specific_only else
                           "No feature is specific to the terms at this threshold.")
                continue
            shown = frame.drop(columns=["model", "sae_set", "layer"])
            # Each feature id opens its dashboard (the link names the model and the dictionary).
            shown.insert(0, "dashboard", [dashboard_url(m.model, f.sae_set, f.layer, int(i)) for i in frame["feature"]])
            st.dataframe(
                shown, hide_index=True, width="stretch",
                key=f"{key}_{j}",
                column_config={
                    "mean on terms": st.column_config.ProgressColumn(
                        "mean on terms", format="%.3f", min_value=0.0,
                        max_value=float(frame["mean on terms"].max() or 1.0)),
                    "fires on terms": st.column_config.NumberColumn(format="percent"),
                    "fires elsewhere": st.column_config.NumberColumn(format="percent"),
                    "specific": st.column_config.CheckboxColumn("specific"),
                    "density": dense.column(),
                    "dashboard": st.column_config.LinkColumn(
                        "feature", display_text=r"feature=(\d+:\d+)", help="Open the feature's dashboard"),
                    "neuronpedia": st.column_config.LinkColumn("Neuronpedia", display_text="open ↗"),
                    "explanation": st.column_config.TextColumn("explanation", width="medium"),
                },
            )


def render_exports(result: CompareResult, *, key: str) -> None:
    files = exports(result)
    cols = st.columns(len(files))
    for i, (col, (label, (name, data, mime))) in enumerate(zip(cols, files.items())):
        col.download_button(label, data=data, file_name=name, mime=mime, key=f"{key}_{i}",
                            icon=":material/download:", on_click="ignore")
