"""One feature's dashboard (feature browser) and feature search."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from backend.schemas.common import FeatureRef, Request, Result


class FeatureRequest(Request):
    feature: FeatureRef
    n_examples: int = Field(20, ge=0, description="Max-activating examples.")
    n_quantiles: int = Field(5, ge=0, le=20, description="Bands of the activation range to sample.")
    examples_per_quantile: int = Field(3, ge=0, le=50)
    context_tokens: int = Field(16, ge=0, le=256, description="Tokens of context on each side.")
    n_logits: int = Field(10, ge=0, le=100, description="Top positive and negative logits.")


class Sampling(Result):
    """How a statistic was obtained, as in the Modal design: say what was scanned."""

    method: str = Field(description="e.g. 'full_index', 'sequential_from_start', 'top_by_activation'.")
    description: str
    tokens_scanned: int
    corpus_coverage: float = Field(ge=0.0, le=1.0)


class LogitEntry(Result):
    token: str
    id: int
    value: float


class Histogram(Result):
    bin_edges: list[float]
    counts: list[int]


class Example(Result):
    doc_id: int
    tokens: list[str]
    activations: list[float]
    max_position: int = Field(description="Index in `tokens` of the activating token.")
    max_activation: float
    metadata: dict[str, str | int | float | None] = Field(default_factory=dict)


class QuantileBand(Result):
    low: float
    high: float
    examples: list[Example]


class FeatureResult(Result):
    feature: FeatureRef
    explanation: str | None = None
    explanation_source: str | None = None
    density: float | None = Field(None, description="Fraction of corpus tokens where it fires.")
    max_activation: float | None = None
    mean_activation: float | None = Field(None, description="Mean over tokens where it fires.")
    histogram: Histogram | None = None
    top_logits: list[LogitEntry] = Field(default_factory=list)
    bottom_logits: list[LogitEntry] = Field(default_factory=list)
    examples: list[Example] = Field(default_factory=list)
    quantiles: list[QuantileBand] = Field(default_factory=list)
    neuronpedia_url: str | None = None
    store: str | None = Field(None, description="Corpus store the examples came from.")
    sampling: Sampling | None = None


class SearchRequest(Request):
    model: str
    sae_set: str
    mode: Literal["text", "explanation"] = "text"
    text: str | None = Field(None, description="mode=text: features firing most on this text.")
    query: str | None = Field(None, description="mode=explanation: words to look for.")
    layers: list[int] | None = None
    k: int = Field(20, ge=1)


class FeatureHit(Result):
    feature: FeatureRef
    score: float
    explanation: str | None = None


class SearchResult(Result):
    mode: str
    hits: list[FeatureHit]
