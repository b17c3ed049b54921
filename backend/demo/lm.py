"""The demo pack's language model: token rows from the corpus, training on CPU, and its report.

- `TokenData`: documents tokenised once; every `HOLDOUT_EVERY`-th document is held out. Each
  split is one stream of `[BOS] doc [BOS] doc ...`, cut into rows of `n_ctx` tokens that each
  start with BOS, so position 0 always holds BOS as it does when the app analyses a text.
- `train_model`: AdamW with linear warm-up and cosine decay, a fixed token budget, seeded data
  order, gradient clipping; a HookedTransformer of TransformerLens, trained as is. With `bf16` the
  forward and backward passes run under CPU autocast to bfloat16 (the weights, the optimizer state
  and the saved model stay float32). It only pays on a CPU with AMX or AVX512-BF16: on the
  reference machine's AMD EPYC a step took 15 s against 1.15 s in float32, so the pack's builds
  leave it off.
- `heldout_loss` / `unigram_loss`: nats per predicted token on the held-out rows, for the model
  and for a unigram model fitted on the training tokens (add-one smoothing), on the same targets.
- `sample_generations`: greedy and seeded-sampled continuations of fixed prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

HOLDOUT_EVERY = 25  # document i is held out when i % 25 == 0 (4% of the corpus)

PROMPTS = (
    "The list type",
    "To open a file for reading,",
    "The function returns",
    "import os",
    "This module provides",
    "If the argument is",
)


@dataclass
class TokenData:
    train: torch.Tensor  # [rows, n_ctx] long, each row starting with BOS
    heldout: torch.Tensor
    n_train_tokens: int  # tokens in the training stream (BOS separators included)
    n_heldout_tokens: int
    n_train_docs: int
    n_heldout_docs: int
    unigram_counts: torch.Tensor  # [d_vocab] counts of training tokens

    def describe(self) -> dict[str, int]:
        return {"train_tokens": self.n_train_tokens, "heldout_tokens": self.n_heldout_tokens,
                "train_docs": self.n_train_docs, "heldout_docs": self.n_heldout_docs,
                "train_rows": int(self.train.shape[0]), "heldout_rows": int(self.heldout.shape[0])}


def is_heldout(index: int) -> bool:
    return index % HOLDOUT_EVERY == 0


def _rows(stream: list[int], n_ctx: int, bos: int) -> torch.Tensor:
    width = n_ctx - 1
    n = len(stream) // width
    body = torch.tensor(stream[: n * width], dtype=torch.long).view(n, width)
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), body], dim=1)


def _stream(docs: list[str], tokenizer: Any, bos: int, desc: str) -> list[int]:
    stream: list[int] = []
    batch = 256
    for start in tqdm(range(0, len(docs), batch), desc=desc, unit="batch", leave=False):
        for ids in tokenizer(docs[start:start + batch], add_special_tokens=False)["input_ids"]:
            stream.extend([bos, *ids])
    return stream


def heldout_rows(docs: list[str], tokenizer: Any, n_ctx: int, bos: int) -> torch.Tensor:
    """The held-out rows of a corpus, exactly as the build cut them."""
    held = [d for i, d in enumerate(docs) if is_heldout(i)]
    return _rows(_stream(held, tokenizer, bos, "tokenising held-out"), n_ctx, bos)


def tokenize(docs: list[str], tokenizer: Any, n_ctx: int, bos: int, d_vocab: int) -> TokenData:
    """Tokenise the documents (fast tokenizer, batched) and cut both splits into rows."""
    train = _stream([d for i, d in enumerate(docs) if not is_heldout(i)], tokenizer, bos, "tokenising")
    held = _stream([d for i, d in enumerate(docs) if is_heldout(i)], tokenizer, bos, "tokenising held-out")
    n_held = sum(is_heldout(i) for i in range(len(docs)))
    counts = torch.bincount(torch.tensor(train, dtype=torch.long), minlength=d_vocab)
    return TokenData(
        train=_rows(train, n_ctx, bos), heldout=_rows(held, n_ctx, bos),
        n_train_tokens=len(train), n_heldout_tokens=len(held),
        n_train_docs=len(docs) - n_held, n_heldout_docs=n_held, unigram_counts=counts,
    )


@dataclass
class TrainReport:
    steps: int
    tokens: int
    batch_rows: int
    lr: float
    final_train_loss: float
    curve: list[tuple[int, float]]  # (step, smoothed training loss)


def train_model(model: Any, rows: torch.Tensor, *, tokens: int, batch_rows: int, lr: float,
                seed: int, warmup_frac: float = 0.05, weight_decay: float = 0.1, bf16: bool = False,
                progress: Callable[[float], None] | None = None) -> TrainReport:
    """Train `model` in place on random rows of `rows` until `tokens` tokens have been seen."""
    n_ctx = rows.shape[1]
    steps = max(1, tokens // (batch_rows * n_ctx))
    warmup = max(1, int(steps * warmup_frac))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "W_pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "W_pos" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(rows.shape[0], generator=gen)
    cursor = 0
    smooth: float | None = None
    curve: list[tuple[int, float]] = []
    model.train()
    bar = tqdm(range(steps), desc="training the model", unit="step")
    for step in bar:
        if cursor + batch_rows > len(order):
            order, cursor = torch.randperm(rows.shape[0], generator=gen), 0
        batch = rows[order[cursor:cursor + batch_rows]]
        cursor += batch_rows
        scale = (step + 1) / warmup if step < warmup else \
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = float(loss.detach())
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{smooth:.3f}")
            curve.append((step, round(smooth, 4)))
        if progress is not None:
            progress((step + 1) / steps)
    model.eval()
    return TrainReport(steps=steps, tokens=steps * batch_rows * n_ctx, batch_rows=batch_rows, lr=lr,
                       final_train_loss=float(smooth or 0.0), curve=curve)


@torch.no_grad()
def heldout_loss(model: Any, rows: torch.Tensor, batch_rows: int = 16) -> float:
    """Mean next-token loss (nats) over every predicted position of the held-out rows."""
    total, count = 0.0, 0
    for start in range(0, rows.shape[0], batch_rows):
        per_token = model(rows[start:start + batch_rows], return_type="loss", loss_per_token=True)
        total += float(per_token.double().sum())
        count += per_token.numel()
    return total / max(1, count)


def unigram_loss(counts: torch.Tensor, rows: torch.Tensor) -> float:
    """Cross-entropy (nats) of the held-out targets under add-one-smoothed training frequencies."""
    probs = (counts.double() + 1) / (counts.double().sum() + counts.numel())
    targets = rows[:, 1:].reshape(-1)
    return float(-probs.log()[targets].mean())


@torch.no_grad()
def sample_generations(model: Any, seed: int, new_tokens: int, prompts: tuple[str, ...] = PROMPTS
                       ) -> list[dict[str, str]]:
    """For each prompt, a greedy and a sampled (temperature 0.8, top-k 40, seeded) continuation."""
    out = []
    for i, prompt in enumerate(prompts):
        tokens = model.to_tokens(prompt, prepend_bos=True)
        greedy = model.generate(tokens, max_new_tokens=new_tokens, do_sample=False, verbose=False,
                                stop_at_eos=False)
        torch.manual_seed(seed + i)
        sampled = model.generate(tokens, max_new_tokens=new_tokens, do_sample=True, temperature=0.8,
                                 top_k=40, verbose=False, stop_at_eos=False)
        n = tokens.shape[1]
        out.append({"prompt": prompt,
                    "greedy": model.tokenizer.decode(greedy[0, n:].tolist()),
                    "sampled": model.tokenizer.decode(sampled[0, n:].tolist())})
    return out
