"""One typed state object per page: what the user typed and chose, kept across reruns, sidebar
navigation and browser Back/Forward, and in agreement with the URL.

A page declares a dataclass deriving from `PageState` with its fields, which of them the URL
carries (`URL`: field -> query parameter), and how a URL value is read (`from_url`). Then:

    s = HighlighterState.load()                  # session copy, updated by URL news
    text = st.text_area("Text", key=s.bind("text"))
    s.text = text                                # or s.take("text")
    s.save_url()                                 # the URL follows the state

Widgets are given keys derived from the field (`<prefix>.<field>`); Streamlit forgets a widget's
value when a run does not draw it (another page), so `bind` puts the state's value back first.
URL news (a link, an edited URL, Back/Forward to another view) is a URL value that differs from
what this page last wrote there; news wins over the session's copy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self

import streamlit as st

from components import state

URL_VALUE_LIMIT = 1500  # longer values (texts) stay out of the URL


@dataclasses.dataclass
class PageState:
    PREFIX: ClassVar[str] = ""
    URL: ClassVar[dict[str, str]] = {}

    @classmethod
    def _slot(cls) -> str:
        return f"_page_state::{cls.PREFIX}"

    @classmethod
    def from_url(cls, field: str, raw: str) -> Any:
        """The field's value read from its URL parameter; raise ValueError when it does not parse."""
        kind = {f.name: f.type for f in dataclasses.fields(cls)}[field]
        if "int" in str(kind) and "float" not in str(kind):
            return int(raw)
        if "float" in str(kind):
            return float(raw)
        return raw

    @staticmethod
    def url_value(name: str) -> str | None:
        """The URL's parameter now (the sidebar rewrites `model` and `sae_set` before a page runs, so
        those two are read as the run found them)."""
        if name in ("model", "sae_set"):
            return state.query_param_at_start(name)
        return state.query_param(name)

    @classmethod
    def load(cls) -> Self:
        """This session's state for the page, with any URL news applied."""
        obj = st.session_state.get(cls._slot())
        if not isinstance(obj, cls):
            # None on a first visit; or an object of this class from before its module was
            # reloaded (Streamlit reloads changed sources): its values carry over.
            old = vars(obj) if type(obj).__name__ == cls.__name__ else {}
            obj = cls(**{f.name: old[f.name] for f in dataclasses.fields(cls) if f.name in old})
            obj._wrote = dict(old.get("_wrote", {}))
            st.session_state[cls._slot()] = obj
        obj.apply_url()
        return obj

    def apply_url(self) -> list[str]:
        """Adopt URL values that are news; returns the fields that changed."""
        changed = []
        for field, name in self.URL.items():
            raw = self.url_value(name)
            if raw is None or raw == self._wrote.get(name):
                continue
            try:
                value = self.from_url(field, raw)
            except (ValueError, TypeError):
                continue
            self._wrote[name] = raw  # seen: the same URL value is not news again
            if value != getattr(self, field):
                setattr(self, field, value)
                st.session_state.pop(self.key(field), None)  # the widget shows the new value
                changed.append(field)
        return changed

    def key(self, field: str) -> str:
        return f"{self.PREFIX}.{field}"

    def bind(self, field: str, *, suffix: str = "") -> str:
        """The widget key for `field`, holding the state's value (restored after navigation)."""
        key = self.key(field) + suffix
        if key not in st.session_state:
            st.session_state[key] = getattr(self, field)
        return key

    def take(self, field: str, value: Any) -> Any:
        setattr(self, field, value)
        return value

    def to_url(self, field: str) -> str | None:
        value = getattr(self, field)
        if value is None:
            return None
        text = str(value)
        return text if len(text) <= URL_VALUE_LIMIT else None

    def save_url(self, *fields: str) -> None:
        """Write the URL fields (all, or those named) from the state."""
        values = {}
        for field in fields or tuple(self.URL):
            name = self.URL[field]
            values[name] = self.to_url(field)
            self._wrote[name] = values[name]
        state.set_query_params(**values)


DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog. In 1905, Einstein published four papers."
DEFAULT_PROMPT = "The weather today is"


@dataclasses.dataclass
class HighlighterState(PageState):
    """Text highlighter: the text, which layers, k, tracked features, the selected feature."""

    PREFIX: ClassVar[str] = "hl"
    URL: ClassVar[dict[str, str]] = {"text": "text", "layer": "layer", "k": "k", "selected": "feature"}

    text: str = DEFAULT_TEXT
    all_layers: bool = False
    layer: int | None = None
    k: int = 10
    track: str = ""
    selected: str | None = None  # "layer:index"
    analysed: bool = False
    run: int = 0  # counts analyses: the table's selection belongs to one analysis

    @classmethod
    def from_url(cls, field: str, raw: str) -> Any:
        if field == "layer":
            return None if raw == "all" else int(raw)
        if field == "k":
            return int(raw)
        return raw

    def apply_url(self) -> list[str]:
        raw = self.url_value("layer")
        news = raw is not None and raw != self._wrote.get("layer")
        changed = super().apply_url()
        if news:
            self.all_layers = raw == "all"
            st.session_state.pop(self.key("all_layers"), None)
        if "text" in changed or ("text" in self.URL and self.url_value("text") and not self.analysed):
            self.analysed = True  # a shared view opens analysed
        return changed

    def to_url(self, field: str) -> str | None:
        if field == "layer":
            return "all" if self.all_layers else (None if self.layer is None else str(self.layer))
        return super().to_url(field)


@dataclasses.dataclass
class FeatureBrowserState(PageState):
    """Feature browser: the dictionary and the open feature (per model), the search inputs."""

    PREFIX: ClassVar[str] = "fb"
    URL: ClassVar[dict[str, str]] = {"feature": "feature", "try_text": "text"}

    feature: str | None = None  # "layer:index"
    search_text: str = ""
    search_words: str = ""
    try_text: str = ""


@dataclasses.dataclass
class SteerState(PageState):
    """Steering: the prompt, the link the interventions started from, the generation settings."""

    PREFIX: ClassVar[str] = "st"
    URL: ClassVar[dict[str, str]] = {"prompt": "prompt"}

    prompt: str = DEFAULT_PROMPT
    n_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 5
    freq_penalty: float = 0.0
    seed: int = 0
    freeze_attention: bool = False
    sweep_alphas: str = "0, 0.5, 1, 2, 4"
    passages: str = ""


@dataclasses.dataclass
class CompareState(PageState):
    """Model compare: the models, sentences, terms and depth."""

    PREFIX: ClassVar[str] = "cmp"
    URL: ClassVar[dict[str, str]] = {}

    sentences: str = ""
    terms: str = ""


DEFAULT_GRAPH_PROMPT = "The capital of the state containing Dallas is"


@dataclasses.dataclass
class GraphState(PageState):
    """Attribution graph: the prompt and attribution settings typed in the form, and the view's
    pruning and styling. The graph itself, its pins and selection live with the opened document
    (they are saved in its qParams); this is what the user set around it. Widget keys keep the page's
    `graph_<field>` names."""

    PREFIX: ClassVar[str] = "graph"
    URL: ClassVar[dict[str, str]] = {"prompt": "prompt"}

    prompt: str = DEFAULT_GRAPH_PROMPT
    slug: str = ""
    offload: str = "none"
    transcoder_sets: dict[str, str] = dataclasses.field(default_factory=dict)  # model id -> set id
    settings: dict[str, float] = dataclasses.field(default_factory=dict)  # attribution settings typed
    nt: float | None = None  # node threshold of the view; None: the graph's own
    et: float = 1.0
    colour: str = "influence"
    size: str = "influence"

    def key(self, field: str) -> str:
        return f"graph_{field}"
