"""Steering: default vs steered generation (compatible with the graph server's /steer)."""

from __future__ import annotations

from pydantic import Field, model_validator

from backend.schemas.common import Request, Result


class SteerFeature(Request):
    """One intervention on one feature. Exactly one of ablate / delta / set_value / alpha."""

    layer: int = Field(ge=0)
    index: int = Field(ge=0)
    sae_set: str | None = Field(None, description="Defaults to the request's sae_set.")
    token_active_position: int | None = Field(None, ge=0, description="Where the feature is active (informational).")
    steer_position: int | None = Field(None, ge=0, description="One prompt position to steer.")
    steer_positions: list[int] | None = Field(None, description="Several prompt positions.")
    steer_all_prompt_positions: bool = False
    steer_generated_tokens: bool = False
    ablate: bool = False
    delta: float | None = None
    set_value: float | None = None
    alpha: float | None = Field(None, description="Scale the feature's activation by alpha.")

    @model_validator(mode="after")
    def _one_operation(self) -> SteerFeature:
        ops = [self.ablate, self.delta is not None, self.set_value is not None, self.alpha is not None]
        if sum(ops) != 1:
            raise ValueError("each feature needs exactly one of ablate, delta, set_value, alpha")
        return self


class SteerRequest(Request):
    model: str
    sae_set: str
    prompt: str = Field(min_length=1)
    features: list[SteerFeature] = Field(default_factory=list)
    n_tokens: int = Field(10, ge=1)
    top_k: int = Field(5, ge=0, le=100)
    temperature: float = Field(0.0, ge=0.0, le=10.0)
    freq_penalty: float = Field(0.0, ge=-10.0, le=10.0)
    seed: int | None = None
    freeze_attention: bool = False


LogitsByToken = list[tuple[str, list[tuple[str, float]]]]


class SteerMetrics(Result):
    ce_loss_default: float
    ce_loss_steered: float
    delta_ce_loss: float
    kl_divergence: float = Field(description="Mean KL(default || steered) over prompt positions.")
    top_logit_deltas: list[tuple[str, float]] = Field(default_factory=list)


class SteerResult(Result):
    DEFAULT_GENERATION: str
    STEERED_GENERATION: str
    DEFAULT_LOGITS_BY_TOKEN: LogitsByToken = Field(default_factory=list)
    STEERED_LOGITS_BY_TOKEN: LogitsByToken = Field(default_factory=list)
    metrics: SteerMetrics | None = None
