"""Sentences side by side, one strip per model, each token tinted by its surprisal.

Every model's strip uses the same colour scale (0 bits to the largest surprisal shown), so a
darker token is a more surprising one whichever model read it. Domain-term tokens are underlined.
Hovering a token shows its surprisal, the model's own guess for that position and the term it
belongs to. Tokens travel as data and are written with `textContent`, never as HTML.
"""

from __future__ import annotations

import streamlit as st

from backend.schemas import CompareResult

_CSS = """
.fs-cmp { font-size: 0.95rem; }
.fs-cmp-legend { display: flex; align-items: center; gap: .6rem; font-size: .8rem; color: #666;
                 margin: .1rem 0 .6rem 0; flex-wrap: wrap; }
.fs-cmp-scale { width: 11rem; height: .7rem; border-radius: 3px;
                background: linear-gradient(to right, #ffffff, #ffeda0, #feb24c, #f03b20, #bd0026);
                border: 1px solid rgba(128,128,128,.3); }
.fs-cmp-termkey { border-bottom: 3px solid #1f77b4; padding: 0 .2rem; }
.fs-cmp-sent { border: 1px solid rgba(128,128,128,.25); border-radius: 8px; padding: .45rem .7rem;
               margin-bottom: .6rem; }
.fs-cmp-head { font-weight: 600; margin-bottom: .3rem; }
.fs-cmp-head .absent { font-weight: 400; color: #888; font-size: .8rem; margin-left: .5rem; }
.fs-cmp-row { display: grid; grid-template-columns: 11rem minmax(0, 1fr) 10rem;
              gap: .6rem; align-items: baseline; padding: .15rem 0;
              border-top: 1px dashed rgba(128,128,128,.18); }
.fs-cmp-row:first-of-type { border-top: none; }
.fs-cmp-model { font-size: .82rem; color: #555; font-weight: 600; overflow: hidden; text-overflow: ellipsis; }
.fs-cmp-strip { line-height: 2.05; }
.fs-cmp-tok { padding: .08rem .03rem; margin: 0 .5px; border-radius: 3px; white-space: pre;
              border-bottom: 3px solid transparent; cursor: default; }
.fs-cmp-tok.term { border-bottom-color: #1f77b4; font-weight: 600; }
.fs-cmp-tok.special { color: #999; font-style: italic; font-size: .72rem; }
.fs-cmp-ws { color: #aaa; }
.fs-cmp-stat { font-size: .78rem; color: #666; font-variant-numeric: tabular-nums; text-align: right;
               white-space: normal; }
"""

_HTML = '<div class="fs-cmp"><div class="fs-cmp-legend"></div><div class="fs-cmp-body"></div></div>'

_JS = """
export default function(component) {
  const { data, parentElement } = component;
  const legend = parentElement.querySelector('.fs-cmp-legend');
  const body = parentElement.querySelector('.fs-cmp-body');
  legend.textContent = '';
  body.textContent = '';
  const max = data.max_bits > 0 ? data.max_bits : 1;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function writeVisible(text, span) {
    for (const ch of Array.from(text)) {
      if (ch === ' ' || ch === '\\n' || ch === '\\t') {
        span.appendChild(el('span', 'fs-cmp-ws', ch === ' ' ? '\\u00b7' : (ch === '\\n' ? '\\u21b5' : '\\u2192')));
      } else {
        span.appendChild(document.createTextNode(ch));
      }
    }
  }
  // Sequential ramp (white -> yellow -> orange -> red), the same for every model.
  const STOPS = [[255, 255, 255], [255, 237, 160], [254, 178, 76], [240, 59, 32], [189, 0, 38]];
  function ramp(a) {
    const x = a * (STOPS.length - 1);
    const i = Math.min(Math.floor(x), STOPS.length - 2);
    const f = x - i;
    const c = STOPS[i].map((v, j) => Math.round(v + f * (STOPS[i + 1][j] - v)));
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }
  legend.appendChild(el('span', '', '0 bits'));
  legend.appendChild(el('span', 'fs-cmp-scale'));
  legend.appendChild(el('span', '', `${Number(data.max_bits).toFixed(1)} bits (surprisal, same scale for every model)`));
  legend.appendChild(el('span', 'fs-cmp-termkey', 'domain term'));
  legend.appendChild(el('span', '', 'Hover a token for its surprisal and the model\\'s own guess.'));

  data.sentences.forEach((sent) => {
    const box = el('div', 'fs-cmp-sent');
    const head = el('div', 'fs-cmp-head', `${sent.index + 1}. ${sent.text}`);
    if (sent.absent.length) head.appendChild(el('span', 'absent', `absent: ${sent.absent.join(', ')}`));
    box.appendChild(head);
    sent.rows.forEach((row) => {
      const line = el('div', 'fs-cmp-row');
      line.appendChild(el('div', 'fs-cmp-model', row.model));
      const strip = el('div', 'fs-cmp-strip');
      row.tokens.forEach((tok, i) => {
        const span = el('span', 'fs-cmp-tok' + (tok.term !== null ? ' term' : '') + (tok.s ? ' special' : ''));
        writeVisible(tok.t, span);
        if (tok.b !== null) {
          const a = Math.max(0, Math.min(1, tok.b / max));
          span.style.backgroundColor = ramp(a);
          if (a > 0.8) span.style.color = '#fff';
        }
        const parts = [`#${i} ${JSON.stringify(tok.t)}`];
        parts.push(tok.b === null ? 'no prediction (first token)' : `${tok.b.toFixed(2)} bits`);
        if (tok.g !== null) parts.push(`model expected ${JSON.stringify(tok.g)}`);
        if (tok.term !== null) parts.push(`term: ${tok.term}`);
        span.title = parts.join(' \\u00b7 ');
        strip.appendChild(span);
      });
      line.appendChild(strip);
      line.appendChild(el('div', 'fs-cmp-stat', row.stat));
      box.appendChild(line);
    });
    body.appendChild(box);
  });
}
"""

_component = st.components.v2.component("featurescope.surprisal_view", html=_HTML, css=_CSS, js=_JS)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _stat(term_bits: list[float], other_bits: list[float]) -> str:
    t, o = _mean(term_bits), _mean(other_bits)
    if t is None:
        return f"other {o:.1f} bits/tok" if o is not None else ""
    return f"terms {t:.1f} · other {o:.1f} bits/tok" if o is not None else f"terms {t:.1f} bits/tok"


def surprisal_view_data(result: CompareResult) -> dict:
    """The plain data the view renders (also what tests inspect)."""
    sentences = []
    peak = 0.0
    for i, text in enumerate(result.sentences):
        rows = []
        absent: list[str] = []
        for m in result.models:
            sr = m.sentences[i]
            tokens = []
            term_bits, other_bits = [], []
            for p, tok in enumerate(sr.tokens):
                bits = sr.surprisal_bits[p]
                owner = sr.term_of[p] if p < len(sr.term_of) else None
                if bits is not None and not tok.special:
                    peak = max(peak, bits)
                    (term_bits if owner is not None else other_bits).append(bits)
                tokens.append({"t": tok.text, "s": tok.special, "b": None if bits is None else round(bits, 3),
                               "g": sr.predicted[p] if p < len(sr.predicted) else None, "term": owner})
            rows.append({"model": m.display_name or m.model, "tokens": tokens,
                         "stat": _stat(term_bits, other_bits)})
            absent = sr.absent_terms
        sentences.append({"index": i, "text": text, "rows": rows, "absent": absent})
    return {"sentences": sentences, "max_bits": round(peak, 3)}


def render_surprisal_view(data: dict, *, key: str) -> None:
    _component(data=data, key=key)
