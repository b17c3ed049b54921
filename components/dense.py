"""Hiding dense features (those that fire on a large share of all tokens, and so say little about a
text) in the highlighter, the search hits and compare: a switch, on by default, a threshold, and
the number hidden always shown.

A feature's density comes from its explanation: the demo pack's explanations end with
"(dense: fires on 20% of tokens)" for every feature above 10% of its sample.
TODO(density): analyze/search/compare results carry no density field yet; when they do, read it
here instead of the explanation's note.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import streamlit as st

_NOTE = re.compile(r"dense: fires on (\d+(?:\.\d+)?)% of tokens")
DEFAULT_THRESHOLD = 0.10


def density(explanation: str | None) -> float | None:
    """The share of tokens the feature fires on, as its explanation states it, else None."""
    m = _NOTE.search(explanation or "")
    return float(m.group(1)) / 100 if m else None


def is_dense(explanation: str | None, threshold: float | None) -> bool:
    d = density(explanation)
    return threshold is not None and d is not None and d >= threshold


def render_filter(*, key: str) -> float | None:
    """The switch and threshold; returns the threshold, or None when dense features are shown."""
    c1, c2, _ = st.columns([1.2, 0.9, 3], vertical_alignment="bottom")
    on = c1.toggle("Hide dense features", value=True, key=f"{key}_on",
                   help="Features that fire on a large share of all tokens say little about this text.")
    pct = c2.number_input("Dense from (% of tokens)", 1, 100, int(DEFAULT_THRESHOLD * 100), step=1,
                          key=f"{key}_pct", disabled=not on)
    return pct / 100 if on else None


def hidden_note(n_hidden: int, threshold: float | None) -> None:
    if threshold is not None and n_hidden:
        st.caption(f"{n_hidden} dense feature(s) hidden (firing on ≥ {threshold:.0%} of tokens); switch "
                   "*Hide dense features* off to show them.")


def keep(explanations: Iterable[str | None], threshold: float | None) -> list[bool]:
    return [not is_dense(e, threshold) for e in explanations]
