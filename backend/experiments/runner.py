"""The experiment loop: batches of passages; per batch one default forward, then one steered
forward per (feature, alpha), each scaling the feature by alpha at every non-special token.

The model's lock is taken per batch, so other sessions' requests interleave with a long run.
An out-of-memory error halves the batch size and retries the same passages; after every batch
the sums are checkpointed (`state.py`) when a directory is given, so a rerun resumes there.
alpha = 1 is the identity (the hook leaves activations bit for bit unchanged), so it is recorded
without a forward pass.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from backend.errors import OutOfMemory
from backend.experiments import features as feature_choice
from backend.experiments.plan import Passage, Plan, batch_tensors, plan
from backend.experiments.report_data import build_result
from backend.experiments.state import State, Stats, feature_key, fingerprint, unit_key
from backend.local import analysis, steer_metrics
from backend.local.dictionaries import FeatureDictionary
from backend.local.feature_sets import check_index, resolve_model, resolve_set
from backend.local.interventions import Edit, FeatureCapture, SteeringHooks
from backend.local.steer_metrics import Sums
from backend.protocol import Progress, no_progress
from backend.request_limits import limits_error
from backend.schemas import ExperimentFeature, ExperimentRequest, ExperimentResult

if TYPE_CHECKING:
    from backend.local.runtime import Runtime


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _firing_counts(model, plan: Plan, batch: list[Passage]) -> dict[int, tuple[torch.Tensor, int]]:
    """Per layer, how often each feature fires on the batch's steerable tokens (auto selection)."""
    ids, _, steerable = batch_tensors(plan, batch, model.cfg.device)
    counts: dict[int, torch.Tensor] = {}

    def make(d: FeatureDictionary):
        def count(act, hook):
            counts[d.layer] = ((d.encode(act) > 0) & steerable[..., None]).sum((0, 1)).cpu()

        return count

    with torch.inference_mode(), model.hooks(fwd_hooks=[(d.hook_name, make(d)) for d in plan.dicts.values()]):
        model(ids, return_type=None)
    n = int(steerable.sum())
    return {layer: (c, n) for layer, c in counts.items()}


def choose_features(
    backend: Runtime, plan: Plan, req: ExperimentRequest, state: State
) -> list[ExperimentFeature]:
    if req.feature_source == "list":
        chosen = feature_choice.from_list(req, list(plan.dicts))
    else:
        calibration = plan.passages[: req.calibration_passages]
        totals: dict[int, torch.Tensor] = {}
        seen = [0]

        def add(out: dict[int, tuple[torch.Tensor, int]], batch) -> None:
            for layer, (c, n) in out.items():
                totals[layer] = c if layer not in totals else totals[layer] + c
            seen[0] += next(iter(out.values()))[1] if out else 0

        _batched(
            plan,
            calibration,
            state,
            lambda model, batch: _firing_counts(model, plan, batch),
            add,
            backend.limits.lock_timeout_s,
        )
        n_tokens = seen[0]
        chosen = []
        for layer in plan.dicts:
            rates = totals[layer].double() / max(n_tokens, 1)
            picked, threshold = feature_choice.live_choice(
                rates, req.live_percentile, req.features_per_layer, req.seed + layer
            )
            for index in picked:
                label, _ = backend.explanations.get(plan.entry.id, plan.fset.id, layer, index)
                chosen.append(ExperimentFeature(layer=layer, index=index, label=label))
            state.notes.append(
                f"Layer {layer}: {int((rates > 0).sum())} live features on {len(calibration)} "
                f"calibration passages; firing-rate threshold at the {req.live_percentile:g}th "
                f"percentile {threshold:.4f}; picked {picked}."
            )
    for f in chosen:
        check_index(plan.dicts[f.layer], plan.fset, f.index)
    return chosen


def run_batch(
    model,
    plan: Plan,
    batch: list[Passage],
    feats: list[ExperimentFeature],
    alphas: list[float],
    req: ExperimentRequest,
) -> tuple[dict[str, Sums], dict[str, Stats], dict[str, list[list]]]:
    """One batch: the default forward, then a steered forward per (feature, alpha != 1)."""
    ids, valid, steerable = batch_tensors(plan, batch, model.cfg.device)
    by_dict: dict[int, tuple[FeatureDictionary, list[int]]] = {}
    for f in feats:
        d = plan.dicts[f.layer]
        by_dict.setdefault(id(d), (d, []))[1].append(f.index)
    capture = FeatureCapture(by_dict)
    sums: dict[str, Sums] = {}
    stats: dict[str, Stats] = {}
    snippets: dict[str, list[list]] = {}
    with torch.inference_mode():
        with model.hooks(fwd_hooks=capture.hooks()):
            default = model(ids)
        logp_d = steer_metrics.log_probs(default)
        pred = valid[:, :-1] & valid[:, 1:]
        ce_clean = float((steer_metrics.token_ce(logp_d, ids) * pred).sum())
        for f in feats:
            d = plan.dicts[f.layer]
            acts = capture.activations(d, f.index)[steerable]
            fire = acts > 0
            stats[feature_key(f.layer, f.index)] = Stats(
                int(steerable.sum()),
                int(fire.sum()),
                float(acts[fire].sum()),
                float(acts.max()) if acts.numel() else 0.0,
            )
            for alpha in alphas:
                key = unit_key(f.layer, f.index, alpha)
                if alpha == 1.0:
                    sums[key] = Sums(ce_clean, ce_clean, int(pred.sum()), 0.0, int(valid.sum()), None)
                    continue
                edit = Edit(d, f.index, "alpha", amount=alpha, prompt_mask=steerable)
                with model.hooks(fwd_hooks=SteeringHooks([edit]).prompt_hooks()):
                    steered = model(ids)
                sums[key], kl = steer_metrics.batch_sums(default, steered, ids, valid, logp_d)
                if alpha == req.alpha and req.n_snippets:
                    snippets[feature_key(f.layer, f.index)] = _snippet_candidates(
                        kl, default, steered, batch, req.n_snippets
                    )
                del steered
    return sums, stats, snippets


def _snippet_candidates(
    kl: torch.Tensor, default: torch.Tensor, steered: torch.Tensor, batch: list[Passage], n: int
) -> list[list]:
    flat = kl.flatten()
    top = torch.topk(flat, min(n, flat.numel()))
    out = []
    for value, i in zip(top.values.tolist(), top.indices.tolist()):
        row, pos = divmod(i, kl.shape[1])
        if value <= 0:
            continue
        out.append(
            [value, batch[row].index, pos, int(default[row, pos].argmax()), int(steered[row, pos].argmax())]
        )
    return out


def _batched(
    plan: Plan,
    passages: list[Passage],
    state: State,
    work: Callable,
    merge: Callable,
    timeout: float,
    start: int = 0,
    after: Callable[[int], None] | None = None,
) -> None:
    """Run `work(model, batch)` over `passages[start:]` under the lock, halving the batch size on
    out-of-memory; `merge(out, batch)` then `after(n_done)` after each batch."""
    done = start
    while done < len(passages):
        batch = passages[done : done + state.batch_size]
        try:
            with plan.loaded.use(timeout) as model:
                out = work(model, batch)
        except Exception as exc:
            if not is_oom(exc):
                raise
            _free(plan.loaded.device)
            if state.batch_size == 1:
                raise OutOfMemory(
                    f"Out of memory on a single passage of {max(len(p.ids) for p in batch)} tokens. "
                    "Lower max_len, test fewer alphas, or use a larger device."
                ) from exc
            state.notes.append(
                f"Out of memory at batch size {state.batch_size}; continued with "
                f"{max(1, state.batch_size // 2)}."
            )
            state.batch_size = max(1, state.batch_size // 2)
            continue
        merge(out, batch)
        done += len(batch)
        if after:
            after(done)


def run(
    backend: Runtime,
    req: ExperimentRequest,
    progress: Progress | None = None,
    checkpoint_dir: Path | None = None,
    bar: bool = False,
) -> ExperimentResult:
    """The whole experiment; with `checkpoint_dir`, resumable after an interruption."""
    return execute(backend, req, progress, checkpoint_dir, bar)[0]


def execute(
    backend: Runtime,
    req: ExperimentRequest,
    progress: Progress | None = None,
    checkpoint_dir: Path | None = None,
    bar: bool = False,
) -> tuple[ExperimentResult, Plan]:
    """`run`, also returning the plan (the passages used)."""
    progress = progress or no_progress
    timer = analysis.Timer()
    p = plan(backend, req, progress)
    fp = fingerprint(req, [x.text for x in p.passages])
    state = State.load(checkpoint_dir, fp) if checkpoint_dir else None
    if state is None:
        state = State(fingerprint=fp, batch_size=req.batch_size)
        state.features = choose_features(backend, p, req, state)
    else:
        state.notes.append(f"Resumed after {state.n_done} of {len(p.passages)} passages.")
    alphas = req.all_alphas()
    total = len(p.passages)
    tqdm_bar = None
    if bar:
        from tqdm import tqdm

        tqdm_bar = tqdm(total=total, initial=state.n_done, unit="passage", desc="Passages")

    def merge(out, batch) -> None:
        state.merge(*out, keep=req.n_snippets)
        state.n_done += len(batch)
        if checkpoint_dir:
            state.save(checkpoint_dir)
        if tqdm_bar is not None:
            tqdm_bar.update(len(batch))
        progress(state.n_done / total, f"Passages {state.n_done}/{total} (batch size {state.batch_size})")

    try:
        _batched(
            p,
            p.passages,
            state,
            lambda model, batch: run_batch(model, p, batch, state.features, alphas, req),
            merge,
            backend.limits.lock_timeout_s,
            start=state.n_done,
        )
    finally:
        if tqdm_bar is not None:
            tqdm_bar.close()
    result = build_result(p, state, req, alphas)
    result.elapsed_ms = timer.ms()
    return result, p


def run_request(
    backend: Runtime, req: ExperimentRequest, progress: Progress | None = None
) -> ExperimentResult:
    """`Backend.experiment`: a small run, within the limits, with no files."""
    lim = backend.limits  # request-only limits were checked by the caller (request_limits)
    if req.feature_source == "list":
        n_feats = len(req.features)
    else:
        entry = resolve_model(backend, req.model)
        fset = resolve_set(entry, req.sae_set)
        n_layers = (
            len(req.layers)
            if req.layers
            else len(fset.entry.layers or ())
            if fset.kind == "sae"
            else int(entry.n_layers or 1)
        )
        n_feats = req.features_per_layer * max(n_layers, 1)
    runs = n_feats * len(req.all_alphas())
    if runs > lim.max_experiment_runs:
        raise limits_error("Features x alphas", runs, lim.max_experiment_runs,
                           "Test fewer features or alphas, or use the experiments CLI.",
                           "FEATURESCOPE_MAX_EXPERIMENT_RUNS")
    return run(backend, req, progress)
