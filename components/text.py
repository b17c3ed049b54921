"""How model tokens are written in tables and plots: whitespace visible, markup escaped."""

from __future__ import annotations

import html

_VISIBLE = str.maketrans({" ": "·", "\n": "↵", "\t": "→", "\r": "␍"})


def visible(token: str) -> str:
    """The token with its whitespace drawn (for tables, which show text as text)."""
    return token.translate(_VISIBLE)


def plot_label(token: str, position: int | None = None) -> str:
    """A label for plotly, which interprets a little HTML: visible whitespace, then escaped."""
    text = html.escape(visible(token), quote=True)
    return text if position is None else f"{position}: {text}"


def plot_text(text: str) -> str:
    """Words (a term, a model name) for plotly: escaped, spaces kept as spaces."""
    return html.escape(text, quote=True)
