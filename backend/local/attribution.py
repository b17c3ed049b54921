"""Running circuit-tracer's `attribute` with progress through its phases.

`attribute` reports its phases only to a logger and a tqdm bar. To show them in the app, the
shared ReplacementModel is handed to `attribute` behind a per-call view (`_Phases`) that delegates
everything to the model and notes each phase as circuit-tracer enters it: precomputing
activations (`setup_attribution`), the forward pass (`run_forward_pass`), then each batch of
backward passes (`compute_batch`: first the logit rows, then the feature rows). Nothing on the
shared model is changed; the view lives for one call.

Before circuit-tracer gathers the encoder and decoder vectors of every active feature (which is
where a dense transcoder set runs out of memory: 52 GiB at Gemma-2-2B shapes), the view runs the
prompt once, counts the active features layer by layer, and hands the count to `check_active`,
which may refuse (raise) before anything large is allocated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend.errors import OutOfMemory
from backend.protocol import Progress, no_progress


@dataclass
class PhaseTimes:
    """Milliseconds per phase of one attribution, and what it covered."""

    ms: dict[str, float] = field(default_factory=dict)
    n_active: int = 0
    n_feature_rows: int = 0
    n_logit_rows: int = 0
    backward_passes: int = 0


class _Context:
    """circuit-tracer's AttributionContext, counting the rows each backward batch computes."""

    def __init__(self, ctx: Any, phases: _Phases) -> None:
        self._ctx = ctx
        self._phases = phases

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def compute_batch(self, layers: Any, positions: Any, inject_values: Any,
                      retain_graph: bool = True) -> Any:
        rows = self._ctx.compute_batch(layers, positions, inject_values, retain_graph=retain_graph)
        self._phases.batch_done(len(layers), bool((layers == self._ctx.n_layers).all()))
        return rows


def count_active(model: Any, tokens: Any) -> int:
    """Transcoder features active on `tokens` (1-D ids), as circuit-tracer's `setup_attribution` will
    find them (its zeroed positions excluded), one layer at a time: one forward pass and one encoder
    pass per layer, nothing kept."""
    import torch

    inputs: list[Any] = []  # the transcoders' inputs, layer by layer, as the forward pass reaches them

    def keep(x: Any, hook: Any) -> None:
        inputs.append(x.detach()[0])

    with torch.no_grad(), model.hooks(fwd_hooks=[(lambda name: model.feature_input_hook in name, keep)]):
        model(tokens.reshape(1, -1))
    n = 0
    with torch.no_grad():
        for layer, x in enumerate(inputs):
            acts = model.transcoders.encode_layer(x, layer)
            acts[model.zero_positions] = 0
            n += int(torch.count_nonzero(acts))
            del acts
    inputs.clear()
    return n


class _Phases:
    """A per-call view of a ReplacementModel that reports attribution's phases."""

    def __init__(self, model: Any, max_feature_nodes: int, progress: Progress,
                 check_active: Callable[[int], None] | None = None) -> None:
        self._model = model
        self._check_active = check_active
        self._max_feature_nodes = max_feature_nodes
        self._progress = progress
        self.times = PhaseTimes()
        self._mark = time.perf_counter()
        self._phase = "precompute"
        self._feature_total = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def _enter(self, phase: str) -> None:
        now = time.perf_counter()
        self.times.ms[self._phase] = self.times.ms.get(self._phase, 0.0) + (now - self._mark) * 1000
        self._phase, self._mark = phase, now

    def finish(self) -> None:
        self._enter("done")
        self.times.ms.pop("done", None)

    def setup_attribution(self, inputs: Any) -> _Context:
        if self._check_active is not None:
            self._progress(0.005, "Counting the active features (one forward pass)…")
            self._check_active(count_active(self._model, inputs))
        self._progress(0.01, "Phase 0: precomputing transcoder activations and error vectors…")
        ctx = self._model.setup_attribution(inputs)
        self.times.n_active = int(ctx.activation_matrix._nnz())
        self._feature_total = min(self._max_feature_nodes, self.times.n_active)
        return _Context(ctx, self)

    def run_forward_pass(self, input_ids: Any, batch_size: int, ctx: Any) -> None:
        self._enter("forward")
        self._progress(0.03, f"Phase 1: forward pass ({self.times.n_active:,} active features)…")
        inner = ctx._ctx if isinstance(ctx, _Context) else ctx
        self._model.run_forward_pass(input_ids, batch_size, inner)

    def batch_done(self, n_rows: int, logit_rows: bool) -> None:
        t = self.times
        t.backward_passes += 1
        if logit_rows:
            if self._phase != "logits":
                self._enter("logits")
            t.n_logit_rows += n_rows
            self._progress(0.05, f"Phase 3: attributing {t.n_logit_rows} logit node(s)…")
            return
        if self._phase != "features":
            self._enter("features")
        t.n_feature_rows += n_rows
        total = max(self._feature_total, 1)
        done = f"{t.n_feature_rows:,} / {self._feature_total:,}"
        self._progress(0.05 + 0.9 * min(t.n_feature_rows / total, 1.0),
                       f"Phase 4: attributing feature nodes {done}…")


def run_attribute(model: Any, input_ids: list[int], *, max_n_logits: int, desired_logit_prob: float,
                  batch_size: int, max_feature_nodes: int, offload: str | None,
                  progress: Progress | None = None,
                  check_active: Callable[[int], None] | None = None) -> tuple[Any, PhaseTimes]:
    """circuit-tracer's `attribute` on `model` (held by the caller), with progress; the Graph and
    the time of each phase. `check_active(n)` gets the number of active features after the first
    forward pass, before any large allocation, and may raise to refuse. A CUDA out-of-memory error
    frees the cache and becomes `OutOfMemory`."""
    import torch
    from circuit_tracer import attribute

    view = _Phases(model, max_feature_nodes, progress or no_progress, check_active)
    tokens = torch.tensor(input_ids, dtype=torch.long, device=model.cfg.device)
    try:
        graph = attribute(tokens, view, max_n_logits=max_n_logits, desired_logit_prob=desired_logit_prob,
                          batch_size=batch_size, max_feature_nodes=max_feature_nodes, offload=offload)
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        raise OutOfMemory(
            f"The GPU ran out of memory during attribution at batch_size {batch_size}. Lower batch_size, "
            "shorten the prompt, lower max_feature_nodes, or set offload to 'cpu'. The cache was freed; "
            "retry."
        ) from exc
    view.finish()  # the "features" phase includes packaging the Graph
    return graph, view.times
