"""How good the pack's SAEs and transcoders are, measured on held-out text from the saved files.

Every figure is computed from the artefacts as the app loads them (SAELens' `SAE.load_from_disk`,
circuit-tracer's `load_relu_transcoder`), on held-out rows, at non-BOS positions:

- L0: mean number of active features per token;
- FVE: fraction of variance explained, SAELens' `ExplainedVarianceCalculator`
  (1 − E‖x − x̂‖² / Var(x), variance summed over dimensions);
- CE with the dictionary spliced in: for SAEs SAELens' own `get_recons_loss` (the reconstruction
  replaces the hook; BOS positions kept, `ignore_tokens=[BOS]`), and the same splice by hand for a
  transcoder (its output replaces `hook_mlp_out`, fed from `hook_resid_mid` of the same pass);
  reported as the increase over the clean loss and as the fraction of the zero-ablation loss
  increase that the dictionary recovers (SAELens' `ce_loss_score`);
- dead: fraction of features that never fire on the held-out rows;
- dense: fraction of features that fire on more than `DENSE` of the held-out non-BOS tokens.

`readability` measures what a reader of the highlighter sees: on held-out documentation sentences,
the share of each token's top-10 features (per layer, by activation) that are not dense by the
pack's own statistics.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

DENSE = 0.1  # a feature firing on more than this share of non-BOS tokens is dense
TOP = 10  # the highlighter's top-k features per token


def _batches(rows: torch.Tensor, batch_rows: int):
    for start in range(0, rows.shape[0], batch_rows):
        yield rows[start:start + batch_rows]


def _summary(ce_clean: float, ce_spliced: float, ce_zero: float) -> dict[str, float]:
    denom = ce_zero - ce_clean
    return {"ce_clean": ce_clean, "ce_spliced": ce_spliced, "ce_zero_ablation": ce_zero,
            "ce_increase": ce_spliced - ce_clean,
            "ce_recovered": (ce_zero - ce_spliced) / denom if abs(denom) > 1e-9 else float("nan")}


@torch.no_grad()
def evaluate_sae(sae: Any, model: Any, rows: torch.Tensor, bos: int, batch_rows: int = 16
                 ) -> dict[str, float]:
    from sae_lens.evals import ExplainedVarianceCalculator, get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    hook = sae.cfg.metadata.hook_name
    fve = ExplainedVarianceCalculator()
    l0_sum, n_tok = 0.0, 0
    counts = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    keys = ["ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation", "kl_div_with_sae"]
    ce = dict.fromkeys(keys, 0.0)
    n_pred = 0
    for batch in _batches(rows, batch_rows):
        _, cache = model.run_with_cache(batch, names_filter=[hook])
        x = cache[hook][batch != bos]
        z = sae.encode(x)
        fve.add_batch(sae.decode(z), x)
        l0_sum += float((z > 0).sum())
        n_tok += x.shape[0]
        counts += (z > 0).sum(0)
        m = get_recons_loss(sae, model, ActivationScaler(), batch, compute_kl=True, compute_ce_loss=True,
                            ignore_tokens=[bos])
        for key in ce:
            ce[key] += float(m[key].double().sum())
        n_pred += m["ce_loss_with_sae"].numel()
    out = {"l0": l0_sum / n_tok, "fve": fve.compute(), "dead_fraction": float((counts == 0).float().mean()),
           "dense_fraction": float((counts > DENSE * n_tok).float().mean()),
           "kl_with_sae": ce["kl_div_with_sae"] / n_pred, "tokens": n_tok}
    out.update(_summary(ce["ce_loss_without_sae"] / n_pred, ce["ce_loss_with_sae"] / n_pred,
                        ce["ce_loss_with_ablation"] / n_pred))
    return out


def _transcoder_hooks(transcoders: dict[int, Any], batch: torch.Tensor, bos: int, mode: str):
    """Forward hooks that replace hook_mlp_out at the given layers by the transcoder's output
    (mode 'splice') or by zeros (mode 'zero'), at non-BOS positions."""
    keep = (batch != bos)[..., None]
    stash: dict[int, torch.Tensor] = {}
    hooks = []
    for layer, tc in transcoders.items():
        def save_in(act, hook, layer=layer):
            stash[layer] = act
            return act

        def replace_out(act, hook, layer=layer, tc=tc):
            new = tc.decode(tc.encode(stash[layer])) if mode == "splice" else torch.zeros_like(act)
            return torch.where(keep, new.to(act.dtype), act)

        hooks += [(f"blocks.{layer}.hook_resid_mid", save_in), (f"blocks.{layer}.hook_mlp_out", replace_out)]
    return hooks


@torch.no_grad()
def evaluate_transcoders(transcoders: dict[int, Any], model: Any, rows: torch.Tensor, bos: int,
                         batch_rows: int = 16) -> dict[str, Any]:
    """Per layer (one transcoder spliced at a time) and all layers at once."""
    from sae_lens.evals import ExplainedVarianceCalculator

    layers = sorted(transcoders)
    fve = {L: ExplainedVarianceCalculator() for L in layers}
    l0 = {L: 0.0 for L in layers}
    counts = {L: torch.zeros(transcoders[L].d_transcoder, dtype=torch.long) for L in layers}
    sums = {key: 0.0 for key in ["clean", *[f"{m}{L}" for L in layers for m in ("splice", "zero")],
                                 "splice_all", "zero_all"]}
    n_tok, n_pred = 0, 0
    for batch in tqdm(list(_batches(rows, batch_rows)), desc="evaluating transcoders", leave=False):
        names = [f"blocks.{L}.{h}" for L in layers for h in ("hook_resid_mid", "hook_mlp_out")]
        clean, cache = model.run_with_cache(batch, names_filter=names, return_type="loss",
                                            loss_per_token=True)
        sums["clean"] += float(clean.double().sum())
        n_pred += clean.numel()
        keep = batch != bos
        n_tok += int(keep.sum())
        for L in layers:
            tc = transcoders[L]
            x, y = cache[f"blocks.{L}.hook_resid_mid"][keep], cache[f"blocks.{L}.hook_mlp_out"][keep]
            z = tc.encode(x)
            fve[L].add_batch(tc.decode(z), y)
            l0[L] += float((z > 0).sum())
            counts[L] += (z > 0).sum(0)
            for mode in ("splice", "zero"):
                loss = model.run_with_hooks(batch, return_type="loss", loss_per_token=True,
                                            fwd_hooks=_transcoder_hooks({L: tc}, batch, bos, mode))
                sums[f"{mode}{L}"] += float(loss.double().sum())
        for mode in ("splice", "zero"):
            loss = model.run_with_hooks(batch, return_type="loss", loss_per_token=True,
                                        fwd_hooks=_transcoder_hooks(transcoders, batch, bos, mode))
            sums[f"{mode}_all"] += float(loss.double().sum())
    clean = sums["clean"] / n_pred
    per_layer = {}
    for L in layers:
        per_layer[L] = {"l0": l0[L] / n_tok, "fve": fve[L].compute(),
                        "dead_fraction": float((counts[L] == 0).float().mean()),
                        "dense_fraction": float((counts[L] > DENSE * n_tok).float().mean()), "tokens": n_tok,
                        **_summary(clean, sums[f"splice{L}"] / n_pred, sums[f"zero{L}"] / n_pred)}
    all_layers = _summary(clean, sums["splice_all"] / n_pred, sums["zero_all"] / n_pred)
    return {"per_layer": per_layer, "all_layers": all_layers}


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def heldout_sentences(docs: list[str], n: int = 20) -> list[str]:
    """The first prose sentence (40-160 characters, at least six words, no code prompt) of each
    held-out document, in corpus order, until there are `n`."""
    from backend.demo.lm import is_heldout

    out = []
    for i, doc in enumerate(docs):
        if not is_heldout(i):
            continue
        for sentence in _SENTENCE_END.split(doc):
            if (40 <= len(sentence) <= 160 and len(sentence.split()) >= 6 and sentence[:1].isupper()
                    and ">>>" not in sentence and sentence.endswith(".")):
                out.append(sentence)
                break
        if len(out) == n:
            break
    return out


@torch.no_grad()
def readability(model: Any, encoders: dict[str, dict[int, tuple[Callable, str]]], sentences: list[str],
                density: dict[str, dict[int, list[float]]], bos: int) -> dict[str, Any]:
    """Per set (and per layer), the share of the top-`TOP` active features of each non-BOS token
    that are not dense (density <= `DENSE` in the pack's statistics)."""
    out: dict[str, Any] = {}
    for set_id, layers in encoders.items():
        kept = {L: 0 for L in layers}
        slots = {L: 0 for L in layers}
        for sentence in sentences:
            tokens = model.to_tokens(sentence, prepend_bos=True)
            hooks = sorted({hook for _, hook in layers.values()})
            _, cache = model.run_with_cache(tokens, names_filter=hooks)
            keep = tokens[0] != bos
            for L, (encode, hook) in layers.items():
                z = encode(cache[hook][0][keep])
                dense = torch.tensor(density[set_id][L]) > DENSE
                for row in z:
                    active = row.nonzero().squeeze(1)
                    top = active[row[active].argsort(descending=True, stable=True)[:TOP]]
                    slots[L] += top.numel()
                    kept[L] += int((~dense[top]).sum())
        out[set_id] = {"non_dense_share": sum(kept.values()) / max(1, sum(slots.values())),
                       "per_layer": {str(L): kept[L] / max(1, slots[L]) for L in layers},
                       "slots": sum(slots.values())}
    return out
