"""LocalBackend: the protocol, in this process, on the host GPU (or CPU).

This class is thin: it validates requests against the catalog and the limits, gets models and SAEs
from the `ModelManager`, and hands the work to the module that holds it (`analysis.py`, ...).
"""

from __future__ import annotations

import functools
import os

from backend import compute
from backend.catalog import Catalog, ModelEntry, SaeSetEntry, load_catalog
from backend.demo.pack import DemoPack, fill_entry, find_pack
from backend.errors import InvalidRequest, LimitExceeded
from backend.explanations import ExplanationStore
from backend.local import analysis, compare, steering
from backend.local.graphs import GraphEngine
from backend.local.models import LoadedModel, ModelManager
from backend.protocol import Progress
from backend.schemas import (
    AnalyzeRequest,
    AnalyzeResult,
    CatalogResult,
    CompareRequest,
    CompareResult,
    EstimateRequest,
    ExperimentRequest,
    ExperimentResult,
    ExplanationEdit,
    ExplanationSaved,
    FeatureRequest,
    FeatureResult,
    GraphRequest,
    GraphResult,
    InfoResult,
    LoadedModelInfo,
    MemoryEstimate,
    ModelInfo,
    SaeSetInfo,
    SearchRequest,
    SearchResult,
    SteerRequest,
    SteerResult,
    SteerSweepRequest,
    SteerSweepResult,
    TranscoderSetInfo,
    UnloadRequest,
)
from backend.settings import Settings, get_settings

GB = compute.GB


class LocalBackend:
    kind = "local"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.limits = self.settings.limits
        self.device = compute.resolve_device(self.settings.device)
        dev = compute.device_info(self.device)
        budget_gb = self.settings.memory_budget_gb or compute.default_budget_gb(dev)
        self.models = ModelManager(
            device=self.device,
            budget_bytes=int(budget_gb * GB),
            max_models=self.settings.max_loaded_models,
            lock_timeout_s=self.limits.lock_timeout_s,
            pack=self.pack,
        )
        self.explanations = ExplanationStore(self.catalog_entries, self.settings.data_dir,
                                             self._pack_explanations)

    # ------------------------------------------------------------------ catalog
    def pack(self) -> DemoPack:
        return find_pack(self.settings.demo_dir, self.settings.data_dir)

    @functools.cached_property
    def _catalog(self) -> Catalog:
        catalog = load_catalog(self.settings.catalog_path)
        for entry in catalog.models.values():
            if entry.source == "demo":
                catalog = catalog.with_model(fill_entry(entry, self.pack()))
        return catalog

    def catalog_entries(self) -> Catalog:
        return self._catalog

    def _pack_explanations(self, model: str, sae_set: str) -> dict[int, dict[int, str]]:
        return self.pack().explanations(sae_set)

    def model_entry(self, model_id: str) -> ModelEntry:
        return self._catalog.model(model_id)

    def dtype_for(self, entry: ModelEntry) -> str:
        return compute.resolve_dtype(self.settings.dtype, entry.dtype, self.device)

    def load(self, model_id: str, progress: Progress | None = None) -> LoadedModel:
        entry = self.model_entry(model_id)
        return self.models.get(entry, self.dtype_for(entry), progress)

    def _availability(self, entry: ModelEntry) -> tuple[bool, str]:
        if entry.source == "demo":
            label = self.pack().label
            return True, label or "Offline demo pack (assets/demo)."
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(entry.hf_repo or entry.tl_name, "config.json"), str)
        if cached:
            return True, "In the local Hugging Face cache."
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            return False, "Not in the local Hugging Face cache, and HF_HUB_OFFLINE=1."
        gated = " Gated: needs HF_TOKEN with access." if entry.gated else ""
        return True, f"Downloads from the Hugging Face hub on first load.{gated}"

    def catalog(self) -> CatalogResult:
        loaded = {m.entry.id for m in self.models.resident()}
        infos = []
        for entry in self._catalog.models.values():
            available, why = self._availability(entry)
            infos.append(ModelInfo(
                id=entry.id, display_name=entry.display_name, description=entry.description,
                source=entry.source, n_params=entry.n_params, n_layers=entry.n_layers,
                d_model=entry.d_model, d_vocab=entry.d_vocab, n_ctx=entry.n_ctx, dtype=entry.dtype,
                gated=entry.gated, neuronpedia_id=entry.neuronpedia_id, memory_note=entry.memory_note,
                sae_sets=[SaeSetInfo(id=s.id, display_name=s.display_name, source=s.source,
                                     release=s.release, hook=s.hook, layers=list(s.layers or ()),
                                     d_sae=s.d_sae, neuronpedia=s.neuronpedia, window=s.window)
                          for s in entry.sae_sets.values()],
                transcoder_sets=[TranscoderSetInfo(id=t.id, display_name=t.display_name, source=t.source,
                                                   circuit_tracer=t.circuit_tracer, kind=t.kind,
                                                   d_transcoder=t.d_transcoder)
                                 for t in entry.transcoder_sets.values()],
                loaded=entry.id in loaded, available=available, availability=why,
                label=self.pack().label if entry.source == "demo" else None,
            ))
        default = self.settings.default_model
        if default not in self._catalog.models:
            default = "demo"
        return CatalogResult(models=infos, default_model=default)

    # ------------------------------------------------------------------ system
    def info(self) -> InfoResult:
        dev = compute.device_info(self.device)
        loaded = [
            LoadedModelInfo(model=m.entry.id, display_name=m.entry.display_name, device=m.device,
                            dtype=m.dtype, memory_gb=round(m.nbytes() / GB, 4),
                            sae_layers=m.loaded_layers(), label=m.label)
            for m in self.models.resident()
        ]
        return InfoResult(
            backend="local",
            device=dev,
            environment=compute.detect_environment(),
            loaded=loaded,
            memory_budget_gb=round(self.models.budget_bytes / GB, 3),
            memory_in_use_gb=round(sum(m.memory_gb for m in loaded), 4),
            versions={**compute.versions(), **compute.cuda_details()},
            limits={k: float(v) for k, v in self.limits.model_dump().items()},
        )

    def estimate(self, req: EstimateRequest) -> MemoryEstimate:
        entry = self.model_entry(req.model)
        dtype = req.dtype or self.dtype_for(entry)
        n_layers, d_sae = 0, None
        if req.sae_set:
            s = entry.sae_set(req.sae_set)
            n_layers = len(req.sae_layers) if req.sae_layers is not None else len(s.layers or ())
            d_sae = s.d_sae
        free = self.models.device_free_bytes()
        room = self.models.budget_bytes - self.models.in_use_bytes()
        available = room if free is None else min(room, free)
        return compute.estimate_memory(entry, seq_len=req.seq_len, batch_size=req.batch_size, dtype=dtype,
                                       device=self.device, sae_layers=n_layers, d_sae=d_sae,
                                       available_gb=max(available, 0) / GB)

    def unload(self, req: UnloadRequest) -> InfoResult:
        self.models.unload(req.model)
        return self.info()

    # ------------------------------------------------------------------ analysis
    def _layers(self, sae_set: SaeSetEntry, requested: list[int] | None) -> list[int]:
        layers = list(sae_set.layers or ()) if requested is None else list(dict.fromkeys(requested))
        if not layers:
            raise InvalidRequest(f"SAE set '{sae_set.id}' has no layers to read.")
        return layers

    def analyze(self, req: AnalyzeRequest, progress: Progress | None = None) -> AnalyzeResult:
        timer = analysis.Timer()
        lim = self.limits
        if req.k > lim.max_k:
            raise LimitExceeded("k", req.k, lim.max_k, "Ask for fewer features per token.")
        if len(req.track) > lim.max_tracked_features:
            raise LimitExceeded("The number of tracked features", len(req.track), lim.max_tracked_features,
                                "Track fewer features.")
        if len(req.text) > lim.max_text_chars:
            raise LimitExceeded("The text length (characters)", len(req.text), lim.max_text_chars,
                                "Shorten the text or raise FEATURESCOPE_MAX_TEXT_CHARS.")
        entry = self.model_entry(req.model)
        sae_set = entry.sae_set(req.sae_set)
        layers = self._layers(sae_set, req.layers)
        track: dict[int, list[int]] = {}
        for f in req.track:
            track.setdefault(f.layer, [])
            if f.index not in track[f.layer]:
                track[f.layer].append(f.index)
        run_layers = layers + [layer for layer in track if layer not in layers]

        loaded = self.models.get(entry, self.dtype_for(entry), progress)
        dictionaries = self.models.dictionaries(loaded, sae_set, run_layers, progress)
        prepend_bos = req.prepend_bos
        if prepend_bos is None:
            prepend_bos = sae_set.prepend_bos if sae_set.prepend_bos is not None else \
                bool(loaded.model.cfg.default_prepend_bos)
        with loaded.use(lim.lock_timeout_s) as model:
            tokens = analysis.tokenize(model, req.text, prepend_bos=prepend_bos, window=sae_set.window,
                                       max_tokens=lim.max_prompt_tokens)
            captured = analysis.run_dictionaries(model, dictionaries, tokens, req.k, track)
        explain = (self.explanations.for_set(entry.id, sae_set.id, run_layers)
                   if req.include_explanations else {})
        neuronpedia = {layer: sae_set.neuronpedia_for(layer) for layer in run_layers}
        top_layers, tracked = analysis.to_results(captured, dictionaries[:len(layers)], track, explain,
                                                  neuronpedia)
        return AnalyzeResult(model=entry.id, sae_set=sae_set.id, tokens=tokens.tokens, layers=top_layers,
                             tracked=tracked, window=tokens.window, label=loaded.label,
                             elapsed_ms=timer.ms())

    # ------------------------------------------------------------------ compare
    def compare(self, req: CompareRequest, progress: Progress | None = None) -> CompareResult:
        """Several models on the same sentences and domain terms, loaded one after another."""
        return compare.compare_models(self, req, progress)

    # ------------------------------------------------------------------ steering (local/steering.py)
    def steer(self, req: SteerRequest, progress: Progress | None = None) -> SteerResult:
        return steering.steer(self, req, progress)

    def sweep(self, req: SteerSweepRequest, progress: Progress | None = None) -> SteerSweepResult:
        return steering.sweep(self, req, progress)

    def experiment(self, req: ExperimentRequest, progress: Progress | None = None) -> ExperimentResult:
        from backend.experiments.runner import run_request

        return run_request(self, req, progress)

    # ------------------------------------------------------------------ feature browser (backend/corpus)
    @functools.cached_property
    def stores(self):
        from backend.local.dashboard import StoreRegistry

        return StoreRegistry(self.settings.store_dir())

    def feature(self, req: FeatureRequest, progress: Progress | None = None) -> FeatureResult:
        from backend.local import dashboard

        return dashboard.feature(self, req, progress)

    def search(self, req: SearchRequest, progress: Progress | None = None) -> SearchResult:
        from backend.local import dashboard

        return dashboard.search(self, req, progress)

    def save_explanation(self, req: ExplanationEdit) -> ExplanationSaved:
        from backend.local import dashboard

        return dashboard.save_explanation(self, req)

    # ------------------------------------------------------------------ attribution graphs
    @functools.cached_property
    def graphs(self) -> GraphEngine:
        return GraphEngine(self)

    def attribute(self, req: GraphRequest, progress: Progress | None = None) -> GraphResult:
        return self.graphs.attribute(req, progress)
