"""`Backend.attribute`: an attribution graph for a prompt, with circuit-tracer, cached on disk.

One request goes: resolve the model and transcoder set (catalog ids, or the graph server's names
such as 'google/gemma-2-2b' and 'mntss/clt-gemma-2-2b-2.5M') -> check the limits -> the result
cache -> measure the prompt and estimate time and memory (refusing what will not fit) -> the
unpruned-graph cache, else load the ReplacementModel and run circuit-tracer's `attribute` under
the model's lock, with progress -> `prune_graph` -> graph JSON -> cache. Explanations and the slug
are filled in on the way out, so a cached graph shows the explanations of today.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any

from backend import compute
from backend.catalog import ModelEntry, TranscoderSetEntry
from backend.demo.pack import DemoPack
from backend.errors import DoesNotFit, InvalidRequest, LimitExceeded, NotFound
from backend.graphfile import feature_address
from backend.local.analysis import Timer
from backend.local.graph_cache import GraphCache, cache_key
from backend.local.graph_estimate import CostModel, fitting_batch_size, model_bytes_for, shape_of, sizes
from backend.local.graph_models import PromptTokenizers, load_replacement, prompt_ids, replacement_key
from backend.protocol import Progress, no_progress
from backend.schemas import GraphEstimate, GraphRequest, GraphResult

if TYPE_CHECKING:
    from backend.local.runtime import Runtime

GB = compute.GB
FEATURE_TYPE = "cross layer transcoder"
KEY_VERSION = 1
JSON_VERSION = 2  # of the graph JSON we write (2: metadata.scores); older cached results are rebuilt


def default_slug(model_id: str, prompt: str, key: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].strip("-")
    return f"{model_id}-{words or 'graph'}-{key[:6]}"


def feature_of(node: dict[str, Any]) -> tuple[int, int, int] | None:
    """(layer, index, position) of a feature node, from its id `layer_index_position`."""
    if node.get("feature_type") != FEATURE_TYPE:
        return None
    return feature_address(str(node.get("node_id", "")))


def engine(rt: Runtime) -> GraphEngine:
    """The runtime's graph engine (its caches, locks and calibration), made on first use."""
    return rt.shared("graphs", lambda: GraphEngine(rt))


class GraphEngine:
    def __init__(self, backend: Runtime) -> None:
        self.b = backend
        settings = backend.settings
        root = settings.data_dir / "graphs"
        self.cache = GraphCache(root / "cache", int(settings.graph_cache_gb * GB))
        self.costs = CostModel(root / "calibration.json")
        self.tokenizers = PromptTokenizers()
        self._locks_guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    # ------------------------------------------------------------------ resolving
    def resolve(self, model: str, transcoder_set: str | None) -> tuple[ModelEntry, TranscoderSetEntry]:
        """The model and transcoder set, through the catalog's resolvers (catalog ids, hub names,
        the graph server's names); None: the model's first transcoder set."""
        catalog = self.b.catalog_entries()
        with_sets = [m.id for m in catalog.models.values() if m.transcoder_sets]
        try:
            entry = catalog.resolve_model(model)
        except NotFound:
            raise NotFound(f"Unknown model '{model}'. Models with transcoders for attribution graphs: "
                           f"{', '.join(with_sets)}.", wanted=model, valid=with_sets) from None
        if not entry.transcoder_sets:
            raise InvalidRequest(f"{entry.display_name} has no transcoder set, so no attribution graph. "
                                 f"Models with transcoders: {', '.join(with_sets)}.")
        if transcoder_set is None:
            return entry, next(iter(entry.transcoder_sets.values()))
        try:
            found = entry.feature_set(transcoder_set).entry
        except NotFound:
            found = None
        if not isinstance(found, TranscoderSetEntry):
            valid = [f"{t.id} ({t.circuit_tracer})" if t.circuit_tracer else t.id
                     for t in entry.transcoder_sets.values()]
            raise NotFound(f"Unknown transcoder set '{transcoder_set}' of {entry.display_name}. Valid: "
                           f"{', '.join(valid)}.", wanted=transcoder_set, valid=list(entry.transcoder_sets))
        return entry, found

    def _check_tokens(self, n_tokens: int, entry: ModelEntry) -> None:
        if n_tokens < 2:
            raise InvalidRequest("The prompt has no token to attribute besides the BOS token. "
                                 "Type some text.")
        lim = self.b.limits.max_graph_prompt_tokens
        if n_tokens > lim:
            raise LimitExceeded("The prompt length (tokens, BOS included)", n_tokens, lim,
                                "Shorten the prompt or raise FEATURESCOPE_MAX_GRAPH_PROMPT_TOKENS.")
        if entry.n_ctx and n_tokens > entry.n_ctx:
            raise LimitExceeded(f"The prompt length (tokens) for {entry.display_name}", n_tokens, entry.n_ctx,
                                "Shorten the prompt to the model's context.")

    # ------------------------------------------------------------------ keys
    def _weights_id(self, entry: ModelEntry, tc: TranscoderSetEntry, pack: DemoPack | None) -> dict[str, Any]:
        if pack is None:
            return {"tl_name": entry.tl_name, "transcoders": tc.circuit_tracer or tc.id}
        files = [pack.root / "manifest.json", pack.weights_path(), *pack.transcoder_paths(tc.id).values()]
        stats = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        return {"pack": str(pack.root), "files": stats}

    def _keys(self, req: GraphRequest, entry: ModelEntry, tc: TranscoderSetEntry, dtype: str,
              pack: DemoPack | None) -> tuple[str, str]:
        import circuit_tracer

        raw = {"v": KEY_VERSION, "circuit_tracer": circuit_tracer.__version__, "model": entry.id,
               "weights": self._weights_id(entry, tc, pack), "transcoder_set": tc.id, "dtype": dtype,
               "device": self.b.device, "prompt": req.prompt, "max_n_logits": req.max_n_logits,
               "desired_logit_prob": req.desired_logit_prob, "max_feature_nodes": req.max_feature_nodes}
        return cache_key(raw), cache_key({**raw, "node_threshold": req.node_threshold,
                                          "edge_threshold": req.edge_threshold, "json": JSON_VERSION})

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def replacement_model(self, entry: ModelEntry, tc: TranscoderSetEntry,
                          progress: Progress | None = None) -> Any:
        """The shared circuit-tracer ReplacementModel of `entry` with `tc` (a `LoadedModel`), loaded
        under the memory budget if needed."""
        dtype = self.b.dtype_for(entry)
        pack = self.b.pack() if tc.source == "demo" else None
        return self.b.models.get(entry, dtype, progress, key=replacement_key(entry, tc),
                                 loader=lambda: load_replacement(entry, tc, self.b.device, dtype, pack),
                                 estimate_bytes=model_bytes_for(entry, tc, dtype),
                                 label=pack.label if pack is not None else None)

    # ------------------------------------------------------------------ estimate
    def _estimate(self, req: GraphRequest, entry: ModelEntry, tc: TranscoderSetEntry, dtype: str,
                  n_tokens: int, exact: bool, measured_active: int | None = None) -> GraphEstimate:
        models = self.b.models
        key = replacement_key(entry, tc)
        loaded = any(m.key == key for m in models.resident())
        room = models.budget_bytes - models.in_use_bytes()
        free = models.device_free_bytes()
        available_device = room if free is None else min(room, free)
        host = compute.device_info("cpu").free_gb
        return self.costs.estimate(
            entry, tc, n_tokens=n_tokens, tokens_exact=exact, dtype=dtype, device=self.b.device,
            device_name=compute.device_info(self.b.device).name, batch_size=req.batch_size,
            max_feature_nodes=req.max_feature_nodes, max_n_logits=req.max_n_logits, loaded=loaded,
            available_device=max(available_device, 0), available_host=None if host is None else host * GB,
            measured_active=measured_active,
        )

    def _check_active(self, n_active: int, req: GraphRequest, entry: ModelEntry, tc: TranscoderSetEntry,
                      dtype: str, n_tokens: int) -> None:
        """After the prompt's forward pass, before circuit-tracer allocates the active features'
        encoder and decoder vectors: refuse, with the figures, what the measured count cannot fit."""
        est = self._estimate(req, entry, tc, dtype, n_tokens, True, measured_active=n_active)
        if est.fits is False:
            raise self._refuse(est, entry, measured_active=n_active)

    def _refuse(self, est: GraphEstimate, entry: ModelEntry, measured_active: int | None = None) -> DoesNotFit:
        where = "GPU" if est.device == "cuda" else ("device" if est.device == "mps" else "memory")
        need = est.device_gb + (est.host_gb if est.device == "cpu" else 0)
        have = est.available_device_gb
        smaller = fitting_batch_size(est)
        advice = [f"lower batch_size to {smaller} or less" if smaller else "lower batch_size",
                  "shorten the prompt", "lower max_feature_nodes"]
        if est.device == "cuda":
            advice.append("set offload to 'cpu'")
            if est.host_gb > (est.available_host_gb or float("inf")):
                need, have, where = est.host_gb, est.available_host_gb, "host memory"
        gpu = compute.recommend_gpu(est.device_gb) if est.device == "cuda" else None
        tail = f" It would fit on a {gpu}." if gpu else ""
        counted = ("" if measured_active is None else
                   f"{measured_active:,} active features counted after the forward pass, ")
        return DoesNotFit(
            f"This graph needs about {need:.2f} GB of {where} ({est.n_tokens} tokens, {counted}"
            f"{est.feature_rows:,} feature nodes, batch_size {est.batch_size}); {have or 0:.2f} GB is available. "
            f"{', '.join(advice).capitalize()} or unload other models (System page).{tail}",
            model=entry.id, need_gb=need,
        )

    # ------------------------------------------------------------------ the request
    def attribute(self, req: GraphRequest, progress: Progress | None = None) -> GraphResult:
        timer = Timer()
        progress = progress or no_progress
        entry, tc = self.resolve(req.model, req.transcoder_set)
        dtype = self.b.dtype_for(entry)
        pack = self.b.pack() if tc.source == "demo" else None
        raw_key, result_key = self._keys(req, entry, tc, dtype, pack)
        label = pack.label if pack is not None else None
        if not req.estimate_only:
            hit = self.cache.get_result(result_key)
            if hit is not None:
                return self._finish(GraphResult.model_validate(hit), req, entry, tc, result_key, timer,
                                    cached=True)

        with self.tokenizers.using(entry, pack) as tok:
            ids = prompt_ids(tok, req.prompt) if tok is not None else None
        n_tokens = len(ids) if ids is not None else len(req.prompt.encode()) + 1
        if ids is not None:
            self._check_tokens(n_tokens, entry)
        est = self._estimate(req, entry, tc, dtype, n_tokens, ids is not None)
        if est.fits is False and not req.estimate_only:
            raise self._refuse(est, entry)
        if req.estimate_only:
            notes = est.notes + ([self._refuse(est, entry).message] if est.fits is False else [])
            cached = self.cache.get_result(result_key) is not None
            est = est.model_copy(update={"cached": cached, "notes": notes})
            return GraphResult(slug=req.slug_identifier or default_slug(entry.id, req.prompt, result_key),
                               model=entry.id, transcoder_set=tc.id, n_tokens=n_tokens, estimate=est,
                               label=label, elapsed_ms=timer.ms())
        progress(0.0, f"Estimated about {est.seconds:.0f} s and {est.device_gb:.2f} GB on {est.device}…")
        lock = self._lock_for(result_key)
        try:
            with lock:  # identical requests wait for one computation
                hit = self.cache.get_result(result_key)
                if hit is not None:
                    return self._finish(GraphResult.model_validate(hit), req, entry, tc, result_key, timer,
                                        cached=True)
                result = self._compute(req, entry, tc, dtype, pack, raw_key, ids, est, progress)
                self.cache.put_result(result_key, result.model_dump())
        finally:
            with self._locks_guard:
                if not lock.locked():
                    self._locks.pop(result_key, None)
        return self._finish(result, req, entry, tc, result_key, timer, cached=False)

    def _compute(self, req: GraphRequest, entry: ModelEntry, tc: TranscoderSetEntry, dtype: str,
                 pack: DemoPack | None, raw_key: str, ids: list[int] | None, est: GraphEstimate,
                 progress: Progress) -> GraphResult:
        from backend.local.attribution import run_attribute
        from backend.local.graph_json import build_graph_json
        from backend.local.prune import (
            prune,  # circuit-tracer's prune_graph, exactly, without a 25M-entry sort
        )

        timings: dict[str, float] = {}
        graph = self.cache.get_raw(raw_key)
        s, _ = shape_of(entry, tc, est.n_tokens, dtype)
        loaded = None
        if graph is None or ids is None:  # a cached graph needs no model, only the tokenizer
            # loading reports 0..1 of its own; keep the bar at the start of attribution meanwhile
            loaded = self.replacement_model(entry, tc, lambda f, m: progress(None if f is None else 0.0, m))
        if ids is None:  # the tokenizer's files came with the model
            with self.tokenizers.using(entry, pack) as tok:
                ids = prompt_ids(tok, req.prompt) if tok is not None else None
            if ids is None:
                with loaded.use(self.b.limits.lock_timeout_s) as model:
                    ids = prompt_ids(model.tokenizer, req.prompt)
            self._check_tokens(len(ids), entry)
        phases = None
        if graph is None:
            assert loaded is not None
            self.b.models.make_room(int(est.workspace_gb * GB), keep=loaded.key)
            with loaded.use(self.b.limits.lock_timeout_s) as model:
                attr = Timer()
                graph, phases = run_attribute(model, ids, max_n_logits=req.max_n_logits,
                                              desired_logit_prob=req.desired_logit_prob,
                                              batch_size=req.batch_size,
                                              max_feature_nodes=req.max_feature_nodes, offload=req.offload,
                                              progress=progress, check_active=lambda n: self._check_active(
                                                  n, req, entry, tc, dtype, len(ids)))
                timings["attribution"] = attr.ms()
            timings.update({f"attribution.{k}": v for k, v in phases.ms.items()})
            self.cache.put_raw(raw_key, graph)
        else:
            progress(0.95, "Re-pruning the cached attribution graph (no attribution needed)…")
        progress(0.96, "Pruning the graph (circuit-tracer prune_graph)…")
        t = Timer()
        node_mask, edge_mask, scores = prune(graph, req.node_threshold, req.edge_threshold, self.b.device)
        timings["prune"] = t.ms()
        progress(0.98, "Writing the graph JSON…")
        t = Timer()
        generation = {"max_n_logits": req.max_n_logits, "desired_logit_prob": req.desired_logit_prob,
                      "batch_size": req.batch_size, "max_feature_nodes": req.max_feature_nodes,
                      "model": entry.id, "transcoder_set": tc.id}

        def build(tokenizer: Any) -> dict[str, Any]:
            return build_graph_json(graph, node_mask, edge_mask, scores, tokenizer=tokenizer, slug="",
                                    node_threshold=req.node_threshold, edge_threshold=req.edge_threshold,
                                    generation_settings=generation, creator=None)

        with self.tokenizers.using(entry, pack) as tok:
            doc = build(tok) if tok is not None else None
        if doc is None:  # no tokenizer of its own: the model's, under the model's lock
            assert loaded is not None
            with loaded.use(self.b.limits.lock_timeout_s) as model:
                doc = build(model.tokenizer)
        timings["json"] = t.ms()
        n_active = int(graph.active_features.shape[0])
        if phases is not None:
            self._calibrate(entry, tc, dtype, s, req, n_active, len(graph.selected_features), len(ids),
                            graph.adjacency_matrix.shape[0], timings)
        return GraphResult(slug="", model=entry.id, transcoder_set=tc.id, n_tokens=len(ids),
                           n_active_features=n_active, n_feature_nodes=len(graph.selected_features),
                           n_nodes=len(doc["nodes"]), n_edges=len(doc["links"]), graph=doc, estimate=est,
                           timings_ms={k: round(v, 2) for k, v in timings.items()})

    def _calibrate(self, entry: ModelEntry, tc: TranscoderSetEntry, dtype: str, s: Any, req: GraphRequest,
                   n_active: int, n_features: int, n_tokens: int, n_nodes: int,
                   timings: dict[str, float]) -> None:
        shape = s.__class__(**{**s.__dict__, "n_tokens": n_tokens})
        per = n_active / max(shape.n_layers * n_tokens, 1)
        z = sizes(entry, shape, batch_size=req.batch_size, max_feature_nodes=n_features,
                  max_n_logits=req.max_n_logits, active_per_layer_token=per)
        self.costs.record(CostModel.key(compute.device_info(self.b.device).name, entry, tc, dtype),
                          flops=z.flops, seconds=timings["attribution"] / 1000,
                          prune_cells=float(n_nodes) ** 2, prune_seconds=timings["prune"] / 1000,
                          active_per_layer_token=per)

    def _finish(self, result: GraphResult, req: GraphRequest, entry: ModelEntry, tc: TranscoderSetEntry,
                key: str, timer: Timer, *, cached: bool) -> GraphResult:
        slug = req.slug_identifier or default_slug(entry.id, req.prompt, key)
        doc = result.graph
        if doc is not None:
            doc["metadata"]["slug"] = slug
            if req.user_id:
                doc["metadata"].setdefault("info", {})["creator_name"] = req.user_id
            self._explain(doc, entry, tc)
        label = self.b.pack().label if tc.source == "demo" else None
        return result.model_copy(update={"slug": slug, "cached": cached, "label": label,
                                         "elapsed_ms": timer.ms()})

    def _explain(self, doc: dict[str, Any], entry: ModelEntry, tc: TranscoderSetEntry) -> None:
        """Write the current explanations into the feature nodes' `clerp`."""
        layers = sorted({f[0] for f in map(feature_of, doc["nodes"]) if f is not None})
        if not layers:
            return
        texts = self.b.explanations.for_set(entry.id, tc.id, layers)
        for node in doc["nodes"]:
            f = feature_of(node)
            if f is not None:
                text = texts.get(f[0], {}).get(f[1])
                if text:
                    node["clerp"] = text
