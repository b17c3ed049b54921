"""Token-by-token generation with a KV cache, recording the top-k next tokens at every position.

`generate` runs the prompt pass with `prompt_hooks` and every one-token step with `step_hooks`
(each list added with `model.hooks(...)`, so none outlives the call). It samples with its own
`torch.Generator`, so no global random state is touched, following TransformerLens'
`sample_logits`: logits / temperature, minus freq_penalty x the token's count so far (prompt
included); temperature 0 is greedy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from backend.errors import InvalidRequest
from backend.local import steer_metrics
from backend.local.interventions import Hook

NON_FINITE_ADVICE = steer_metrics.NON_FINITE_ADVICE


def _finite(logits: torch.Tensor) -> torch.Tensor:
    """`logits`, or InvalidRequest when an edit made them overflow (sampling would fail, and greedy
    decoding would answer NaN probabilities)."""
    if not bool(torch.isfinite(logits).all()):
        raise InvalidRequest(NON_FINITE_ADVICE)
    return logits


@dataclass
class Generation:
    ids: list[int]  # prompt and generated tokens
    prompt_logits: torch.Tensor  # [n_prompt, vocab], on the device
    top_ids: list[list[int]]  # per position, the top-k next tokens (empty past an EOS stop)
    top_probs: list[list[float]]


def _sample(
    logits: torch.Tensor, counts: torch.Tensor, temperature: float, freq_penalty: float, gen: torch.Generator
) -> torch.Tensor:
    """The next token as a [1, 1] tensor on the logits' device (fed to the next step as it is)."""
    if temperature == 0.0:
        return logits.argmax().view(1, 1)
    scaled = logits.float() / temperature
    if freq_penalty:
        scaled = scaled - freq_penalty * counts
    if not bool(torch.isfinite(scaled).all()):  # finite logits / a small temperature can still overflow
        advice = NON_FINITE_ADVICE.replace("frequency penalty", "frequency penalty, or raise the temperature")
        raise InvalidRequest(advice)
    return torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=gen).view(1, 1)


def generate(
    model,
    prompt: torch.Tensor,
    *,
    n_tokens: int,
    temperature: float,
    freq_penalty: float,
    seed: int,
    top_k: int,
    prompt_hooks: Sequence[Hook] = (),
    step_hooks: Sequence[Hook] = (),
    stop_at_eos: bool = True,
) -> Generation:
    """Generate `n_tokens` after `prompt` [1, n] with a KV cache; call under the model's lock.
    The last forward also reads the last token, so every position has its top-k."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    device = prompt.device
    gen = torch.Generator(device=device).manual_seed(seed)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    eos = model.tokenizer.eos_token_id if (stop_at_eos and model.tokenizer is not None) else None
    ids = prompt[0].tolist()
    with torch.inference_mode():
        with model.hooks(fwd_hooks=list(prompt_hooks)):
            logits = _finite(model(prompt, past_kv_cache=cache)[0])
        prompt_logits = logits
        top_ids, top_probs = steer_metrics.top_k_table(logits, top_k)
        counts = torch.bincount(prompt[0], minlength=logits.shape[-1]).float() if freq_penalty else None
        last = logits[-1]
        steps: list[tuple[torch.Tensor, torch.Tensor]] = []  # each step's top-k, kept on the device
        finite = torch.ones((), dtype=torch.bool, device=device)
        ended = False
        with model.hooks(fwd_hooks=list(step_hooks)):
            for _ in range(n_tokens):
                token_t = _sample(last, counts, temperature, freq_penalty, gen)
                token = int(token_t)  # the one host sync per step: the sampled token
                ids.append(token)
                if counts is not None:
                    counts[token] += 1
                if eos is not None and token == eos:
                    ended = True
                    break
                step = model(token_t, past_kv_cache=cache)[0]
                finite &= torch.isfinite(step).all()  # stays on the device: checked once, after the loop
                if top_k > 0:
                    steps.append(steer_metrics.top_k_tensors(step, top_k))
                last = step[-1]
        if not bool(finite):
            raise InvalidRequest(NON_FINITE_ADVICE)
        n_steps = len(ids) - prompt.shape[1] - (1 if ended else 0)
        if top_k > 0 and steps:
            top_ids += torch.cat([i for i, _ in steps]).tolist()
            top_probs += torch.cat([p for _, p in steps]).tolist()
        elif n_steps:
            top_ids += [[] for _ in range(n_steps)]
            top_probs += [[] for _ in range(n_steps)]
        if ended:
            top_ids.append([])
            top_probs.append([])
    return Generation(ids=ids, prompt_logits=prompt_logits, top_ids=top_ids, top_probs=top_probs)
