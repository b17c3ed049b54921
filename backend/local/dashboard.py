"""`Backend.feature`, `Backend.search` and `Backend.save_explanation`: the feature dashboard engine.

A dashboard combines what the weights say (top and bottom logits: the decoder direction through
the unembedding), what people said (the explanation: demo pack, Neuronpedia export, or the
user's own, saved here), and what the corpus shows (statistics, max-activating examples and
quantile bands from the store). The demo model's store is built on first use from the demo
pack's corpus; other stores are built with `python -m backend.corpus build`.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from backend.corpus import layout as L
from backend.corpus import query, sets
from backend.corpus.build import BuildOptions, build_store, default_store_path
from backend.corpus.shards import tensor_probe
from backend.corpus.sources import SourceSpec
from backend.corpus.store import CorpusStore
from backend.errors import InvalidRequest, NotFound, StoreError
from backend.local import analysis, density
from backend.protocol import Progress, no_progress
from backend.schemas import (
    ExplanationEdit,
    ExplanationSaved,
    FeatureHit,
    FeatureRef,
    FeatureRequest,
    FeatureResult,
    LogitEntry,
    SearchRequest,
    SearchResult,
)

if TYPE_CHECKING:
    from backend.local.runtime import Runtime


class StoreRegistry:
    """Open stores by path, shared by every request; reopened when the file is replaced."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = Path(store_dir)
        self._lock = threading.Lock()
        self._open: dict[Path, tuple[tuple[int, int, int], CorpusStore]] = {}
        self._build_locks: dict[Path, threading.Lock] = {}
        self._building: dict[Path, tuple[float | None, str]] = {}  # a build's last progress, for waiters

    def path(self, model: str, set_id: str) -> Path:
        return default_store_path(self.store_dir, model, set_id)

    def open(self, path: Path) -> CorpusStore:
        st = os.stat(path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._open.get(path)
            if cached and cached[0] == key:
                return cached[1]
        store = CorpusStore(path)
        with self._lock:
            old = self._open.pop(path, None)
            self._open[path] = (key, store)
        if old is not None:
            old[1].close()
        return store

    def forget(self, path: Path) -> None:
        with self._lock:
            old = self._open.pop(path, None)
        if old is not None:
            old[1].close()

    def build_lock(self, path: Path) -> threading.Lock:
        with self._lock:
            return self._build_locks.setdefault(path, threading.Lock())

    def report(self, path: Path, progress: Progress) -> Progress:
        """`progress`, also recorded as the build's latest state so that waiting requests can show it."""

        def relay(fraction: float | None, message: str) -> None:
            self._building[path] = (fraction, message)
            progress(fraction, message)

        return relay

    def done_building(self, path: Path) -> None:
        self._building.pop(path, None)

    def acquire_build(self, path: Path, wait: bool, progress: Progress) -> bool:
        """Take the build lock of `path`. With `wait`, block until it is free, relaying the progress
        of the build that holds it; without, answer False at once when another request is building."""
        lock = self.build_lock(path)
        if lock.acquire(blocking=False):
            return True
        if not wait:
            return False
        while not lock.acquire(timeout=0.5):
            fraction, message = self._building.get(path, (None, "Waiting for the corpus store being built…"))
            progress(fraction, message)
        return True


def stores(rt: Runtime) -> StoreRegistry:
    """The runtime's open corpus stores (one registry per runtime, made on first use)."""
    return rt.shared("stores", lambda: StoreRegistry(rt.settings.store_dir()))


def check_store(store: CorpusStore, model_id: str, dset: sets.DictionarySet, layer: int, dictionary: Any,
                model: Any) -> None:
    """Refuse a store built for another model, set, layer width or other weights."""
    a = store.raw_attrs()
    if a.get("model") != model_id or a.get("sae_set") != dset.id:
        raise StoreError(f"{store.path} was built for {a.get('model')}/{a.get('sae_set')}, not {model_id}/{dset.id}. "
                         "Point the request at the right store, or build one for this set.", path=str(store.path))
    view = store.layer(layer)
    if view.d_sae != dictionary.d_sae:
        raise StoreError(f"{store.path} holds {view.d_sae} features at layer {layer}, but the loaded dictionary "
                         f"has {dictionary.d_sae}: it was built for another SAE. Rebuild it.", path=str(store.path))
    stale = (store.model_probe is not None and not L.probes_match(store.model_probe, tensor_probe(model.W_U))) or \
        (view.probe is not None and not L.probes_match(view.probe, tensor_probe(dictionary.w_dec)))
    if stale:
        raise StoreError(f"{store.path} was built with other weights of {model_id}/{dset.id} (the model or the "
                         "dictionary changed since). Rebuild it.", path=str(store.path), stale=True)


def _demo_store(backend: Any, entry: Any, dset: sets.DictionarySet, path: Path, progress: Progress) -> Path | None:
    corpus = backend.pack().corpus_path()
    if corpus is None:
        return None
    opts = BuildOptions(model=entry.id, sae_set=dset.id, source=SourceSpec(str(corpus)), out=path,
                        max_tokens=backend.settings.demo_store_max_tokens)
    reg = stores(backend)
    relay = reg.report(path, progress)
    relay(None, f"Building the demo corpus store for {dset.display_name} (first use)…")
    try:
        return build_store(opts, backend=backend, progress=relay)
    finally:
        reg.done_building(path)
        density.forget(backend, entry.id, dset.id)


PENDING_NOTE = ("The corpus store of this set is being built (first use); examples and corpus statistics "
                "follow when it is ready.")


def open_store(backend: Any, entry: Any, dset: sets.DictionarySet, layer: int, dictionary: Any, model: Any,
               progress: Progress, notes: list[str], wait: bool = True) -> tuple[CorpusStore | None, str]:
    """The checked store of (model, set) and its status ('ready', 'pending' or 'absent'), building the
    demo's on first use (or when it is stale). Without `wait`, a store that is missing or being built
    answers 'pending' at once instead of being built or waited for."""
    reg = stores(backend)
    path = reg.path(entry.id, dset.id)
    if not reg.acquire_build(path, wait, progress):
        notes.append(PENDING_NOTE)
        return None, "pending"
    try:
        if not path.exists():
            if entry.source != "demo":
                notes.append(f"No corpus store for {entry.id}/{dset.id} yet, so no examples or statistics. Build one: "
                             f"python -m backend.corpus build --model {entry.id} --sae-set {dset.id} "
                             "--source CORPUS (a .txt/.jsonl/.csv/.parquet file or a dataset name).")
                return None, "absent"
            if backend.pack().corpus_path() is None:
                notes.append("The demo pack has no corpus, so there are no examples.")
                return None, "absent"
            if not wait:
                notes.append(PENDING_NOTE)
                return None, "pending"
            _demo_store(backend, entry, dset, path, progress)
        store = reg.open(path)
        try:
            check_store(store, entry.id, dset, layer, dictionary, model)
        except StoreError as exc:
            if entry.source != "demo" or not exc.details.get("stale"):
                raise
            if not wait:
                notes.append(PENDING_NOTE)
                return None, "pending"
            reg.forget(path)
            path.unlink()
            _demo_store(backend, entry, dset, path, progress)
            store = reg.open(path)
            check_store(store, entry.id, dset, layer, dictionary, model)
            notes.append("The demo pack changed since its corpus store was built; the store was rebuilt.")
        return store, "ready"
    finally:
        reg.build_lock(path).release()


def _logits(model: Any, dictionary: Any, index: int, n: int) -> tuple[list[LogitEntry], list[LogitEntry]]:
    if n == 0:
        return [], []
    with torch.inference_mode():
        w_u = model.W_U
        logits = (dictionary.w_dec[index].to(w_u.dtype) @ w_u).float()
        top = torch.topk(logits, min(n, logits.numel()))
        bottom = torch.topk(-logits, min(n, logits.numel()))
    texts = analysis.token_texts(model.tokenizer, top.indices.tolist() + bottom.indices.tolist())

    def entries(ids: list[int], values: list[float], names: list[str]) -> list[LogitEntry]:
        return [LogitEntry(token=t, id=i, value=v) for i, v, t in zip(ids, values, names)]

    k = len(top.indices)
    return (entries(top.indices.tolist(), top.values.tolist(), texts[:k]),
            entries(bottom.indices.tolist(), (-bottom.values).tolist(), texts[k:]))


def save_explanation(backend: Any, req: ExplanationEdit) -> ExplanationSaved:
    """Save (or, with an empty text, remove) the user's explanation of a feature; answer with what
    the feature is explained as now. Checks the feature exists from the catalog, loading nothing."""
    text = req.text.strip()
    ref = req.feature
    entry = backend.model_entry(ref.model)
    dset = sets.resolve(entry, ref.sae_set)
    dset.check_layer(ref.layer)
    if dset.d_sae is not None and ref.index >= dset.d_sae:
        raise NotFound(f"Feature {ref.index} does not exist: layer {ref.layer} of {dset.display_name} has "
                       f"{dset.d_sae} features (0–{dset.d_sae - 1}).")
    backend.explanations.save(entry.id, dset.id, ref.layer, ref.index, text)
    explanation, source = backend.explanations.get(entry.id, dset.id, ref.layer, ref.index)
    return ExplanationSaved(feature=ref, explanation=explanation, explanation_source=source)


def feature(backend: Any, req: FeatureRequest, progress: Progress | None = None) -> FeatureResult:
    timer = analysis.Timer()
    progress = progress or no_progress
    ref = req.feature
    entry = backend.model_entry(ref.model)
    dset = sets.resolve(entry, ref.sae_set)
    dset.check_layer(ref.layer)
    loaded = backend.load(entry.id, progress)
    (dictionary,) = sets.load(backend.models, loaded, dset, [ref.layer], progress)
    if ref.index >= dictionary.d_sae:
        raise NotFound(f"Feature {ref.index} does not exist: layer {ref.layer} of {dset.display_name} has "
                       f"{dictionary.d_sae} features (0–{dictionary.d_sae - 1}).")
    model = loaded.model
    top, bottom = _logits(model, dictionary, ref.index, req.n_logits)
    explanation, source = backend.explanations.get(entry.id, dset.id, ref.layer, ref.index)
    result: dict[str, Any] = dict(
        feature=ref, dictionary_kind=dset.kind, d_sae=dictionary.d_sae, hook_name=dictionary.hook_name,
        label=loaded.label, explanation=explanation, explanation_source=source, top_logits=top,
        bottom_logits=bottom, neuronpedia_url=dset.neuronpedia_url(ref.layer, ref.index))
    notes: list[str] = []
    store, status = open_store(backend, entry, dset, ref.layer, dictionary, model, progress, notes,
                               wait=req.wait_for_store)
    result["store_status"] = status
    if store is not None:
        view = store.layer(ref.layer)
        f = ref.index
        count = int(view.count[f])

        def decode(ids: list[int]) -> list[str]:
            return analysis.token_texts(model.tokenizer, ids)

        result.update(
            store=store.path.name, store_tokens=store.n_tokens, store_docs=store.n_docs,
            n_active=count, density=count / store.n_tokens if store.n_tokens else 0.0,
            max_activation=float(view.peak[f]), mean_activation=view.total(f) / count if count else None,
            histogram=query.histogram(view, f), sampling=query.stats_sampling(store),
            examples=query.top_examples(store, view, f, req.n_examples, req.context_tokens, decode),
            examples_sampling=query.examples_sampling(store, view),
            quantiles=query.quantile_bands(store, view, f, req.n_quantiles, req.examples_per_quantile,
                                           req.context_tokens, decode),
            quantiles_sampling=query.quantiles_sampling(store, req.n_quantiles) if req.n_quantiles else None)
        if count == 0:
            notes.append(f"This feature never fires on the {store.n_tokens:,} tokens of the corpus store.")
    else:  # no store (yet): the demo pack's statistics, when it ships them
        result["density"] = density.at(density.layers(backend, entry.id, dset.id, [ref.layer])[ref.layer], ref.index)
    return FeatureResult(**result, notes=notes, elapsed_ms=timer.ms())


# ---------------------------------------------------------------------------------------- search
def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"\w+", text.lower()) if w]


def _search_explanations(backend: Any, req: SearchRequest, entry: Any, dset: sets.DictionarySet,
                         layers: list[int]) -> list[FeatureHit]:
    words = _words(req.query or "")
    if not words:
        raise InvalidRequest("Type the words to look for in the explanations.")
    phrase = " ".join(words)
    hits = []
    dens = density.layers(backend, entry.id, dset.id, layers)
    for layer, feats in backend.explanations.for_set(entry.id, dset.id, layers).items():
        for index, text in feats.items():
            have = _words(text)
            joined = " ".join(have)
            if all(any(h.startswith(w) for h in have) for w in words):
                score = sum(h.startswith(w) for w in words for h in have) + (2.0 if phrase in joined else 0.0)
                hits.append(FeatureHit(feature=FeatureRef(model=entry.id, sae_set=dset.id, layer=layer, index=index),
                                       score=float(score), explanation=text,
                                       density=density.at(dens.get(layer), index)))
    hits.sort(key=lambda h: (-h.score, h.feature.layer, h.feature.index))
    return hits[:req.k]


def _search_text(backend: Any, req: SearchRequest, entry: Any, dset: sets.DictionarySet, layers: list[int],
                 progress: Progress) -> tuple[list[FeatureHit], int, str | None, list[str]]:
    lim = backend.limits
    text = req.text or ""
    if not text.strip():
        raise InvalidRequest("Type a text to find the features that fire most on it.")
    loaded = backend.load(entry.id, progress)
    dictionaries = sets.load(backend.models, loaded, dset, layers, progress)
    prepend_bos = req.prepend_bos
    if prepend_bos is None:
        prepend_bos = dset.prepend_bos if dset.prepend_bos is not None else \
            bool(loaded.model.cfg.default_prepend_bos)
    peaks: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    with loaded.use(lim.lock_timeout_s) as model:
        tokens = analysis.tokenize(model, text, prepend_bos=prepend_bos, window=dset.window,
                                   max_tokens=lim.max_prompt_tokens)
        real = torch.tensor([not t.special for t in tokens.tokens], device=model.cfg.device)

        def make_hook(d: Any):
            def hook(act: torch.Tensor, hook: Any) -> None:
                z = d.encode(act).reshape(-1, d.d_sae)[:tokens.n_tokens].float()
                z = torch.where(real[:, None], z, torch.zeros((), device=z.device))
                best = z.max(0)
                peaks[d.layer] = (best.values.cpu(), best.indices.cpu(), (z > 0).sum(0).cpu())

            return hook

        with torch.inference_mode(), model.hooks(fwd_hooks=[(d.hook_name, make_hook(d)) for d in dictionaries]):
            model(tokens.ids, return_type=None,
                  stop_at_layer=analysis.stop_layer([d.hook_name for d in dictionaries]))
    explain = backend.explanations.for_set(entry.id, dset.id, layers)
    candidates = []
    for layer, (values, positions, counts) in peaks.items():
        top = torch.topk(values, min(req.k, len(values)))
        for v, i in zip(top.values.tolist(), top.indices.tolist()):
            if v > 0:
                candidates.append((v, layer, i, int(positions[i]), int(counts[i])))
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    notes: list[str] = []
    corpus_peaks = _corpus_peaks(backend, entry, dset, notes)
    dens = density.layers(backend, entry.id, dset.id, layers)
    hits = []
    for v, layer, i, pos, n in candidates[:req.k]:
        peak = corpus_peaks.get(layer)
        rel = v / float(peak[i]) if peak is not None and peak[i] > 0 else None
        hits.append(FeatureHit(feature=FeatureRef(model=entry.id, sae_set=dset.id, layer=layer, index=i), score=v,
                               max_activation=v, explanation=explain.get(layer, {}).get(i), n_active_tokens=n,
                               top_position=pos, top_token=tokens.tokens[pos].text, relative=rel,
                               density=density.at(dens.get(layer), i)))
    return hits, tokens.n_tokens, loaded.label, notes


def _corpus_peaks(backend: Any, entry: Any, dset: sets.DictionarySet, notes: list[str]) -> dict[int, np.ndarray]:
    """Per layer, each feature's corpus maximum, when a store is already there (search never builds one)."""
    path = stores(backend).path(entry.id, dset.id)
    if not path.exists():
        return {}
    try:
        store = stores(backend).open(path)
        if store.attr("model") != entry.id or store.attr("sae_set") != dset.id:
            return {}
        return {layer: store.layer(layer).peak for layer in store.layer_ids}
    except StoreError as exc:
        notes.append(f"The corpus store could not be read, so no relative activations: {exc.message}")
        return {}


def search(backend: Any, req: SearchRequest, progress: Progress | None = None) -> SearchResult:
    timer = analysis.Timer()
    progress = progress or no_progress
    entry = backend.model_entry(req.model)
    dset = sets.resolve(entry, req.sae_set)
    layers = list(dict.fromkeys(req.layers)) if req.layers else list(dset.layers)
    for layer in layers:
        dset.check_layer(layer)
    if req.mode == "explanation":
        hits = _search_explanations(backend, req, entry, dset, layers)
        return SearchResult(mode=req.mode, hits=hits, elapsed_ms=timer.ms())
    hits, n_tokens, label, notes = _search_text(backend, req, entry, dset, layers, progress)
    return SearchResult(mode=req.mode, hits=hits, n_tokens=n_tokens, label=label, notes=notes,
                        elapsed_ms=timer.ms())
