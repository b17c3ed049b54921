"""The cost of an intervention, from the default and steered logits of the same tokens.

Definitions (shared by the playground and the experiments, so their numbers agree):
- cross-entropy: mean over positions t = 0..n-2 of -log p(token[t+1] | tokens[..t]);
- KL: mean over positions t = 0..n-1 of KL(P_default(t) || P_steered(t));
- logit deltas: the mean over positions of the change in the centred logit (the logit minus its
  mean over the vocabulary, so a shift common to every token does not count).

Batches carry a `valid` mask [batch, seq] (True on real tokens, False on padding); every sum
skips invalid positions, and `Sums` adds up across batches so means are token-weighted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backend.errors import InvalidRequest

NON_FINITE_ADVICE = (
    "The run produced non-finite logits (inf or NaN): the model overflowed. Lower the steering "
    "amounts (delta, set_value, alpha or alphas) or the frequency penalty, and try again."
)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1)


def token_ce(logp: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[batch, seq-1]: -log p of each next token."""
    return -logp[:, :-1].gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


def token_kl(logp_default: torch.Tensor, logp_steered: torch.Tensor) -> torch.Tensor:
    """[batch, seq]: KL(default || steered) at each position."""
    return F.kl_div(logp_steered, logp_default, log_target=True, reduction="none").sum(-1)


def centred(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits - logits.mean(-1, keepdim=True)


@dataclass
class Sums:
    """Running sums of the metrics over tokens (and batches)."""

    ce_default: float = 0.0
    ce_steered: float = 0.0
    n_predicted: int = 0
    kl: float = 0.0
    n_positions: int = 0
    logit_delta: torch.Tensor | None = None  # [vocab] sum over positions, on the CPU

    def add(self, other: Sums) -> None:
        self.ce_default += other.ce_default
        self.ce_steered += other.ce_steered
        self.n_predicted += other.n_predicted
        self.kl += other.kl
        self.n_positions += other.n_positions
        if other.logit_delta is not None:
            self.logit_delta = (
                other.logit_delta.clone()
                if self.logit_delta is None
                else self.logit_delta + other.logit_delta
            )

    def means(self) -> dict[str, float]:
        ce_d = self.ce_default / self.n_predicted if self.n_predicted else 0.0
        ce_s = self.ce_steered / self.n_predicted if self.n_predicted else 0.0
        return {
            "ce_loss_default": ce_d,
            "ce_loss_steered": ce_s,
            "delta_ce_loss": ce_s - ce_d,
            "kl": self.kl / self.n_positions if self.n_positions else 0.0,
        }

    def mean_logit_delta(self) -> torch.Tensor | None:
        if self.logit_delta is None or not self.n_positions:
            return None
        return self.logit_delta / self.n_positions


def batch_sums(
    default_logits: torch.Tensor,
    steered_logits: torch.Tensor,
    tokens: torch.Tensor,
    valid: torch.Tensor,
    default_logp: torch.Tensor | None = None,
) -> tuple[Sums, torch.Tensor]:
    """Sums for one batch, and the per-position KL [batch, seq] (0 where invalid)."""
    logp_d = log_probs(default_logits) if default_logp is None else default_logp
    logp_s = log_probs(steered_logits)
    pred = valid[:, :-1] & valid[:, 1:]
    ce_d = (token_ce(logp_d, tokens) * pred).sum()
    ce_s = (token_ce(logp_s, tokens) * pred).sum()
    kl = token_kl(logp_d, logp_s) * valid
    delta = ((centred(steered_logits) - centred(default_logits)) * valid.unsqueeze(-1)).sum((0, 1))
    totals = (float(ce_d), float(ce_s), float(kl.sum()))
    if not all(map(math.isfinite, totals)) or not bool(torch.isfinite(delta).all()):
        # An edit overflowed the model (float16 does past 65504): say what to lower, never answer NaN.
        raise InvalidRequest(NON_FINITE_ADVICE)
    sums = Sums(
        ce_default=float(ce_d),
        ce_steered=float(ce_s),
        n_predicted=int(pred.sum()),
        kl=float(kl.sum()),
        n_positions=int(valid.sum()),
        logit_delta=delta.cpu(),
    )
    return sums, kl


def top_deltas(
    mean_delta: torch.Tensor | None, decode: Callable[[list[int]], list[str]], n: int = 5
) -> list[tuple[str, float]]:
    """The `n` most raised tokens (largest first), then the `n` most lowered (most negative first);
    only tokens whose logit moved at all."""
    if mean_delta is None:
        return []
    up = torch.topk(mean_delta, min(n, mean_delta.numel()))
    down = torch.topk(-mean_delta, min(n, mean_delta.numel()))
    ids = [i for i, v in zip(up.indices.tolist(), up.values.tolist()) if v > 0]
    ids += [i for i, v in zip(down.indices.tolist(), down.values.tolist()) if v > 0]
    texts = decode(ids)
    return [(t, float(mean_delta[i])) for t, i in zip(texts, ids)]


def top_k_table(logits: torch.Tensor, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """Per position [seq, vocab] -> the top-k next-token ids and probabilities, as lists."""
    if k <= 0:
        return [[] for _ in range(logits.shape[0])], [[] for _ in range(logits.shape[0])]
    ids, probs = top_k_tensors(logits, k)
    return ids.tolist(), probs.tolist()


def top_k_tensors(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`top_k_table` left on the device (k >= 1): gather many steps' tables, then copy them once."""
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, min(k, probs.shape[-1]), dim=-1)
    return top.indices, top.values
