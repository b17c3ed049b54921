"""Hiding dense features (those that fire on a large share of all tokens, and so say little about a
text) in the highlighter, the search hits and compare: a switch, on by default, a threshold, and
the number hidden always shown.

A feature's density is data from the backend: the `density` of a search hit, a compare feature or
a tracked feature, and `LayerTopK.densities` (parallel to the top-k indices) in an analysis; it is
the corpus store's count / tokens, else the demo pack's statistics (`backend/local/density.py`).
Only where the field is None (a remote service older than the field, or the demo pack before it
shipped statistics and before its corpus store is built) does the demo explanations' note
"(dense: fires on 20% of tokens)" stand in for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import streamlit as st

_NOTE = re.compile(r"dense: fires on (\d+(?:\.\d+)?)% of tokens")
DEFAULT_THRESHOLD = 0.10


def noted_density(explanation: str | None) -> float | None:
    """The share of tokens the feature fires on, as the demo pack's explanation note states it."""
    m = _NOTE.search(explanation or "")
    return float(m.group(1)) / 100 if m else None


def density(value: float | None, explanation: str | None = None) -> float | None:
    """The feature's density: the backend's field, else (older services and packs) the note."""
    if value is not None and value == value:  # NaN (a missing cell in a frame) counts as unknown
        return float(value)
    return noted_density(explanation)


def is_dense(value: float | None, threshold: float | None, explanation: str | None = None) -> bool:
    d = density(value, explanation)
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


def keep(densities: Iterable[float | None], explanations: Iterable[str | None],
         threshold: float | None) -> list[bool]:
    """Per row, whether it stays shown (not dense at `threshold`)."""
    return [not is_dense(d, threshold, e) for d, e in zip(densities, explanations, strict=True)]


def column(**extra: object):
    """The column config of a density column (a share, shown as a percentage)."""
    return st.column_config.NumberColumn("density", format="percent",
                                         help="Share of corpus tokens the feature fires on (empty: not known).",
                                         **extra)
