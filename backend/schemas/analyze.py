"""Text -> tokens -> per-token top-k SAE features (the text highlighter, /features/topk)."""

from __future__ import annotations

from pydantic import Field

from backend.schemas.common import DENSITY, LayerFeature, Request, Result, TokenInfo


class AnalyzeRequest(Request):
    model: str = Field(description="Catalog model id.")
    sae_set: str = Field(description="SAE set id of the model.")
    text: str = Field(min_length=1)
    layers: list[int] | None = Field(None, description="SAE layers to read; None: all of the set.")
    k: int = Field(10, ge=1, description="Top features per token.")
    track: list[LayerFeature] = Field(default_factory=list, description="Features whose per-token activations to return.")
    include_explanations: bool = True
    prepend_bos: bool | None = Field(None, description="None: the SAE set's (or model's) default.")


class FeatureActivation(Result):
    index: int
    activation: float
    explanation: str | None = None
    density: float | None = Field(None, description=DENSITY)


class LayerTopK(Result):
    """One layer's top-k, column-wise: row `pos` of `indices` and `values` is token `pos`'s active
    features, strongest first (only those that fire, so rows can be shorter than k). Columns keep
    a 1,000-token, 26-layer answer small on the wire and cheap to build; `features_at` gives rows."""

    layer: int
    hook_name: str
    d_sae: int
    neuronpedia_id: str | None = None
    indices: list[list[int]] = Field(description="Per token, up to k active feature indices, strongest first.")
    values: list[list[float]] = Field(description="Their activations, row by row.")
    explanations: dict[int, str] = Field(default_factory=dict, description="Known explanations of the listed features.")
    densities: list[list[float]] | None = Field(
        None, description="Row by row, parallel to `indices`, each listed feature's density; None when the "
        "set's densities are unknown. " + DENSITY)

    def features_at(self, pos: int) -> list[FeatureActivation]:
        dens: list[float | None] = list(self.densities[pos]) if self.densities is not None else \
            [None] * len(self.indices[pos])
        return [FeatureActivation(index=i, activation=v, explanation=self.explanations.get(i), density=d)
                for i, v, d in zip(self.indices[pos], self.values[pos], dens)]


class TrackedActivations(Result):
    layer: int
    index: int
    explanation: str | None = None
    density: float | None = Field(None, description=DENSITY)
    values: list[float] = Field(description="Activation on every token.")


class AnalyzeResult(Result):
    model: str
    sae_set: str
    tokens: list[TokenInfo]
    layers: list[LayerTopK]
    tracked: list[TrackedActivations] = Field(default_factory=list)
    window: int | None = Field(None, description="Tokens were run in independent windows of this size.")
    label: str | None = Field(None, description="Shown with results from a fallback or special model.")
    elapsed_ms: float = 0.0
