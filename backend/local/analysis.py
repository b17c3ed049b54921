"""Text -> per-token top-k SAE features, for any number of layers in ONE forward pass.

Each SAE layer gets a forward hook that encodes the activations passing through, keeps the top k
per token and the tracked features' columns on the device, and returns nothing (the forward pass
is not modified). The pass stops after the deepest hooked block (`stop_at_layer`), so no logits
are computed when none are needed. Only k values and indices per token leave the device.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from backend.errors import InvalidRequest, LimitExceeded
from backend.local import density
from backend.local.dictionaries import FeatureDictionary
from backend.protocol import Progress
from backend.schemas import AnalyzeRequest, AnalyzeResult, LayerTopK, TokenInfo, TrackedActivations

if TYPE_CHECKING:
    from backend.local.runtime import Runtime

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def stop_layer(hook_names: Sequence[str]) -> int | None:
    """The `stop_at_layer` that still runs every hook in `hook_names` (None: run everything)."""
    deepest = -1
    for name in hook_names:
        m = _BLOCK.match(name)
        if m:
            deepest = max(deepest, int(m.group(1)))
        elif name in ("hook_embed", "hook_pos_embed", "hook_tokens"):
            continue
        else:
            return None
    return deepest + 1


@dataclass
class Tokenized:
    ids: torch.Tensor  # [batch, seq] fed to the model (one row, or one row per window)
    n_tokens: int  # real tokens, in order, when the rows are flattened
    tokens: list[TokenInfo]
    window: int | None


def token_texts(tok, ids: Sequence[int]) -> list[str]:
    """Each token's own text, exactly as decoded (no clean-up of spaces), in one call when the
    tokenizer is a fast one."""
    backend_tok = getattr(tok, "backend_tokenizer", None)
    if backend_tok is not None:
        return backend_tok.decode_batch([[i] for i in ids], skip_special_tokens=False)
    return [tok.decode([i], clean_up_tokenization_spaces=False) for i in ids]


def tokenize(model, text: str, *, prepend_bos: bool, window: int | None, max_tokens: int) -> Tokenized:
    """Tokenise `text`, refusing what exceeds the limits, optionally into fixed windows.

    Windowed mode follows the Modal design: no BOS, the text cut into windows of `window` tokens
    that are run independently, the last one padded with the pad (EOS) token.
    """
    tok = model.tokenizer
    if tok is None:
        raise InvalidRequest("This model has no tokenizer; it cannot read text.")
    if window:
        ids = tok(text, add_special_tokens=False)["input_ids"]
    else:
        ids = model.to_tokens(text, prepend_bos=prepend_bos, truncate=False)[0].tolist()
    n = len(ids)
    if n == 0:
        raise InvalidRequest("The text produced no tokens. Type some text.")
    limit = max_tokens if window else min(max_tokens, model.cfg.n_ctx)
    if n > limit:
        which = "FEATURESCOPE_MAX_PROMPT_TOKENS" if limit == max_tokens else "the model's context"
        raise LimitExceeded("The text (tokens)", n, limit, f"Shorten it; the limit is {which}.")
    special = set(tok.all_special_ids)
    pieces = token_texts(tok, ids)
    tokens = [TokenInfo.model_construct(position=p, id=i, text=s, special=i in special)  # typed already:
              for p, (i, s) in enumerate(zip(ids, pieces))]  # ints, str, bool; no re-validation per token
    if window:
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        rows = [ids[i:i + window] for i in range(0, n, window)]
        rows[-1] = rows[-1] + [pad] * (window - len(rows[-1]))
        tensor = torch.tensor(rows, dtype=torch.long)
    else:
        tensor = torch.tensor([ids], dtype=torch.long)
    return Tokenized(ids=tensor.to(model.cfg.device), n_tokens=n, tokens=tokens, window=window)


def run_dictionaries(
    model,
    dictionaries: Sequence[FeatureDictionary],
    tokens: Tokenized,
    k: int,
    track: dict[int, list[int]],
) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """One forward pass with every dictionary hooked in; per layer (top values, top indices,
    tracked columns), each [n_tokens, ...] on the CPU. Call under the model's lock."""
    captured: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    def make_hook(d: FeatureDictionary):
        kk = min(k, d.d_sae)
        cols = track.get(d.layer)
        col_idx = torch.tensor(cols, device=model.cfg.device) if cols else None

        def hook(act: torch.Tensor, hook) -> None:
            z = d.encode(act)
            top = torch.topk(z, kk, dim=-1)
            tracked = z.index_select(-1, col_idx) if col_idx is not None else None
            captured[d.layer] = (top.values, top.indices, tracked)

        return hook

    bad = [c for d in dictionaries for c in track.get(d.layer, []) if c >= d.d_sae]
    if bad:
        raise InvalidRequest(f"Feature index {bad[0]} is out of range; the SAE has "
                             f"{dictionaries[0].d_sae} features (0–{dictionaries[0].d_sae - 1}).")
    fwd_hooks = [(d.hook_name, make_hook(d)) for d in dictionaries]
    with torch.inference_mode(), model.hooks(fwd_hooks=fwd_hooks):
        model(tokens.ids, return_type=None, stop_at_layer=stop_layer([d.hook_name for d in dictionaries]))
    return _to_host(captured, tokens.n_tokens)


def _to_host(captured: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], n: int,
             ) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Every layer's (values, indices, tracked) on the CPU, [n, ...] each, in two device->host copies
    (one of all the values, one of all the indices) instead of three per layer: on a GPU each copy is
    a synchronisation. Values become float32 on the device; the numbers are those of per-layer copies."""
    if not captured:
        return {}
    layers = list(captured)
    vals = [captured[layer][0].reshape(-1, captured[layer][0].shape[-1])[:n].float() for layer in layers]
    idx = [captured[layer][1].reshape(-1, captured[layer][1].shape[-1])[:n] for layer in layers]
    tracked = [captured[layer][2] for layer in layers]
    tracked = [None if t is None else t.reshape(-1, t.shape[-1])[:n].float() for t in tracked]
    floats = [v.reshape(-1) for v in vals] + [t.reshape(-1) for t in tracked if t is not None]
    flat_vals = torch.cat(floats).cpu() if len(floats) > 1 else floats[0].cpu()
    flat_idx = torch.cat([i.reshape(-1) for i in idx]).cpu() if len(idx) > 1 else idx[0].reshape(-1).cpu()
    out: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
    pos_v = pos_i = 0
    host_vals, host_tracked = [], []
    for v in vals:
        host_vals.append(flat_vals[pos_v:pos_v + v.numel()].view(v.shape))
        pos_v += v.numel()
    for t in tracked:
        if t is None:
            host_tracked.append(None)
        else:
            host_tracked.append(flat_vals[pos_v:pos_v + t.numel()].view(t.shape))
            pos_v += t.numel()
    for layer, v, i, t in zip(layers, host_vals, idx, host_tracked):
        out[layer] = (v, flat_idx[pos_i:pos_i + i.numel()].view(i.shape), t)
        pos_i += i.numel()
    return out


def _firing_rows(vals: torch.Tensor, idx: torch.Tensor, dens: np.ndarray | None = None,
                 ) -> tuple[list[list[int]], list[list[float]], list[list[float]] | None]:
    """Per token the indices and values of the top-k that fire (> 0), strongest first, and their
    densities when `dens` (the layer's per-feature array) is given: one numpy gather. Top-k is
    sorted, so the firing ones come first: only rows whose last entry does not fire need cutting."""
    idx_np = idx.numpy()
    indices, values = idx_np.tolist(), vals.numpy().tolist()  # numpy's tolist: the same numbers, faster
    densities = dens[idx_np].tolist() if dens is not None else None
    if vals.shape[-1] == 0:
        return indices, values, densities
    short = torch.nonzero(vals[:, -1] <= 0).flatten().tolist()
    if short:
        counts = (vals[short] > 0).sum(-1).tolist()
        for row, n in zip(short, counts):
            indices[row] = indices[row][:n]
            values[row] = values[row][:n]
            if densities is not None:
                densities[row] = densities[row][:n]
    return indices, values, densities


def to_results(
    captured: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    top_layers: Sequence[FeatureDictionary],
    track: dict[int, list[int]],
    explain: dict[int, dict[int, str]],
    neuronpedia: dict[int, str | None],
    densities: dict[int, np.ndarray | None] | None = None,
) -> tuple[list[LayerTopK], list[TrackedActivations]]:
    """Plain results: per layer of `top_layers` the firing top-k per token (with their densities
    where `densities` has the layer's array); per tracked feature its activation on every token.
    The lists come from `tolist()` (Python ints and floats), so the models are built without
    re-validating tens of thousands of numbers."""
    layers: list[LayerTopK] = []
    for d in top_layers:
        vals, idx, _ = captured[d.layer]
        dens = (densities or {}).get(d.layer)
        if dens is not None and len(dens) != d.d_sae:  # a store of another SAE width: no densities
            dens = None
        indices, values, dens_rows = _firing_rows(vals, idx, dens)
        names = explain.get(d.layer, {})
        listed = {i for row in indices for i in row} if names else set()
        layers.append(LayerTopK.model_construct(
            layer=d.layer, hook_name=d.hook_name, d_sae=d.d_sae, neuronpedia_id=neuronpedia.get(d.layer),
            indices=indices, values=values, explanations={i: names[i] for i in listed if i in names},
            densities=dens_rows))
    tracked_out: list[TrackedActivations] = []
    for layer, indices in track.items():
        columns = captured[layer][2]
        names = explain.get(layer, {})
        for j, index in enumerate(indices):
            tracked_out.append(TrackedActivations(layer=layer, index=index, explanation=names.get(index),
                                                  density=density.at((densities or {}).get(layer), index),
                                                  values=columns[:, j].tolist()))
    return layers, tracked_out


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def ms(self) -> float:
        return (time.perf_counter() - self.start) * 1000


# ------------------------------------------------------------------ the engine: Backend.analyze
def analyze(rt: Runtime, req: AnalyzeRequest, progress: Progress | None = None) -> AnalyzeResult:
    """Per-token top-k features of the chosen SAE layers, and the tracked features' activations.
    The request's limits were checked by the caller (`request_limits`); the token limit is here."""
    timer = Timer()
    entry = rt.model_entry(req.model)
    sae_set = entry.sae_set(req.sae_set)
    layers = list(sae_set.layers or ()) if req.layers is None else list(dict.fromkeys(req.layers))
    if not layers:
        raise InvalidRequest(f"SAE set '{sae_set.id}' has no layers to read.")
    track: dict[int, list[int]] = {}
    for f in req.track:
        track.setdefault(f.layer, [])
        if f.index not in track[f.layer]:
            track[f.layer].append(f.index)
    run_layers = layers + [layer for layer in track if layer not in layers]

    loaded = rt.models.get(entry, rt.dtype_for(entry), progress)
    dictionaries = rt.models.dictionaries(loaded, sae_set, run_layers, progress)
    prepend_bos = req.prepend_bos
    if prepend_bos is None:
        prepend_bos = sae_set.prepend_bos if sae_set.prepend_bos is not None else \
            bool(loaded.model.cfg.default_prepend_bos)
    with loaded.use(rt.limits.lock_timeout_s) as model:
        tokens = tokenize(model, req.text, prepend_bos=prepend_bos, window=sae_set.window,
                          max_tokens=rt.limits.max_prompt_tokens)
        captured = run_dictionaries(model, dictionaries, tokens, req.k, track)
    explain = rt.explanations.for_set(entry.id, sae_set.id, run_layers) if req.include_explanations else {}
    neuronpedia = {layer: sae_set.neuronpedia_for(layer) for layer in run_layers}
    dens = density.layers(rt, entry.id, sae_set.id, run_layers)
    top_layers, tracked = to_results(captured, dictionaries[:len(layers)], track, explain, neuronpedia, dens)
    return AnalyzeResult(model=entry.id, sae_set=sae_set.id, tokens=tokens.tokens, layers=top_layers,
                         tracked=tracked, window=tokens.window, label=loaded.label, elapsed_ms=timer.ms())
