"""Several models on the same domain sentences (compatible with the seed's /compare).

The seed's body `{"models": [...], "sentences": [...], "domain_terms": [...]}` is a valid
`CompareRequest`; every other field has a default. Terms are found in the sentences as whole
words, ignoring case unless `match_case`; a term missing from a sentence is reported as absent
(`None`, never 0).
"""

from __future__ import annotations

from pydantic import Field

from backend.schemas.common import DENSITY, Request, Result, TokenInfo


class CompareRequest(Request):
    models: list[str] = Field(min_length=1, description="Catalog model ids, read one after another.")
    sentences: list[str] = Field(min_length=1, description="Domain sentences every model reads.")
    domain_terms: list[str] = Field(default_factory=list, description="Terms to find in the sentences.")
    match_case: bool = Field(False, description="Match terms case-sensitively (default: ignore case).")
    sae_sets: dict[str, str] = Field(default_factory=dict,
                                     description="SAE set per model id; default: the model's first set.")
    sae_layer: int | None = Field(None, ge=0,
                                  description="SAE layer for every model; None: the same relative depth.")
    sae_layers: dict[str, int] = Field(default_factory=dict, description="SAE layer per model id (wins over "
                                                                         "sae_layer).")
    relative_depth: float = Field(0.5, ge=0.0, le=1.0,
                                  description="Depth in the model (0 embeddings, 1 last layer) whose SAE "
                                              "layer is read when no layer is given.")
    k: int = Field(10, ge=1, description="Top features on domain-term tokens, per model.")
    top_guesses: int = Field(5, ge=1, description="Next-token guesses shown where a term starts.")
    specific_max_other_rate: float = Field(
        0.05, ge=0.0, le=1.0,
        description="A feature is specific to the terms if it fires on a term token and on at most this "
                    "fraction of the other tokens of the sentences.")
    include_features: bool = True
    include_explanations: bool = True


class TermTokenization(Result):
    """How a model's tokenizer splits one term on its own, as it reads mid-sentence (' term')."""

    term: str
    pieces: list[str] = Field(description="Tokens covering the term (escape before showing).")
    ids: list[int] = Field(default_factory=list)
    n_tokens: int
    n_words: int = 1
    tokens_per_word: float = 1.0
    pieces_initial: list[str] = Field(default_factory=list,
                                      description="Tokens of the term at the very start of a text.")


class NextTokenGuess(Result):
    id: int
    token: str
    prob: float


class TermOccurrence(Result):
    """One place a term occurs in one sentence, as one model reads it."""

    term: str
    sentence: int = Field(description="Index of the sentence.")
    start: int = Field(description="Character offsets of the term in the sentence.")
    end: int
    positions: list[int] = Field(description="Token positions covering the term's characters.")
    pieces: list[str]
    n_tokens: int
    partial: bool = Field(False, description="A token runs across the term's edge (it is shared with a "
                                             "neighbouring word).")
    bits: float | None = Field(None, description="Surprisal of the whole term, in bits: -log2 p(term | text "
                                                 "before it), the whitespace before it included, so it "
                                                 "compares across tokenizers. None at a text's first token.")
    bits_per_token: float | None = None
    guess_position: int | None = Field(None, description="The token position the guesses are for: the term's "
                                                         "first token, or the whitespace token before it.")
    guesses: list[NextTokenGuess] = Field(default_factory=list,
                                          description="The model's top next tokens where the term starts.")
    actual: str | None = Field(None, description="The token that actually came there.")
    actual_prob: float | None = None
    actual_rank: int | None = Field(None, description="1 = the model's first guess.")


class SentenceReading(Result):
    sentence: str
    index: int = 0
    tokens: list[TokenInfo]
    offsets: list[tuple[int, int]] = Field(default_factory=list, description="Character span per token.")
    surprisal_bits: list[float | None] = Field(description="Per token; None where nothing predicts it "
                                                          "(the first token).")
    predicted: list[str | None] = Field(default_factory=list,
                                        description="Per token, the model's top guess for that position.")
    term_of: list[str | None] = Field(default_factory=list,
                                      description="Per token, the domain term it belongs to (None: other).")
    occurrences: list[TermOccurrence] = Field(default_factory=list)
    absent_terms: list[str] = Field(default_factory=list, description="Domain terms not in this sentence.")


class TermSummary(Result):
    """One term across all sentences, for one model. Absent terms have None, never 0."""

    term: str
    present: bool
    n_occurrences: int = 0
    sentences: list[int] = Field(default_factory=list, description="Sentences the term occurs in.")
    mean_bits: float | None = None
    mean_bits_per_token: float | None = None
    mean_tokens_in_context: float | None = None


class CompareFeature(Result):
    index: int
    mean_on_terms: float = Field(description="Mean activation over every domain-term token.")
    max_on_terms: float
    term_rate: float = Field(description="Fraction of domain-term tokens it fires on.")
    other_rate: float | None = Field(description="Fraction of the other tokens it fires on (None: none).")
    specific: bool
    terms: list[str] = Field(default_factory=list, description="Terms it fires on.")
    explanation: str | None = None
    density: float | None = Field(None, description=DENSITY)
    neuronpedia_url: str | None = None


class FeatureReading(Result):
    sae_set: str
    sae_set_name: str
    layer: int
    hook_name: str
    relative_depth: float
    d_sae: int
    neuronpedia_id: str | None = None
    n_term_tokens: int
    n_other_tokens: int
    n_active_on_terms: int = Field(description="Features firing on at least one domain-term token.")
    n_specific: int = Field(description="How many of the listed top features are specific to the terms.")
    n_specific_all: int = Field(description="Specific features among all that fire on the terms.")
    specific_max_other_rate: float
    features: list[CompareFeature] = Field(description="Top k by mean activation on the term tokens.")
    specific_features: list[CompareFeature] = Field(default_factory=list,
                                                    description="Top k of the specific features alone.")


class ModelReading(Result):
    model: str
    display_name: str = ""
    n_layers: int | None = None
    d_vocab: int | None = None
    label: str | None = Field(None, description="Shown with results from a fallback or special model.")
    terms: list[TermTokenization]
    term_summaries: list[TermSummary] = Field(default_factory=list)
    sentences: list[SentenceReading]
    mean_tokens_per_term: float | None = None
    mean_tokens_per_word: float | None = None
    mean_surprisal_terms: float | None = Field(None, description="Bits per token on domain-term tokens.")
    mean_surprisal_other: float | None = Field(None, description="Bits per token on the other tokens.")
    n_term_tokens: int = 0
    n_other_tokens: int = 0
    features: FeatureReading | None = None
    features_note: str | None = Field(None, description="Why features are missing, when they are.")
    elapsed_ms: float = 0.0


class CompareResult(Result):
    models: list[ModelReading]
    sentences: list[str] = Field(default_factory=list)
    domain_terms: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="Loading and unloading along the way.")
    elapsed_ms: float = 0.0
