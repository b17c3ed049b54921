"""Default vs steered generation (the playground and the graph server's /steer), and alpha sweeps.

One call, under the model's lock:
1. the default run: the prompt pass (recording the steered features' activations, and the
   attention patterns when `freeze_attention`), then token-by-token generation with a KV cache;
2. the steered run: the same, with the interventions' hooks (`interventions.SteeringHooks`) —
   prompt positions on the prompt pass, `steer_generated_tokens` on every generation step;
3. top-k next-token probabilities at every position of both runs, and the cost on the prompt
   (`steer_metrics`: cross-entropy change, KL, logit deltas) from the two prompt passes.

Both runs sample with their own `torch.Generator` seeded alike, so they differ only by the steering
and no global random state is touched. Sampling follows TransformerLens' `sample_logits`:
logits / temperature, minus freq_penalty x the token's count so far; temperature 0 is greedy.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from backend.errors import InvalidRequest, LimitExceeded
from backend.local import analysis, steer_metrics
from backend.local.dictionaries import FeatureDictionary
from backend.local.feature_sets import FeatureSet, check_index, load_dictionaries, resolve_model, resolve_set
from backend.local.generation import Generation, generate
from backend.local.interventions import Edit, FeatureCapture, SteeringHooks, pattern_hook_names
from backend.protocol import Progress, no_progress
from backend.schemas import (
    AppliedIntervention,
    FeatureTarget,
    SteerFeature,
    SteerMetrics,
    SteerRequest,
    SteerResult,
    SteerSettings,
    SteerSweepRequest,
    SteerSweepResult,
    SweepPoint,
)

if TYPE_CHECKING:
    from backend.local.runtime import Runtime


# ------------------------------------------------------------------ request -> edits
@dataclass
class Prepared:
    """A request resolved against the catalog, with the model and dictionaries it needs loaded."""

    entry: object
    loaded: object
    default_set: FeatureSet
    sets: dict[str, FeatureSet]
    dicts: dict[tuple[str, int], FeatureDictionary]

    def dictionary(self, target: FeatureTarget) -> tuple[FeatureSet, FeatureDictionary]:
        fset = self.sets[target.sae_set or self.default_set.id]
        return fset, self.dicts[(fset.id, target.layer)]


def prepare(
    backend: Runtime, req: SteerSettings, targets: Sequence[FeatureTarget], progress: Progress
) -> Prepared:
    entry = resolve_model(backend, req.model)
    default_set = resolve_set(entry, req.sae_set)
    sets = {default_set.id: default_set}
    for t in targets:
        if t.sae_set and t.sae_set not in sets:
            sets[t.sae_set] = resolve_set(entry, t.sae_set)
    loaded = backend.models.get(entry, backend.dtype_for(entry), progress)
    dicts: dict[tuple[str, int], FeatureDictionary] = {}
    for set_id, fset in sets.items():
        layers = [t.layer for t in targets if (t.sae_set or default_set.id) == set_id]
        if layers:
            for layer, d in load_dictionaries(backend, loaded, fset, layers, progress).items():
                dicts[(set_id, layer)] = d
    prepared = Prepared(entry=entry, loaded=loaded, default_set=default_set, sets=sets, dicts=dicts)
    for t in targets:
        fset, d = prepared.dictionary(t)
        check_index(d, fset, t.index)
    return prepared


def prompt_mask(target: FeatureTarget, tokens: analysis.Tokenized, device) -> torch.Tensor | None:
    n = tokens.n_tokens
    for p in target.prompt_positions() + (
        [target.token_active_position] if target.token_active_position is not None else []
    ):
        if p >= n:
            raise InvalidRequest(
                f"Position {p} of feature {target.layer}:{target.index} is past the prompt, "
                f"which has {n} tokens (positions 0–{n - 1}"
                f"{', BOS at 0' if tokens.tokens[0].special else ''})."
            )
    mask = torch.zeros(n, dtype=torch.bool)
    mask[target.prompt_positions()] = True
    if target.steer_all_prompt_positions:
        mask |= torch.tensor([not t.special for t in tokens.tokens])
    return mask.to(device) if bool(mask.any()) else None


def _capture_for(edits: Sequence[Edit]) -> dict[int, tuple[FeatureDictionary, list[int]]]:
    out: dict[int, tuple[FeatureDictionary, list[int]]] = {}
    for e in edits:
        d, indices = out.setdefault(id(e.dictionary), (e.dictionary, []))
        if e.index not in indices:
            indices.append(e.index)
    return out


def _tokens(model, prepared: Prepared, req: SteerSettings, backend: Runtime) -> analysis.Tokenized:
    tokens = analysis.tokenize(
        model,
        req.prompt,
        prepend_bos=prepared.default_set.prepend_bos_for(model.cfg.default_prepend_bos),
        window=None,
        max_tokens=backend.limits.max_prompt_tokens,
    )
    room = model.cfg.n_ctx - tokens.n_tokens - 1
    if req.n_tokens > room:
        raise LimitExceeded(
            "The prompt plus n_tokens",
            tokens.n_tokens + req.n_tokens + 1,
            model.cfg.n_ctx,
            "Shorten the prompt or generate fewer tokens (the model's context).",
        )
    return tokens


def _run_kwargs(req: SteerSettings, seed: int) -> dict:
    return dict(n_tokens=req.n_tokens, temperature=req.temperature, freq_penalty=req.freq_penalty, seed=seed)


def _default_run(
    model, tokens: analysis.Tokenized, edits: Sequence[Edit], req: SteerSettings, seed: int, top_k: int
) -> tuple[Generation, FeatureCapture]:
    capture = FeatureCapture(
        _capture_for(edits), pattern_hook_names(model.cfg.n_layers) if req.freeze_attention else ()
    )
    run = generate(model, tokens.ids, top_k=top_k, prompt_hooks=capture.hooks(), **_run_kwargs(req, seed))
    return run, capture


def _metrics(model, default: Generation, steered: Generation, prompt: torch.Tensor) -> SteerMetrics:
    valid = torch.ones_like(prompt, dtype=torch.bool)
    sums, kl = steer_metrics.batch_sums(
        default.prompt_logits[None], steered.prompt_logits[None], prompt, valid
    )
    m = sums.means()
    decode = lambda ids: analysis.token_texts(model.tokenizer, ids)  # noqa: E731
    return SteerMetrics(
        ce_loss_default=m["ce_loss_default"],
        ce_loss_steered=m["ce_loss_steered"],
        delta_ce_loss=m["delta_ce_loss"],
        kl_divergence=m["kl"],
        kl_by_position=kl[0].tolist(),
        top_logit_deltas=steer_metrics.top_deltas(sums.mean_logit_delta(), decode),
    )


def _applied(
    backend: Runtime, prepared: Prepared, target: FeatureTarget, edit: Edit, capture: FeatureCapture
) -> AppliedIntervention:
    fset, d = prepared.dictionary(target)
    positions = [] if edit.prompt_mask is None else torch.nonzero(edit.prompt_mask).flatten().tolist()
    explanation, _ = backend.explanations.get(prepared.entry.id, fset.id, target.layer, target.index)
    return AppliedIntervention(
        layer=target.layer,
        index=target.index,
        sae_set=fset.id,
        kind=fset.kind,
        hook_name=d.hook_name,
        out_hook_name=d.out_hook_name,
        operation=edit.operation,
        amount=edit.amount,
        target_value=edit.target,
        prompt_positions=positions,
        generated_tokens=edit.generated,
        clean_activations=capture.activations(d, target.index)[0].tolist(),
        explanation=explanation,
    )


def _generation_text(model, ids: list[int], tokens: analysis.Tokenized) -> str:
    start = 1 if tokens.tokens and tokens.tokens[0].special else 0
    return model.tokenizer.decode(ids[start:], clean_up_tokenization_spaces=False)


def _logits_by_token(model, run: Generation) -> list:
    flat = [i for row in run.top_ids for i in row]
    texts = analysis.token_texts(model.tokenizer, run.ids + flat)
    own, rest = texts[: len(run.ids)], iter(texts[len(run.ids) :])
    table = []
    for pos, tok in enumerate(own):
        ids, probs = (run.top_ids[pos], run.top_probs[pos]) if pos < len(run.top_ids) else ([], [])
        table.append((tok, [(next(rest), float(p)) for p in probs]))
    return table


def _seed(req: SteerSettings) -> int:
    """The request's seed; else, when sampling, a fresh one (reported so the run can be repeated).
    Greedy decoding draws nothing, so the same request gives the same answer every time."""
    if req.seed is not None:
        return req.seed
    return 0 if req.temperature == 0 else random.SystemRandom().randrange(2**31)


# ------------------------------------------------------------------ the protocol methods
def steer(backend: Runtime, req: SteerRequest, progress: Progress | None = None) -> SteerResult:
    progress = progress or no_progress
    timer = analysis.Timer()
    lim = backend.limits  # the request's limits were checked by the caller (request_limits)
    prepared = prepare(backend, req, req.features, progress)
    seed = _seed(req)
    with prepared.loaded.use(lim.lock_timeout_s) as model:
        tokens = _tokens(model, prepared, req, backend)
        edits = [_edit(prepared, f, tokens, model) for f in req.features]
        progress(0.1, "Default run…")
        default, capture = _default_run(model, tokens, edits, req, seed, req.top_k)
        for f, e in zip(req.features, edits):
            e.target = _target(f, e, capture)
        progress(0.5, "Steered run…")
        hooks = SteeringHooks(edits, capture.patterns if req.freeze_attention else None)
        steered = generate(
            model,
            tokens.ids,
            top_k=req.top_k,
            prompt_hooks=hooks.prompt_hooks(),
            step_hooks=hooks.step_hooks(),
            **_run_kwargs(req, seed),
        )
        metrics = _metrics(model, default, steered, tokens.ids)
        result = SteerResult(
            DEFAULT_GENERATION=_generation_text(model, default.ids, tokens),
            STEERED_GENERATION=_generation_text(model, steered.ids, tokens),
            DEFAULT_LOGITS_BY_TOKEN=_logits_by_token(model, default),
            STEERED_LOGITS_BY_TOKEN=_logits_by_token(model, steered),
            metrics=metrics,
            model=prepared.entry.id,
            sae_set=prepared.default_set.id,
            prompt_tokens=tokens.tokens,
            default_ids=default.ids,
            steered_ids=steered.ids,
            interventions=[_applied(backend, prepared, f, e, capture) for f, e in zip(req.features, edits)],
            seed=seed,
            label=prepared.loaded.label,
        )
    progress(1.0, "Steered.")
    result.elapsed_ms = timer.ms()
    return result


def _edit(
    prepared: Prepared,
    f: SteerFeature | FeatureTarget,
    tokens: analysis.Tokenized,
    model,
    operation: str | None = None,
    amount: float | None = None,
) -> Edit:
    _, d = prepared.dictionary(f)
    op = operation or f.operation
    return Edit(
        dictionary=d,
        index=f.index,
        operation=op,
        amount=amount if operation else f.amount,
        prompt_mask=prompt_mask(f, tokens, tokens.ids.device),
        generated=f.steer_generated_tokens,
    )


def _target(f: SteerFeature, e: Edit, capture: FeatureCapture) -> float | None:
    if f.set_value is not None:
        return float(f.set_value)
    if f.delta is not None and f.token_active_position is not None:
        clean = capture.activations(e.dictionary, f.index)[0, f.token_active_position]
        return float(clean) + float(f.delta)
    return None


def sweep(
    backend: Runtime, req: SteerSweepRequest, progress: Progress | None = None
) -> SteerSweepResult:
    progress = progress or no_progress
    timer = analysis.Timer()
    lim = backend.limits  # the request's limits were checked by the caller (request_limits)
    prepared = prepare(backend, req, [req.feature], progress)
    seed = _seed(req)
    with prepared.loaded.use(lim.lock_timeout_s) as model:
        tokens = _tokens(model, prepared, req, backend)
        base = _edit(prepared, req.feature, tokens, model, "alpha", 1.0)
        progress(0.0, "Default run…")
        default, capture = _default_run(model, tokens, [base], req, seed, 0)
        points = []
        for i, alpha in enumerate(req.alphas):
            progress((i + 1) / (len(req.alphas) + 1), f"alpha = {alpha:g} ({i + 1}/{len(req.alphas)})…")
            edit = _edit(prepared, req.feature, tokens, model, "alpha", float(alpha))
            hooks = SteeringHooks([edit], capture.patterns if req.freeze_attention else None)
            run = generate(
                model,
                tokens.ids,
                top_k=0,
                prompt_hooks=hooks.prompt_hooks(),
                step_hooks=hooks.step_hooks(),
                **_run_kwargs(req, seed),
            )
            points.append(
                SweepPoint(
                    alpha=float(alpha),
                    STEERED_GENERATION=_generation_text(model, run.ids, tokens),
                    steered_ids=run.ids,
                    metrics=_metrics(model, default, run, tokens.ids),
                )
            )
        applied = _applied(backend, prepared, req.feature, base, capture)
        result = SteerSweepResult(
            model=prepared.entry.id,
            sae_set=prepared.default_set.id if req.feature.sae_set is None else req.feature.sae_set,
            feature=applied.model_copy(update={"amount": None}),
            DEFAULT_GENERATION=_generation_text(model, default.ids, tokens),
            default_ids=default.ids,
            prompt_tokens=tokens.tokens,
            points=points,
            seed=seed,
            label=prepared.loaded.label,
        )
    progress(1.0, "Swept.")
    result.elapsed_ms = timer.ms()
    return result
