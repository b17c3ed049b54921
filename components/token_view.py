"""The token strip: tokens tinted by a feature's activation, with their top features on hover.

Tokens travel as data and are written with `textContent`, never as HTML, so a vocabulary entry
such as `<script>` is shown as text. Whitespace is made visible (· for spaces, ↵ for newlines,
→ for tabs). Hovering a token lists its top features; hovering one of those tints every token by
that feature (a preview); clicking it selects the feature, which returns to Python.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from backend.schemas import AnalyzeResult

_CSS = """
.fs-strip { line-height: 2.1; font-size: 0.95rem; position: relative; padding: 0.25rem 0; }
.fs-tok { padding: 0.1rem 0.05rem; margin: 0 0.5px; border-radius: 3px; cursor: default;
          border-bottom: 2px solid transparent; white-space: pre; }
.fs-tok.special { color: #888; font-style: italic; }
.fs-tok:hover { border-bottom-color: #444; }
.fs-ws { color: #aaa; }
.fs-tip { position: absolute; z-index: 10; background: var(--st-background-color, #fff);
          color: var(--st-text-color, #222); border: 1px solid #ccc; border-radius: 6px;
          padding: 0.35rem 0.5rem; font-size: 0.8rem; line-height: 1.4; min-width: 14rem;
          max-width: 28rem; box-shadow: 0 2px 8px rgba(0,0,0,.15); display: none; }
.fs-tip .head { font-weight: 600; margin-bottom: 0.2rem; white-space: pre; }
.fs-tip .feat { cursor: pointer; padding: 0.05rem 0.2rem; border-radius: 3px; display: flex; gap: .5rem; }
.fs-tip .feat:hover { background: rgba(255, 140, 0, 0.18); }
.fs-tip .act { font-variant-numeric: tabular-nums; min-width: 3.5rem; text-align: right; }
.fs-tip .id { font-family: monospace; min-width: 5rem; }
.fs-tip .expl { color: #666; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.fs-legend { font-size: 0.8rem; color: #666; margin-bottom: 0.2rem; }
"""

_HTML = '<div class="fs-legend"></div><div class="fs-strip"></div>'

_JS = """
export default function(component) {
  const { data, parentElement, setTriggerValue } = component;
  const strip = parentElement.querySelector('.fs-strip');
  const legend = parentElement.querySelector('.fs-legend');
  strip.textContent = '';
  const spans = [];

  function visible(text, span) {
    // Write the token as text nodes, making whitespace visible.
    for (const ch of Array.from(text)) {
      if (ch === ' ' || ch === '\\n' || ch === '\\t') {
        const w = document.createElement('span');
        w.className = 'fs-ws';
        w.textContent = ch === ' ' ? '\\u00b7' : (ch === '\\n' ? '\\u21b5' : '\\u2192');
        span.appendChild(w);
      } else {
        span.appendChild(document.createTextNode(ch));
      }
    }
  }
  function tint(values, max) {
    spans.forEach((s, i) => {
      const v = values ? (values[i] || 0) : 0;
      const a = max > 0 ? Math.max(0, Math.min(1, v / max)) : 0;
      s.style.backgroundColor = a > 0 ? `rgba(255, 140, 0, ${(0.08 + 0.8 * a).toFixed(3)})` : '';
      s.title = values ? `${data.selected_label || ''} ${v.toFixed(3)}` : '';
    });
  }
  function previewValues(key) {
    return data.features.map(list => {
      const hit = list.find(f => `${f[0]}:${f[1]}` === key);
      return hit ? hit[2] : 0;
    });
  }
  function showSelected() {
    tint(data.values, data.max);
    legend.textContent = data.selected_label
      ? `Tinted by ${data.selected_label} (max ${Number(data.max).toFixed(3)}). Hover a token for its top features; click one to select it.`
      : 'Hover a token for its top features; click one to select it.';
  }

  const tip = document.createElement('div');
  tip.className = 'fs-tip';
  strip.appendChild(tip);
  let hideTimer = null;
  tip.addEventListener('mouseenter', () => clearTimeout(hideTimer));
  tip.addEventListener('mouseleave', () => { tip.style.display = 'none'; showSelected(); });

  data.tokens.forEach((tok, i) => {
    const span = document.createElement('span');
    span.className = 'fs-tok' + (tok.s ? ' special' : '');
    span.dataset.pos = String(i);
    visible(tok.t, span);
    if (tok.t.includes('\\n')) { strip.appendChild(span); strip.appendChild(document.createElement('br')); }
    else { strip.appendChild(span); }
    spans.push(span);
    span.addEventListener('mouseenter', () => {
      clearTimeout(hideTimer);
      tip.textContent = '';
      const head = document.createElement('div');
      head.className = 'head';
      head.textContent = `#${i} ${JSON.stringify(tok.t)}`;
      tip.appendChild(head);
      const feats = data.features[i] || [];
      if (!feats.length) {
        const none = document.createElement('div');
        none.textContent = 'no active features';
        tip.appendChild(none);
      }
      feats.forEach(f => {
        const row = document.createElement('div');
        row.className = 'feat';
        const id = document.createElement('span'); id.className = 'id'; id.textContent = `${f[0]}:${f[1]}`;
        const act = document.createElement('span'); act.className = 'act'; act.textContent = Number(f[2]).toFixed(2);
        const ex = document.createElement('span'); ex.className = 'expl'; ex.textContent = f[3] || '';
        row.append(id, act, ex);
        row.addEventListener('mouseenter', () => {
          const vals = previewValues(`${f[0]}:${f[1]}`);
          tint(vals, Math.max(...vals, 1e-9));
          legend.textContent = `Preview: ${f[0]}:${f[1]}${f[3] ? ' — ' + f[3] : ''} (click to select)`;
        });
        row.addEventListener('click', () => setTriggerValue('select', `${f[0]}:${f[1]}`));
        tip.appendChild(row);
      });
      tip.style.left = `${Math.min(span.offsetLeft, Math.max(0, strip.clientWidth - 300))}px`;
      tip.style.top = `${span.offsetTop + span.offsetHeight + 2}px`;
      tip.style.display = 'block';
    });
    span.addEventListener('mouseleave', () => {
      hideTimer = setTimeout(() => { tip.style.display = 'none'; showSelected(); }, 250);
    });
  });
  showSelected();
}
"""

_component = st.components.v2.component("featurescope.token_view", html=_HTML, css=_CSS, js=_JS)


def token_view_data(result: AnalyzeResult, layers: Sequence[int], selected: tuple[int, int] | None,
                    selected_values: Sequence[float] | None, selected_label: str | None,
                    scale_positions: Sequence[int] | None = None) -> dict:
    """The plain data the strip renders (also what tests inspect). The tint's full strength is the
    selected feature's peak over `scale_positions` (None: every token), so a BOS spike left out of
    the tables does not wash out the text."""
    by_layer = {lt.layer: lt for lt in result.layers if lt.layer in layers}
    features = []
    for pos in range(len(result.tokens)):
        row = [[layer, index, round(value, 4), lt.explanations.get(index, "")]
               for layer, lt in by_layer.items()
               for index, value in zip(lt.indices[pos], lt.values[pos])]
        row.sort(key=lambda f: -f[2])
        features.append(row[:12])
    values = list(selected_values) if selected_values is not None else None
    return {
        "tokens": [{"t": t.text, "s": t.special} for t in result.tokens],
        "features": features,
        "values": values,
        "max": max([v for p, v in enumerate(values or [])
                    if v > 0 and (scale_positions is None or p in scale_positions)] or [0.0]),
        "selected": None if selected is None else f"{selected[0]}:{selected[1]}",
        "selected_label": selected_label,
    }


def render_token_view(data: dict, *, key: str) -> str | None:
    """Show the strip; returns 'layer:index' when the user clicks a feature, else None."""
    result = _component(data=data, key=key, on_select_change=lambda: None)
    return getattr(result, "select", None) if result is not None else None
