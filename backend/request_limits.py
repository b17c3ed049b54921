"""THE limits table: every limit a request can be measured against from its own fields.

`check_request(req, limits)` is called once per request, whichever way it comes in: by the
`LocalBackend` facade for every protocol method (so in-process callers, the CLI and the HTTP
service behind it are all covered), and by the HTTP service before it waits for the GPU, so a
remote GPU refuses an oversized request at once. Every refusal is a `LimitExceeded` (413) worded
one way: what is over, its value, the limit, what to do, and which variable sets the limit.

Limits that need more than the request (tokens per prompt need the tokenizer; an experiment's
features x alphas needs the catalog's layers) are checked by their engine with the same error.
Request schemas carry no limit constants of their own: the operator's `Limits` decide.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from backend.errors import LimitExceeded
from backend.schemas import (
    AnalyzeRequest,
    CompareRequest,
    ExperimentRequest,
    ExplanationEdit,
    FeatureRequest,
    GraphRequest,
    SearchRequest,
    SteerRequest,
    SteerSweepRequest,
)
from backend.settings import Limits


@dataclass(frozen=True)
class Check:
    field: str  # the request field measured (for the docs, the UI and the contract tests)
    limit: str  # a field of Limits
    what: str
    advice: str
    measure: Callable[[Any], int | float | None]  # the request -> its value (None: not set)
    factor: int = 1  # the limit is this many times the Limits field

    def env(self) -> str:
        return f"FEATURESCOPE_{self.limit.upper()}"

    def bound(self, limits: Limits) -> int | float:
        return getattr(limits, self.limit) * self.factor

    def error(self, value: int | float, limits: Limits) -> LimitExceeded:
        return limits_error(self.what, value, self.bound(limits), self.advice, self.env())


def limits_error(what: str, value: int | float, limit: int | float, advice: str, env: str) -> LimitExceeded:
    """The one wording of a refusal; engines use it for the limits they check themselves."""
    return LimitExceeded(what, value, limit, f"{advice} ({env} sets the limit.)")


def _field(name: str) -> Callable[[Any], Any]:
    return lambda req: getattr(req, name)


def _length(name: str) -> Callable[[Any], int | None]:
    def measure(req: Any) -> int | None:
        v = getattr(req, name)
        return None if v is None else len(v)

    return measure


def _total_chars(name: str) -> Callable[[Any], int | None]:
    def measure(req: Any) -> int | None:
        v = getattr(req, name)
        return None if v is None else sum(len(s) for s in v)

    return measure


def _terms(req: CompareRequest) -> list[str]:
    """The distinct domain terms (stripped; case-folded unless match_case), as compare counts them."""
    seen: dict[str, str] = {}
    for t in (t.strip() for t in req.domain_terms):
        if t:
            seen.setdefault(t if req.match_case else t.casefold(), t)
    return list(seen.values())


def _models(req: CompareRequest) -> int:
    return len(dict.fromkeys(m.strip() for m in req.models))


def _examples(req: FeatureRequest) -> int:
    return req.n_examples + req.n_quantiles * req.examples_per_quantile


_CHARS = "Shorten the text."
_PROMPT = ("prompt", "max_text_chars", "The prompt length (characters)", "Shorten the prompt.", _length("prompt"))
_TOKENS = ("n_tokens", "max_new_tokens", "n_tokens", "Generate fewer tokens.", _field("n_tokens"))

CHECKS: dict[type[BaseModel], tuple[Check, ...]] = {
    AnalyzeRequest: (
        Check("k", "max_k", "k", "Ask for fewer features per token.", _field("k")),
        Check("track", "max_tracked_features", "The number of tracked features", "Track fewer features.",
              _length("track")),
        Check("text", "max_text_chars", "The text length (characters)", _CHARS, _length("text")),
    ),
    SearchRequest: (
        Check("k", "max_k", "k (hits)", "Ask for fewer hits.", _field("k")),
        Check("text", "max_text_chars", "The text length (characters)", _CHARS, _length("text")),
        Check("query", "max_text_chars", "The query length (characters)", "Shorten the query.", _length("query")),
    ),
    FeatureRequest: (
        Check("n_examples", "max_examples", "The number of examples (top + quantile bands)",
              "Ask for fewer examples or bands.", _examples),
        Check("n_quantiles", "max_quantiles", "n_quantiles", "Ask for fewer bands.", _field("n_quantiles")),
        Check("context_tokens", "max_context_tokens", "context_tokens", "Ask for less context.",
              _field("context_tokens")),
        Check("n_logits", "max_k", "n_logits", "Ask for fewer logits.", _field("n_logits")),
    ),
    ExplanationEdit: (
        Check("text", "max_explanation_chars", "The explanation (characters)", "Shorten it.",
              lambda req: len(req.text.strip())),
    ),
    SteerRequest: (
        Check(*_PROMPT),
        Check(*_TOKENS),
        Check("features", "max_steer_features", "The number of steered features", "Steer fewer features.",
              _length("features")),
        Check("top_k", "max_k", "top_k", "Ask for fewer next-token probabilities.", _field("top_k")),
    ),
    SteerSweepRequest: (
        Check(*_PROMPT),
        Check(*_TOKENS),
        Check("alphas", "max_sweep_alphas", "The number of alphas", "Sweep fewer alphas.", _length("alphas")),
    ),
    ExperimentRequest: (
        Check("max_passages", "max_experiment_passages", "max_passages",
              "Use fewer passages here, or run `python -m backend.experiments run` for large runs.",
              _field("max_passages")),
        Check("max_len", "max_prompt_tokens", "max_len", "Use shorter passages.", _field("max_len")),
        Check("texts", "max_text_chars", "The passages (characters)", "Give fewer or shorter passages.",
              _total_chars("texts"), factor=10),
    ),
    GraphRequest: (
        Check(*_PROMPT),
        Check("max_feature_nodes", "max_feature_nodes", "max_feature_nodes", "Ask for fewer feature nodes.",
              _field("max_feature_nodes")),
        Check("batch_size", "max_batch_size", "batch_size", "Use a smaller batch size.", _field("batch_size")),
        Check("max_n_logits", "max_graph_logits", "max_n_logits", "Ask for fewer logit nodes.",
              _field("max_n_logits")),
    ),
    CompareRequest: (
        Check("models", "max_compare_models", "The number of models", "Compare fewer models at once.", _models),
        Check("sentences", "max_compare_sentences", "The number of sentences", "Use fewer sentences.",
              _length("sentences")),
        Check("domain_terms", "max_compare_terms", "The number of domain terms", "Use fewer terms.",
              lambda req: len(_terms(req))),
        Check("domain_terms", "max_compare_term_chars", "The longest domain term (characters)",
              "Use a shorter term.", lambda req: max((len(t) for t in _terms(req)), default=0)),
        Check("sentences", "max_text_chars", "The sentences' length (characters, all together)",
              "Use shorter or fewer sentences.", _total_chars("sentences")),
        Check("k", "max_k", "k", "Ask for fewer.", _field("k")),
        Check("top_guesses", "max_k", "The number of next-token guesses", "Ask for fewer.", _field("top_guesses")),
    ),
}


def check_request(req: BaseModel | None, limits: Limits) -> None:
    """Raise LimitExceeded for the first limit `req` is over (requests without entries pass)."""
    if req is None:
        return
    for check in CHECKS.get(type(req), ()):
        value = check.measure(req)
        if value is not None and value > check.bound(limits):
            raise check.error(value, limits)


def table(limits: Limits) -> dict[str, float]:
    """The full limits table as published in `info().limits` (every field of Limits)."""
    return {k: float(v) for k, v in limits.model_dump().items()}
