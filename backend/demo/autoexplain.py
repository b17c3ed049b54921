"""Automatic feature explanations from top examples and top logits (no language model involved).

For one dictionary, features are run over a sample of corpus rows. Each feature's top examples
(its largest activations) are summarised by what they share:

- the activating token itself (`"import"`), or a small set of tokens (`"(", "["`);
- the token before it (`after "the"`), alone or with the token (`"open" after "the"`);
- a token class (a number, a Python keyword, a capitalised word, a word continuation, ...);
- failing all of these, the most common tokens (`mixed: ...`).

Each explanation carries its precision (share of the top examples it describes) and, for
single-token explanations, its recall (share of that token's occurrences in the sample on which
the feature fires). The top logits are the tokens whose logits the feature's decoder direction
raises most through the unembedding (after the final LayerNorm's centring and weight), appended
as `→ promotes ...`. Tokens are compared lower-cased with surrounding whitespace stripped.
"""

from __future__ import annotations

import keyword
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

TOP_N = 24
MIN_FIRINGS = 4

_CLASSES: list[tuple[str, Callable[[str], bool]]] = [
    ("a Python keyword", lambda s: s.strip() in keyword.kwlist),
    ("a number", lambda s: bool(s.strip()) and s.strip().replace(".", "").replace(",", "").isdigit()),
    ("an opening bracket", lambda s: bool(s.strip()) and all(c in "([{" for c in s.strip())),
    ("a closing bracket", lambda s: bool(s.strip()) and all(c in ")]}" for c in s.strip())),
    ("punctuation", lambda s: bool(s.strip()) and all(c in string.punctuation for c in s.strip())),
    ("an all-caps word", lambda s: len(s.strip()) > 1 and s.strip().isalpha() and s.strip().isupper()),
    ("a capitalised word", lambda s: s.strip()[:1].isupper() and s.strip()[1:].islower()),
    ("part of an identifier with underscores", lambda s: "_" in s),
    ("a word continuation (no leading space)", lambda s: s.isalpha() and not s.startswith(" ")),
    ("a word after a space", lambda s: s.startswith(" ") and s[1:].isalpha()),
    ("whitespace", lambda s: s != "" and s.strip() == ""),
]


def _key(text: str) -> str:
    stripped = text.strip().lower()
    return stripped if stripped else text


def _quote(text: str) -> str:
    shown = text.strip() or repr(text)[1:-1]
    return '"' + shown.replace('"', '\\"') + '"'


@dataclass
class FeatureEvidence:
    index: int
    firings: int  # active tokens in the sample
    density: float
    top: list[tuple[float, int]] = field(default_factory=list)  # (activation, flat position)
    promotes: list[str] = field(default_factory=list)
    fired_tokens: torch.Tensor | None = None  # token ids at every position where it fires


@dataclass
class Explanation:
    text: str
    kind: str  # token | tokens | after | token_after | class | mixed | rare | dead
    precision: float
    recall: float | None

    @property
    def score(self) -> float:
        return self.precision * (self.recall if self.recall is not None else 0.5)


@torch.no_grad()
def sparse_activations(encode: Callable[[torch.Tensor], torch.Tensor], acts: torch.Tensor, chunk: int = 8192
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(position, feature, value) of every non-zero activation of `encode` over `acts` [n, d]."""
    pos, feat, val = [], [], []
    for start in range(0, acts.shape[0], chunk):
        z = encode(acts[start:start + chunk])
        nz = z.nonzero()
        pos.append(nz[:, 0] + start)
        feat.append(nz[:, 1])
        val.append(z[nz[:, 0], nz[:, 1]])
    return torch.cat(pos), torch.cat(feat), torch.cat(val).float()


def promoted_tokens(model: Any, w_dec: torch.Tensor, readable: torch.Tensor, k: int = 5) -> torch.Tensor:
    """[d_dict, k] token ids whose logits each decoder direction raises most, among the tokens
    marked `readable` (byte pieces that are not whole characters are skipped)."""
    directions = w_dec - w_dec.mean(-1, keepdim=True)
    directions = directions * model.ln_final.w
    logits = directions @ model.W_U
    logits[:, ~readable] = -torch.inf
    return logits.topk(k, dim=-1).indices


def gather_evidence(pos: torch.Tensor, feat: torch.Tensor, val: torch.Tensor, tokens: torch.Tensor,
                    d_dict: int, promotes: torch.Tensor, decode_one: Callable[[int], str]
                    ) -> list[FeatureEvidence]:
    """Per feature: firing count, top examples (largest first, ties by position) and top logits."""
    order = torch.sort(val, descending=True, stable=True).indices
    order = order[torch.sort(feat[order], stable=True).indices]  # by feature, then activation desc
    pos_sorted, val_sorted = pos[order], val[order]
    counts = torch.bincount(feat, minlength=d_dict).tolist()
    out = []
    start = 0
    for f in range(d_dict):
        n = counts[f]
        end = start + min(n, TOP_N)
        top = list(zip(val_sorted[start:end].tolist(), pos_sorted[start:end].tolist()))
        out.append(FeatureEvidence(index=f, firings=n, density=n / max(1, tokens.numel()), top=top,
                                   promotes=[decode_one(int(t)) for t in promotes[f]],
                                   fired_tokens=tokens[pos_sorted[start:start + n]]))
        start += n
    return out


def explain(ev: FeatureEvidence, tokens: torch.Tensor, n_ctx: int, decode_one: Callable[[int], str],
            token_counts: torch.Tensor) -> Explanation:
    """One explanation from a feature's top examples (`token_counts`: occurrences of each token
    id in the sample, for the recall of single-token explanations)."""
    if ev.firings == 0:
        return Explanation("dead: never fires on the sample", "dead", 0.0, None)
    cur = [decode_one(int(tokens[p])) for _, p in ev.top]
    prev = [decode_one(int(tokens[p - 1])) if p % n_ctx > 0 else "" for _, p in ev.top]
    n = len(cur)
    cur_keys, prev_keys = Counter(_key(t) for t in cur), Counter(_key(t) for t in prev if t)
    (c1, c1n), = cur_keys.most_common(1)
    p1, p1n = prev_keys.most_common(1)[0] if prev_keys else ("", 0)
    shown = {_key(t): t for t in cur}
    shown_prev = {_key(t): t for t in prev if t}
    promotes = ", ".join(_quote(t) for t in ev.promotes[:3])
    tail = f" → promotes {promotes}" if promotes else ""
    rare = f" (rare: {ev.firings} firings in the sample)" if ev.firings < MIN_FIRINGS else ""

    if c1n / n >= 0.5:
        top_id = next(int(tokens[p]) for _, p in ev.top if _key(decode_one(int(tokens[p]))) == c1)
        fires = int((ev.fired_tokens == top_id).sum()) if ev.fired_tokens is not None else 0
        total = int(token_counts[top_id]) if top_id < token_counts.numel() else 0
        recall = fires / total if total else None
        if p1n / n >= 0.5:
            text = f"{_quote(shown[c1])} after {_quote(shown_prev[p1])}"
            return Explanation(text + tail + rare, "token_after", min(c1n, p1n) / n, recall)
        return Explanation(f"the token {_quote(shown[c1])}" + tail + rare, "token", c1n / n, recall)
    if p1n / n >= 0.5:
        classes = [(name, sum(test(t) for t in cur) / n) for name, test in _CLASSES]
        name, share = max(classes, key=lambda c: c[1])
        what = name if share >= 0.6 else "a token"
        return Explanation(f"{what} after {_quote(shown_prev[p1])}" + tail + rare, "after", p1n / n, None)
    common = cur_keys.most_common(4)
    covered = 0
    for i, (_, count) in enumerate(common):
        covered += count
        if covered / n >= 0.6 and i >= 1:
            names = ", ".join(_quote(shown[key]) for key, _ in common[:i + 1])
            return Explanation(f"tokens {names}" + tail + rare, "tokens", covered / n, None)
    for name, test in _CLASSES:
        share = sum(test(t) for t in cur) / n
        if share >= 0.6:
            return Explanation(name + tail + rare, "class", share, None)
    names = ", ".join(_quote(shown[key]) for key, _ in common[:3])
    return Explanation(f"mixed: {names}" + tail + rare, "mixed", sum(c for _, c in common[:3]) / n, None)


def context(tokens: torch.Tensor, pos: int, n_ctx: int, decode_one: Callable[[int], str],
            before: int = 10, after: int = 3) -> str:
    """Text around one position with the activating token in [[...]] (for the card)."""
    row_start = pos - pos % n_ctx
    lo, hi = max(row_start + 1, pos - before), min(row_start + n_ctx, pos + after + 1)
    left = "".join(decode_one(int(t)) for t in tokens[lo:pos])
    right = "".join(decode_one(int(t)) for t in tokens[pos + 1:hi])
    return f"{left}[[{decode_one(int(tokens[pos]))}]]{right}"
