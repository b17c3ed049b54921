"""One feature's dashboard (feature browser) and feature search."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from backend.schemas.common import DENSITY, FeatureRef, Request, Result


class FeatureRequest(Request):
    feature: FeatureRef = Field(description="The feature; sae_set may name an SAE set or a per-layer "
                                            "transcoder set.")
    # Their limits are the operator's (settings.Limits, checked by request_limits), not constants here.
    n_examples: int = Field(20, ge=0, description="Max-activating examples.")
    n_quantiles: int = Field(5, ge=0, description="Bands of the activation range to sample.")
    examples_per_quantile: int = Field(3, ge=0)
    context_tokens: int = Field(16, ge=0, description="Tokens of context on each side.")
    n_logits: int = Field(10, ge=0, description="Top positive and negative logits.")
    wait_for_store: bool = Field(True, description="False: answer at once with what needs no corpus store "
                                 "(explanation, logits) while the store is missing or being built; "
                                 "store_status then says 'pending'. True: build or wait for it.")


class Sampling(Result):
    """How a statistic was obtained, as in the Modal design: say what was scanned."""

    method: str = Field(description="'full_corpus', 'sequential_from_start', 'top_by_activation', "
                                    "'quantile_bands'.")
    description: str
    tokens_scanned: int
    corpus_coverage: float = Field(ge=0.0, le=1.0, description="Fraction of the corpus' documents in the store.")


class LogitEntry(Result):
    token: str
    id: int
    value: float


class Histogram(Result):
    bin_edges: list[float] = Field(description="len(counts) + 1 edges; log-spaced when log_bins.")
    counts: list[int]
    log_bins: bool = False


class Example(Result):
    doc_id: int = Field(description="Document number in the store.")
    token_index: int = Field(0, description="Position of the activating token in the whole store.")
    doc_position: int = Field(0, description="Position of the activating token in its document.")
    tokens: list[str] = Field(description="Context tokens, exactly as decoded (escape before showing).")
    token_ids: list[int] = Field(default_factory=list)
    activations: list[float] = Field(description="The feature's activation on each context token.")
    max_position: int = Field(description="Index in `tokens` of the activating token.")
    max_activation: float
    metadata: dict[str, str | int | float | None] = Field(default_factory=dict)


class QuantileBand(Result):
    low: float
    high: float
    count: int = Field(0, description="Indexed activations in this band.")
    examples: list[Example]


class FeatureResult(Result):
    feature: FeatureRef
    dictionary_kind: Literal["sae", "transcoder"] = "sae"
    d_sae: int | None = None
    hook_name: str | None = None
    label: str | None = Field(None, description="Set for the tiny random demo pack.")
    explanation: str | None = None
    explanation_source: str | None = Field(None, description="'user', 'neuronpedia' or 'demo pack'.")
    density: float | None = Field(None, description=DENSITY)
    n_active: int | None = Field(None, description="Corpus tokens where it fires.")
    max_activation: float | None = None
    mean_activation: float | None = Field(None, description="Mean over tokens where it fires.")
    histogram: Histogram | None = None
    top_logits: list[LogitEntry] = Field(default_factory=list)
    bottom_logits: list[LogitEntry] = Field(default_factory=list)
    examples: list[Example] = Field(default_factory=list)
    quantiles: list[QuantileBand] = Field(default_factory=list)
    neuronpedia_url: str | None = None
    store: str | None = Field(
        None, description="Name of the corpus store the examples came from (its file in the service's "
        "store folder; never a server path)."
    )
    store_tokens: int | None = None
    store_docs: int | None = None
    sampling: Sampling | None = Field(None, description="How density, max, mean and histogram were obtained.")
    examples_sampling: Sampling | None = None
    quantiles_sampling: Sampling | None = None
    store_status: Literal["ready", "pending", "absent"] | None = Field(
        None, description="'ready': examples and statistics come from the store; 'pending': it is being "
        "built (ask again with wait_for_store); 'absent': there is none for this set.")
    notes: list[str] = Field(default_factory=list, description="E.g. how to build a missing store.")
    elapsed_ms: float = 0.0


class SearchRequest(Request):
    model: str
    sae_set: str = Field(description="SAE set or per-layer transcoder set.")
    mode: Literal["text", "explanation"] = "text"
    text: str | None = Field(None, description="mode=text: features firing most on this text.")
    query: str | None = Field(None, description="mode=explanation: words to look for.")
    layers: list[int] | None = None
    k: int = Field(20, ge=1)
    prepend_bos: bool | None = Field(None, description="mode=text; None: the set's or model's default.")


class FeatureHit(Result):
    feature: FeatureRef
    score: float = Field(description="mode=text: peak activation on the text; mode=explanation: match score.")
    explanation: str | None = None
    max_activation: float | None = None
    n_active_tokens: int | None = Field(None, description="mode=text: tokens of the text where it fires.")
    top_position: int | None = None
    top_token: str | None = None
    relative: float | None = Field(None, description="mode=text: peak on the text / peak over the corpus store.")
    density: float | None = Field(None, description=DENSITY)


class SearchResult(Result):
    mode: str
    hits: list[FeatureHit]
    n_tokens: int | None = None
    label: str | None = None
    notes: list[str] = Field(default_factory=list)
    elapsed_ms: float = 0.0


class ExplanationEdit(Request):
    """A researcher's own explanation of a feature, saved beside the pack's and Neuronpedia's."""

    feature: FeatureRef
    text: str = Field(description="The explanation; an empty text removes the user's own, so the "
                                  "pack's or Neuronpedia's shows again.")


class ExplanationSaved(Result):
    feature: FeatureRef
    explanation: str | None = Field(description="What the feature is now explained as (any source).")
    explanation_source: str | None = Field(description="'user', 'neuronpedia', 'demo pack' or None.")
