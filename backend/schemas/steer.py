"""Steering: default vs steered generation (compatible with the graph server's /steer), and the
alpha sweep of one feature.

A graph-server /steer body validates as a `SteerRequest` unchanged: `model_id` is accepted for
`model` (a catalog id, or the model's TransformerLens / Hugging Face name), and `sae_set` may be
left out (the model's first transcoder set, else its first SAE set, as the graph server steers
transcoder features). Positions count tokens as the model reads the prompt, the BOS token (when
the model prepends one) being position 0.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, model_validator

from backend.schemas.common import Request, Result, TokenInfo


class FeatureTarget(Request):
    """A feature and where to steer it."""

    layer: int = Field(ge=0)
    index: int = Field(ge=0)
    sae_set: str | None = Field(None, description="SAE or transcoder set; defaults to the request's sae_set.")
    token_active_position: int | None = Field(
        None,
        ge=0,
        description="Where the feature is active. With `delta`, the new value is the default "
        "run's activation here plus delta; without it, the activation at the "
        "steered position plus delta.",
    )
    steer_position: int | None = Field(None, ge=0, description="One prompt position to steer.")
    steer_positions: list[int] | None = Field(None, description="Several prompt positions.")
    steer_all_prompt_positions: bool = Field(
        False, description="Every prompt position except special tokens (BOS)."
    )
    steer_generated_tokens: bool = Field(False, description="Every generated token, as it is read back.")

    @model_validator(mode="after")
    def _somewhere(self) -> FeatureTarget:
        if (
            self.steer_position is None
            and not self.steer_positions
            and not self.steer_all_prompt_positions
            and not self.steer_generated_tokens
        ):
            raise ValueError(
                f"feature {self.layer}:{self.index} needs somewhere to steer: steer_position, "
                "steer_positions, steer_all_prompt_positions or steer_generated_tokens"
            )
        if self.steer_positions and any(p < 0 for p in self.steer_positions):
            raise ValueError("steer_positions must be >= 0")
        return self

    def prompt_positions(self) -> list[int]:
        """The explicitly named prompt positions, in order, without repeats."""
        named = ([] if self.steer_position is None else [self.steer_position]) + list(
            self.steer_positions or []
        )
        return list(dict.fromkeys(named))


class SteerFeature(FeatureTarget):
    """One intervention on one feature. Exactly one of ablate / delta / set_value / alpha.

    ablate: the activation becomes 0. delta: it becomes (activation + delta), see
    `token_active_position`. set_value: it becomes the value. alpha: it is multiplied by alpha.
    The residual (or, for a transcoder, the MLP output) changes by (new - old) x the decoder row.
    """

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

    @property
    def operation(self) -> str:
        if self.ablate:
            return "ablate"
        return "delta" if self.delta is not None else "set_value" if self.set_value is not None else "alpha"

    @property
    def amount(self) -> float | None:
        return {"ablate": None, "delta": self.delta, "set_value": self.set_value, "alpha": self.alpha}[
            self.operation
        ]


class SteerSettings(Request):
    """What both runs share: the model, the prompt and the generation settings."""

    model: str = Field(description="Catalog model id, or its Hugging Face / TransformerLens name "
                       "(the graph server's /steer reads it as `model_id`).")
    sae_set: str | None = Field(
        None,
        description="SAE or transcoder set of the features; None: the model's "
        "first transcoder set, else its first SAE set.",
    )
    prompt: str = Field(min_length=1)
    n_tokens: int = Field(10, ge=1, description="Tokens to generate.")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0: greedy.")
    freq_penalty: float = Field(
        0.0,
        ge=-10.0,
        le=10.0,
        description="Subtracted from a token's logit per earlier occurrence "
        "(as TransformerLens does; only when sampling).",
    )
    seed: int | None = Field(None, description="Sampling seed; both runs use it. None: drawn and reported "
                             "when sampling (temperature > 0), 0 when greedy.")
    freeze_attention: bool = Field(
        False,
        description="Steered run reads the prompt with the default run's attention patterns "
        "(as circuit-tracer: the prompt pass only).",
    )


class SteerRequest(SteerSettings):
    features: list[SteerFeature] = Field(default_factory=list)
    top_k: int = Field(5, ge=0, description="Top next-token probabilities per position (limit: max_k).")


class SteerSweepRequest(SteerSettings):
    """One feature scaled by each alpha in turn (seed 002's alpha sweep), on a prompt."""

    feature: FeatureTarget
    alphas: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0], min_length=1)


LogitsByToken = list[tuple[str, list[tuple[str, float]]]]


class SteerMetrics(Result):
    """The cost of steering on the prompt, from the two runs' prompt logits."""

    ce_loss_default: float = Field(description="Mean next-token cross-entropy over prompt positions 0..n-2.")
    ce_loss_steered: float
    delta_ce_loss: float = Field(description="ce_loss_steered - ce_loss_default.")
    kl_divergence: float = Field(description="Mean KL(default || steered) over prompt positions 0..n-1.")
    kl_by_position: list[float] = Field(default_factory=list, description="KL at each prompt position.")
    top_logit_deltas: list[tuple[str, float]] = Field(
        default_factory=list,
        description="Mean change of the centred logit over the prompt positions: the "
        "most raised tokens, then the most lowered.",
    )


class AppliedIntervention(Result):
    """What a SteerFeature became: where it read and wrote, and the feature in the default run."""

    layer: int
    index: int
    sae_set: str
    kind: str = Field(description="'sae' or 'transcoder'.")
    hook_name: str
    out_hook_name: str
    operation: str
    amount: float | None = None
    target_value: float | None = Field(
        None, description="delta with token_active_position, set_value: the value set."
    )
    prompt_positions: list[int]
    generated_tokens: bool
    clean_activations: list[float] = Field(
        description="The feature's activation at every prompt position, default run."
    )
    explanation: str | None = None


class SeedNamedResult(Result):
    """A result some of whose fields travel under the graph server's upper-case names: the names
    are wire aliases (what JSON carries, in and out); attributes are ours (`default_generation`)."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_alias=True, validate_by_name=True)


class SteerResult(SeedNamedResult):
    default_generation: str = Field(alias="DEFAULT_GENERATION")
    steered_generation: str = Field(alias="STEERED_GENERATION")
    default_logits_by_token: LogitsByToken = Field(
        default_factory=list,
        alias="DEFAULT_LOGITS_BY_TOKEN",
        description="[token, [[next token, probability], ...]] for every position, "
        "index = position (BOS included).",
    )
    steered_logits_by_token: LogitsByToken = Field(default_factory=list, alias="STEERED_LOGITS_BY_TOKEN")
    metrics: SteerMetrics | None = None
    model: str = ""
    sae_set: str = ""
    prompt_tokens: list[TokenInfo] = Field(default_factory=list)
    default_ids: list[int] = Field(default_factory=list, description="Prompt and generated token ids.")
    steered_ids: list[int] = Field(default_factory=list)
    interventions: list[AppliedIntervention] = Field(default_factory=list)
    seed: int | None = Field(None, description="The sampling seed both runs used.")
    label: str | None = None
    elapsed_ms: float = 0.0


class SweepPoint(SeedNamedResult):
    alpha: float
    steered_generation: str = Field(alias="STEERED_GENERATION")
    steered_ids: list[int]
    metrics: SteerMetrics


class SteerSweepResult(SeedNamedResult):
    model: str
    sae_set: str
    feature: AppliedIntervention
    default_generation: str = Field(alias="DEFAULT_GENERATION")
    default_ids: list[int]
    prompt_tokens: list[TokenInfo]
    points: list[SweepPoint]
    seed: int | None = None
    label: str | None = None
    elapsed_ms: float = 0.0
