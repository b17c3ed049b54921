"""Intervention experiments over a corpus (seed 002's pipeline): scale each chosen feature by each
alpha on every passage and measure the cost — cross-entropy change, KL, logit deltas.

The same request drives `Backend.experiment` (the playground's small runs, limited by `Limits`)
and `python -m backend.experiments run` (any size, written to CSV, plots and a report).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from backend.schemas.common import Request, Result


class ExperimentFeature(Request):
    """A feature to test, with the Neuronpedia template's label columns."""

    layer: int = Field(ge=0)
    index: int = Field(ge=0, description="The template's `feature_id`.")
    label: str | None = None
    label_confidence: float | None = None


class ExperimentRequest(Request):
    model: str = Field(description="Catalog model id.")
    sae_set: str = Field(description="SAE set (or per-layer transcoder set) of the model.")
    hook: str | None = Field(
        None,
        description="Expected hook kind, e.g. 'resid_pre': refused if the set reads "
        "another. None: the set's own.",
    )
    layers: list[int] | None = Field(None, description="Layers to test; None: every layer of the set.")
    alphas: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0], min_length=1)
    alpha: float = Field(2.0, description="The headline alpha (layer plot, snippets); added to alphas.")
    corpus: Literal["demo", "wikitext2", "texts"] = Field(
        "demo",
        description="demo: the demo pack's corpus; wikitext2: WikiText-2 (test split) through "
        "`datasets`; texts: the passages given in `texts`.",
    )
    texts: list[str] | None = None
    max_passages: int = Field(200, ge=1)
    max_len: int = Field(256, ge=2, description="Tokens per passage (longer ones are cut).")
    min_len: int = Field(8, ge=2, description="Shorter passages are skipped.")
    feature_source: Literal["list", "auto"] = Field(
        "auto", description="list: `features`; auto: live features chosen by `live_percentile`."
    )
    features: list[ExperimentFeature] = Field(default_factory=list)
    features_per_layer: int = Field(
        5,
        ge=1,
        description="Features per layer (best label_confidence first for "
        "a list; drawn with `seed` for auto).",
    )
    min_conf: float = Field(0.0, description="list: skip features whose label_confidence is lower.")
    live_percentile: float = Field(
        90.0,
        ge=0.0,
        le=100.0,
        description="auto: pick among live features whose firing rate is at or "
        "above this percentile of the live features' rates.",
    )
    calibration_passages: int = Field(
        50, ge=1, description="auto: passages whose firing rates choose features."
    )
    batch_size: int = Field(16, ge=1, description="Passages per forward pass; halved on out-of-memory.")
    seed: int = 1234
    n_snippets: int = Field(
        5, ge=0, description="Example snippets (highest KL) per feature at the headline alpha."
    )
    snippet_window: int = Field(
        12, ge=1, description="Tokens of context either side of a snippet's position."
    )

    @model_validator(mode="after")
    def _check(self) -> ExperimentRequest:
        if self.corpus == "texts" and not self.texts:
            raise ValueError("corpus 'texts' needs `texts`")
        if self.feature_source == "list" and not self.features:
            raise ValueError("feature_source 'list' needs `features` (layer, index)")
        return self

    def all_alphas(self) -> list[float]:
        return sorted(set(self.alphas) | {self.alpha})


class FeatureMetrics(Result):
    """One row of per_feature_metrics.csv: a (layer, feature, alpha) over every passage."""

    layer: int
    feature: int
    alpha: float
    label: str | None = None
    label_confidence: float | None = None
    delta_ce_loss: float = Field(description="Token-weighted mean CE change over all passages.")
    ce_loss_default: float
    ce_loss_steered: float
    kl: float = Field(description="Mean KL(default || steered) over every passage token.")
    top_logit_deltas: list[tuple[str, float]] = Field(default_factory=list)
    firing_rate: float = Field(description="Fraction of (non-special) tokens where the feature fires.")
    mean_act: float = Field(description="Mean activation where it fires.")
    max_act: float
    n_tokens: int


class LayerSummary(Result):
    """One row of per_layer_summary.csv: the features of a layer at one alpha."""

    layer: int
    alpha: float
    n_features: int
    delta_ce_loss_mean: float
    delta_ce_loss_std: float
    kl_mean: float
    kl_std: float
    firing_rate_mean: float


class Snippet(Result):
    """A passage window where steering moved the prediction most (highest KL)."""

    layer: int
    feature: int
    alpha: float
    passage: int
    position: int
    kl: float
    before: str
    token: str
    after: str
    default_next: str
    steered_next: str


class ExperimentResult(Result):
    model: str
    sae_set: str
    hook: str = Field(description="Hook template the features read, e.g. blocks.{layer}.hook_resid_pre.")
    corpus: str = Field(description="Where the passages came from.")
    n_passages: int
    n_tokens: int
    alphas: list[float]
    alpha: float
    features: list[ExperimentFeature]
    rows: list[FeatureMetrics]
    layers: list[LayerSummary]
    snippets: list[Snippet] = Field(default_factory=list)
    batch_size: int = Field(
        description="The batch size the run ended with (after any out-of-memory halving)."
    )
    notes: list[str] = Field(default_factory=list)
    label: str | None = None
    elapsed_ms: float = 0.0
