"""How model tokens are written in tables and plots: whitespace visible, markup escaped."""

from __future__ import annotations

import html

_VISIBLE = str.maketrans({" ": "·", "\n": "↵", "\t": "→", "\r": "␍"})


def visible(token: str) -> str:
    """The token with its whitespace drawn (for tables, which show text as text)."""
    return token.translate(_VISIBLE)


def _plot_escape(text: str) -> str:
    """Escaped once for plotly, which reads a little HTML (tags, and only a few named entities: it
    would show `&quot;` as written), so only `&`, `<` and `>` are escaped; quotes stay quotes."""
    return html.escape(text, quote=False)


def plot_label(token: str, position: int | None = None) -> str:
    """A model token as a plotly label: visible whitespace (the explicit display choice for
    tokens), escaped once."""
    text = _plot_escape(visible(token))
    return text if position is None else f"{position}: {text}"


def plot_text(text: str) -> str:
    """Words (a title, a term, a model name, an explanation) for plotly: escaped once, spaces kept."""
    return _plot_escape(text)
