"""Several models on the same domain sentences (compatible with the seed's /compare)."""

from __future__ import annotations

from pydantic import Field

from backend.schemas.common import Request, Result, TokenInfo


class CompareRequest(Request):
    models: list[str] = Field(min_length=1)
    sentences: list[str] = Field(min_length=1)
    domain_terms: list[str] = Field(default_factory=list)
    sae_layer: int | None = Field(None, description="SAE layer to read; None: same relative depth.")
    relative_depth: float = Field(0.5, ge=0.0, le=1.0)
    k: int = Field(10, ge=1)


class TermTokenization(Result):
    term: str
    pieces: list[str]
    n_tokens: int


class SentenceReading(Result):
    sentence: str
    tokens: list[TokenInfo]
    surprisal_bits: list[float | None] = Field(description="Per token; None for the first.")


class ModelReading(Result):
    model: str
    terms: list[TermTokenization]
    sentences: list[SentenceReading]
    mean_surprisal_terms: float | None = None
    mean_surprisal_other: float | None = None


class CompareResult(Result):
    models: list[ModelReading]
