"""The input limits that can be checked from a request alone, before any work, model or lock.

The HTTP service runs `check_request` on every request before it waits for the GPU, so a remote
GPU refuses an oversized request at once, with a `LimitExceeded` (413) naming the limit, whatever
the backend behind it does. Limits that need the tokenizer (tokens per prompt) stay with the
backend. The analyze entries repeat LocalBackend.analyze's wording, so both backends refuse with
the same message; an operation's owner can call `check_request` from LocalBackend too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from backend.errors import LimitExceeded
from backend.schemas import (
    AnalyzeRequest,
    CompareRequest,
    FeatureRequest,
    GraphRequest,
    SearchRequest,
    SteerRequest,
)
from backend.settings import Limits


def _value(v: Any) -> int | float:
    return v


def _length(v: Any) -> int:
    return len(v)


def _longest(v: Sequence[str]) -> int:
    return max((len(s) for s in v), default=0)


@dataclass(frozen=True)
class Check:
    field: str
    limit: str  # a field of Limits
    what: str
    advice: str
    measure: Callable[[Any], int | float] = _value
    name_env: bool = True  # append which variable sets the limit (off where wording must match LocalBackend)

    def env(self) -> str:
        return f"FEATURESCOPE_{self.limit.upper()}"


_CHARS = "Shorten the text or raise FEATURESCOPE_MAX_TEXT_CHARS."

CHECKS: dict[type[BaseModel], tuple[Check, ...]] = {
    AnalyzeRequest: (
        Check("k", "max_k", "k", "Ask for fewer features per token.", name_env=False),
        Check(
            "track",
            "max_tracked_features",
            "The number of tracked features",
            "Track fewer features.",
            _length,
            name_env=False,
        ),
        Check("text", "max_text_chars", "The text length (characters)", _CHARS, _length, name_env=False),
    ),
    SearchRequest: (
        Check("k", "max_k", "k", "Ask for fewer features."),
        Check("text", "max_text_chars", "The text length (characters)", _CHARS, _length),
        Check("query", "max_text_chars", "The query length (characters)", "Shorten the query.", _length),
    ),
    FeatureRequest: (Check("n_examples", "max_examples", "n_examples", "Ask for fewer examples."),),
    SteerRequest: (
        Check("prompt", "max_text_chars", "The prompt length (characters)", _CHARS, _length),
        Check(
            "features",
            "max_steer_features",
            "The number of steered features",
            "Steer fewer features.",
            _length,
        ),
        Check("n_tokens", "max_new_tokens", "n_tokens", "Generate fewer tokens."),
    ),
    GraphRequest: (
        Check("prompt", "max_text_chars", "The prompt length (characters)", _CHARS, _length),
        Check("max_feature_nodes", "max_feature_nodes", "max_feature_nodes", "Ask for fewer feature nodes."),
        Check("batch_size", "max_batch_size", "batch_size", "Use a smaller batch_size."),
    ),
    CompareRequest: (
        Check(
            "models", "max_compare_models", "The number of models", "Compare fewer models at once.", _length
        ),
        Check(
            "sentences", "max_compare_sentences", "The number of sentences", "Use fewer sentences.", _length
        ),
        Check("sentences", "max_text_chars", "The longest sentence (characters)", "Shorten it.", _longest),
        Check("k", "max_k", "k", "Ask for fewer features."),
    ),
}


def check_request(req: BaseModel | None, limits: Limits) -> None:
    """Raise LimitExceeded for the first limit `req` is over (requests without entries pass)."""
    if req is None:
        return
    for check in CHECKS.get(type(req), ()):
        raw = getattr(req, check.field, None)
        if raw is None:
            continue
        value = check.measure(raw)
        limit = getattr(limits, check.limit)
        if value > limit:
            advice = check.advice
            if check.name_env and check.env() not in advice:
                advice = f"{advice} ({check.env()} sets the limit.)"
            raise LimitExceeded(check.what, value, limit, advice)
