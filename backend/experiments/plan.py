"""What an experiment runs on: the model, the feature set and its dictionaries, and the passages
(tokenised as the playground tokenises a prompt, cut to max_len, short ones skipped)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from backend.errors import InvalidRequest
from backend.experiments import corpus
from backend.local.dictionaries import FeatureDictionary
from backend.local.feature_sets import FeatureSet, load_dictionaries, resolve_model, resolve_set
from backend.protocol import Progress
from backend.schemas import ExperimentRequest

if TYPE_CHECKING:
    from backend.local.runtime import Runtime


@dataclass
class Passage:
    index: int  # position in the corpus
    text: str
    ids: list[int]
    truncated: bool


@dataclass
class Plan:
    entry: object
    loaded: object
    fset: FeatureSet
    dicts: dict[int, FeatureDictionary]
    passages: list[Passage]
    corpus_label: str
    special: set[int]
    pad: int


def _check_hook(fset: FeatureSet, hook: str | None) -> None:
    if not hook:
        return
    reads = fset.entry.hook if fset.kind == "sae" else "blocks.{layer}.hook_resid_mid"
    want = (
        hook
        if hook.startswith("blocks.")
        else "blocks.{layer}." + (hook if hook.startswith("hook_") else f"hook_{hook}")
    )
    if want != reads:
        raise InvalidRequest(
            f"{fset.display_name} reads {reads}, not {want}. Pass the hook it reads "
            f"('{reads.rsplit('.', 1)[-1].removeprefix('hook_')}') or leave the hook out."
        )


def _layers(plan_model, fset: FeatureSet, requested: list[int] | None) -> list[int]:
    if requested:
        return list(dict.fromkeys(requested))
    if fset.kind == "sae" and fset.entry.layers:
        return list(fset.entry.layers)
    return list(range(plan_model.cfg.n_layers))


def plan(backend: Runtime, req: ExperimentRequest, progress: Progress) -> Plan:
    entry = resolve_model(backend, req.model)
    fset = resolve_set(entry, req.sae_set)
    _check_hook(fset, req.hook)
    texts, label = corpus.passages(backend, req)
    loaded = backend.models.get(entry, backend.dtype_for(entry), progress)
    layers = _layers(loaded.model, fset, req.layers)
    dicts = load_dictionaries(backend, loaded, fset, layers, progress)
    chosen: list[Passage] = []
    with loaded.use(backend.limits.lock_timeout_s) as model:
        tok = model.tokenizer
        for i, text in enumerate(texts):
            ids = model.to_tokens(text, prepend_bos=fset.prepend_bos_for(model.cfg.default_prepend_bos), truncate=False)[0].tolist()
            if len(ids) < req.min_len:
                continue
            chosen.append(Passage(i, text, ids[: req.max_len], len(ids) > req.max_len))
            if len(chosen) == req.max_passages:
                break
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        special = set(tok.all_special_ids)
    if not chosen:
        raise InvalidRequest(
            f"No passage of the {label} has {req.min_len} tokens or more. Use another corpus."
        )
    return Plan(entry, loaded, fset, dicts, chosen, label, special, pad)


def batch_tensors(
    plan: Plan, batch: list[Passage], device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [B, S] right-padded, valid [B, S], steerable [B, S] = valid and not a special token)."""
    width = max(len(p.ids) for p in batch)
    ids = torch.full((len(batch), width), plan.pad, dtype=torch.long)
    valid = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, p in enumerate(batch):
        ids[row, : len(p.ids)] = torch.tensor(p.ids)
        valid[row, : len(p.ids)] = True
    special = torch.isin(ids, torch.tensor(sorted(plan.special) or [-1]))
    return ids.to(device), valid.to(device), (valid & ~special).to(device)
