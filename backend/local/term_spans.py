"""Where domain terms sit in a text, and which tokens of a model's tokenizer cover them.

Terms are found as whole words (not inside longer words), ignoring case unless asked. A token
covers a term when its character span overlaps the term's characters; a token made only of the
whitespace before a term (tokenizers that split ' H' into ' ' and 'H') does not count towards
the term's fragmentation, but its surprisal does count towards the term's bits, so that a term's
total surprisal is -log2 p(' term' | text before it) whatever the tokenizer.

Nothing here runs a model: these need only a Hugging Face tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from backend.local.analysis import token_texts
from backend.schemas import TermTokenization

Span = tuple[int, int]


@dataclass(frozen=True)
class TermMatch:
    term: str
    start: int
    end: int


def term_pattern(term: str, match_case: bool) -> re.Pattern[str]:
    """`term` as a whole word: not preceded or followed by a letter, digit or underscore."""
    return re.compile(r"(?<!\w)" + re.escape(term) + r"(?!\w)", 0 if match_case else re.IGNORECASE)


def find_terms(text: str, terms: Sequence[str], match_case: bool) -> list[TermMatch]:
    """Every occurrence of every term in `text`, in text order (terms may overlap each other)."""
    found = [TermMatch(term, m.start(), m.end())
             for term in terms for m in term_pattern(term, match_case).finditer(text)]
    return sorted(found, key=lambda t: (t.start, -(t.end - t.start), t.term))


def n_words(term: str) -> int:
    return max(1, len(term.split()))


def decoded_offsets(tok, ids: Sequence[int]) -> list[Span]:
    """Character spans from decoding ever longer prefixes (for tokenizers without offsets)."""
    spans, prev = [], 0
    for i in range(len(ids)):
        end = len(tok.decode(list(ids[:i + 1]), skip_special_tokens=True, clean_up_tokenization_spaces=False))
        spans.append((prev, max(prev, end)))
        prev = max(prev, end)
    return spans


def encode(tok, text: str) -> tuple[list[int], list[Span]]:
    """Token ids of `text` without special tokens, and each token's character span."""
    if getattr(tok, "is_fast", False):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    return ids, decoded_offsets(tok, ids)


def align_offsets(tok, text: str, ids: Sequence[int]) -> list[Span]:
    """Character spans of the tokens `ids` that the model reads for `text` (its special tokens,
    such as a prepended BOS, get the empty span (0, 0))."""
    plain, spans = encode(tok, text)
    extra = len(ids) - len(plain)
    if extra >= 0 and list(ids[extra:]) == plain:
        return [(0, 0)] * extra + spans
    return decoded_offsets(tok, ids)


def overlaps(span: Span, start: int, end: int) -> bool:
    a, b = span
    return b > a and a < end and b > start


def covering(spans: Sequence[Span], start: int, end: int) -> list[int]:
    """Positions of the tokens whose characters overlap [start, end)."""
    return [p for p, span in enumerate(spans) if overlaps(span, start, end)]


def leading_whitespace(text: str, spans: Sequence[Span], first: int) -> list[int]:
    """Whitespace-only tokens directly before position `first` (the term's own space, when the
    tokenizer keeps it apart from the word)."""
    out: list[int] = []
    p = first - 1
    while p >= 0:
        a, b = spans[p]
        if b <= a or text[a:b].strip():
            break
        out.insert(0, p)
        p -= 1
    return out


def is_partial(text: str, spans: Sequence[Span], positions: Sequence[int], start: int, end: int) -> bool:
    """Whether the first or last covering token carries characters of a neighbouring word."""
    if not positions:
        return False
    a = spans[positions[0]][0]
    b = spans[positions[-1]][1]
    return bool(text[a:start].strip()) or bool(text[end:b].strip())


def term_tokenization(tok, term: str) -> TermTokenization:
    """How `tok` splits `term` as it reads mid-sentence (after a space), and at a text's start."""
    text = " " + term
    ids, spans = encode(tok, text)
    keep = covering(spans, 1, len(text))
    pieces = token_texts(tok, [ids[p] for p in keep])
    initial_ids, _ = encode(tok, term)
    words = n_words(term)
    return TermTokenization(
        term=term, pieces=pieces, ids=[ids[p] for p in keep], n_tokens=len(keep), n_words=words,
        tokens_per_word=len(keep) / words, pieces_initial=token_texts(tok, initial_ids),
    )
