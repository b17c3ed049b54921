"""Which SAE features fire on domain-term tokens, and which of them fire rarely anywhere else.

Tallies stay on the device, one vector per statistic over all features (sums and maxima on term
tokens, firing counts on term tokens and on the other tokens, and per term whether it fires), so
only the top k features' figures ever leave it. Special tokens (BOS, ...) count as neither.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from backend.links import neuronpedia_url
from backend.schemas import CompareFeature


class FeatureTally:
    def __init__(self, d_sae: int, terms: Sequence[str], device: str | torch.device) -> None:
        self.terms = list(terms)
        self.d_sae = d_sae
        zeros = torch.zeros(d_sae, device=device)
        self.term_sum = zeros.clone()
        self.term_max = zeros.clone()
        self.term_fires = zeros.clone()
        self.other_fires = zeros.clone()
        self.fires_on_term = torch.zeros(len(self.terms), d_sae, dtype=torch.bool, device=device)
        self.n_term_tokens = 0
        self.n_other_tokens = 0

    def add(self, z: torch.Tensor, token_terms: Sequence[Sequence[int]], special: Sequence[bool]) -> None:
        """Add one sentence: `z` [n_tokens, d_sae]; per token the indices of the terms it belongs to
        (empty: an other token) and whether it is a special token."""
        z = z.float()
        term_rows = [p for p, ts in enumerate(token_terms) if ts and not special[p]]
        other_rows = [p for p, ts in enumerate(token_terms) if not ts and not special[p]]
        if term_rows:
            zt = z[term_rows]
            self.term_sum += zt.clamp(min=0).sum(0)
            self.term_max = torch.maximum(self.term_max, zt.max(0).values)
            self.term_fires += (zt > 0).sum(0)
            for row, p in zip(zt > 0, term_rows):
                for t in token_terms[p]:
                    self.fires_on_term[t] |= row
        if other_rows:
            self.other_fires += (z[other_rows] > 0).sum(0)
        self.n_term_tokens += len(term_rows)
        self.n_other_tokens += len(other_rows)

    def specific_mask(self, max_other_rate: float) -> torch.Tensor:
        """Features firing on a term token and on at most `max_other_rate` of the other tokens
        (nothing is specific when there are no other tokens to compare with)."""
        if self.n_other_tokens == 0:
            return torch.zeros_like(self.term_fires, dtype=torch.bool)
        rate = self.other_fires / self.n_other_tokens
        return (self.term_fires > 0) & (rate <= max_other_rate + 1e-12)

    def top(self, k: int, max_other_rate: float, explanations: dict[int, str], neuronpedia_source: str | None,
            *, only_specific: bool = False) -> list[CompareFeature]:
        """The k features with the highest mean activation on term tokens (of those that fire on
        them; only the specific ones if `only_specific`)."""
        active = self.term_fires > 0
        specific = self.specific_mask(max_other_rate)
        keep = specific if only_specific else active
        n_keep = int(keep.sum())
        if self.n_term_tokens == 0 or n_keep == 0:
            return []
        mean = self.term_sum / self.n_term_tokens
        score = torch.where(keep, mean, torch.full_like(mean, -1.0))
        order = torch.topk(score, min(k, n_keep)).indices.tolist()
        return [CompareFeature(
            index=i,
            mean_on_terms=float(mean[i]),
            max_on_terms=float(self.term_max[i]),
            term_rate=float(self.term_fires[i]) / self.n_term_tokens,
            other_rate=(float(self.other_fires[i]) / self.n_other_tokens) if self.n_other_tokens else None,
            specific=bool(specific[i]),
            terms=[t for j, t in enumerate(self.terms) if bool(self.fires_on_term[j, i])],
            explanation=explanations.get(i),
            neuronpedia_url=neuronpedia_url(neuronpedia_source, i),
        ) for i in order]

    def counts(self, max_other_rate: float) -> tuple[int, int]:
        """(features firing on a term token, how many of those are specific to the terms)."""
        return int((self.term_fires > 0).sum()), int(self.specific_mask(max_other_rate).sum())
