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
DENSE = 0.1  # explanations of features firing on more of the sample say so

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
    fired_prev: torch.Tensor | None = None  # the token before each of them (-1 at a row start)


@dataclass
class Explanation:
    text: str
    kind: str  # token | tokens | after | token_after | class | mixed | dead
    precision: float  # share of the top examples described
    recall: float | None  # single tokens: share of the token's occurrences on which it fires
    coverage: float = 0.0  # share of all its firings in the sample described

    @property
    def score(self) -> float:
        """How checkable by eye: it describes its top examples and most of its firings."""
        return self.precision * self.coverage * (self.recall if self.recall is not None else 0.75)


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
                    n_ctx: int, n_tokens: int, d_dict: int, promotes: torch.Tensor,
                    decode_one: Callable[[int], str]) -> list[FeatureEvidence]:
    """Per feature: firing count and density (over `n_tokens` explained positions), top examples
    (largest first, ties by position) and top logits."""
    order = torch.sort(val, descending=True, stable=True).indices
    order = order[torch.sort(feat[order], stable=True).indices]  # by feature, then activation desc
    pos_sorted, val_sorted = pos[order], val[order]
    counts = torch.bincount(feat, minlength=d_dict).tolist()
    prev = torch.cat([torch.full((1,), -1), tokens[:-1]])
    prev[::n_ctx] = -1  # rows are independent: nothing comes before a row's first token
    out = []
    start = 0
    for f in range(d_dict):
        n = counts[f]
        end = start + min(n, TOP_N)
        top = list(zip(val_sorted[start:end].tolist(), pos_sorted[start:end].tolist()))
        all_pos = pos_sorted[start:start + n]
        out.append(FeatureEvidence(index=f, firings=n, density=n / max(1, n_tokens), top=top,
                                   promotes=[decode_one(int(t)) for t in promotes[f]],
                                   fired_tokens=tokens[all_pos], fired_prev=prev[all_pos]))
        start += n
    return out


class Vocab:
    """Per token id: its text, its comparison key and its token classes (for whole-sample checks)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        keys = [_key(t) for t in texts]
        ids: dict[str, int] = {}
        self.key_index = torch.tensor([ids.setdefault(k, len(ids)) for k in keys])
        self.classes = {name: torch.tensor([test(t) for t in texts]) for name, test in _CLASSES}

    def __call__(self, token_id: int) -> str:
        return self.texts[token_id]


def _share(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else 0.0


def explain(ev: FeatureEvidence, tokens: torch.Tensor, n_ctx: int, vocab: Vocab,
            token_counts: torch.Tensor) -> Explanation:
    """One explanation from a feature's top examples (`token_counts`: occurrences of each token
    id in the sample, for the recall of single-token explanations). Its `coverage` is the share of
    all the feature's firings in the sample (not only the top ones) that the explanation describes."""
    if ev.firings == 0:
        return Explanation("dead: never fires on the sample", "dead", 0.0, None)
    top_ids = [int(tokens[p]) for _, p in ev.top]
    prev_ids = [int(tokens[p - 1]) if p % n_ctx > 0 else -1 for _, p in ev.top]
    cur = [vocab(i) for i in top_ids]
    n = len(cur)
    cur_keys = Counter(_key(t) for t in cur)
    prev_keys = Counter(_key(vocab(i)) for i in prev_ids if i >= 0)
    (c1, c1n), = cur_keys.most_common(1)
    p1, p1n = prev_keys.most_common(1)[0] if prev_keys else ("", 0)
    shown = {_key(t): t for t in cur}
    shown_prev = {_key(vocab(i)): vocab(i) for i in prev_ids if i >= 0}
    fired = ev.fired_tokens if ev.fired_tokens is not None else torch.zeros(0, dtype=torch.long)
    fired_prev = ev.fired_prev if ev.fired_prev is not None else torch.full_like(fired, -1)
    fired_keys = vocab.key_index[fired]
    prev_keys_all = torch.where(fired_prev >= 0, vocab.key_index[fired_prev.clamp_min(0)], -1)

    def key_id(text: str) -> int:
        return int(vocab.key_index[next(i for i in top_ids + prev_ids if i >= 0 and _key(vocab(i)) == text)])

    promotes = ", ".join(_quote(t) for t in ev.promotes[:3])
    tail = f" → promotes {promotes}" if promotes else ""
    if ev.firings < MIN_FIRINGS:
        tail += f" (rare: {ev.firings} firings in the sample)"
    elif ev.density >= DENSE:
        tail += f" (dense: fires on {ev.density:.0%} of tokens)"

    if c1n / n >= 0.5:
        top_id = next(i for i in top_ids if _key(vocab(i)) == c1)
        total = int(token_counts[top_id]) if top_id < token_counts.numel() else 0
        recall = int((fired == top_id).sum()) / total if total else None
        on_token = fired_keys == key_id(c1)
        if p1n / n >= 0.5:
            text = f"{_quote(shown[c1])} after {_quote(shown_prev[p1])}"
            return Explanation(text + tail, "token_after", min(c1n, p1n) / n, recall,
                               _share(on_token & (prev_keys_all == key_id(p1))))
        return Explanation(f"the token {_quote(shown[c1])}" + tail, "token", c1n / n, recall,
                           _share(on_token))
    if p1n / n >= 0.5:
        classes = [(name, sum(test(t) for t in cur) / n) for name, test in _CLASSES]
        name, share = max(classes, key=lambda c: c[1])
        what = name if share >= 0.6 else "a token"
        return Explanation(f"{what} after {_quote(shown_prev[p1])}" + tail, "after", p1n / n, None,
                           _share(prev_keys_all == key_id(p1)))
    common = cur_keys.most_common(4)
    covered = 0
    for i, (_, count) in enumerate(common):
        covered += count
        if covered / n >= 0.6 and i >= 1:
            names = ", ".join(_quote(shown[key]) for key, _ in common[:i + 1])
            wanted = torch.tensor([key_id(key) for key, _ in common[:i + 1]])
            return Explanation(f"tokens {names}" + tail, "tokens", covered / n, None,
                               _share(torch.isin(fired_keys, wanted)))
    for name, test in _CLASSES:
        share = sum(test(t) for t in cur) / n
        if share >= 0.6:
            return Explanation(name + tail, "class", share, None, _share(vocab.classes[name][fired]))
    names = ", ".join(_quote(shown[key]) for key, _ in common[:3])
    return Explanation(f"mixed: {names}" + tail, "mixed", sum(c for _, c in common[:3]) / n, None)


def context(tokens: torch.Tensor, pos: int, n_ctx: int, decode_one: Callable[[int], str],
            before: int = 10, after: int = 3) -> str:
    """Text around one position with the activating token in [[...]] (for the card)."""
    row_start = pos - pos % n_ctx
    lo, hi = max(row_start + 1, pos - before), min(row_start + n_ctx, pos + after + 1)
    left = "".join(decode_one(int(t)) for t in tokens[lo:pos])
    right = "".join(decode_one(int(t)) for t in tokens[pos + 1:hi])
    return f"{left}[[{decode_one(int(tokens[pos]))}]]{right}"
