"""Per-feature firing density: the share of corpus tokens on which a feature fires.

Dense features (those that fire on a large share of all tokens) say little about a text, so the
UI can hide them; it needs each feature's density next to its activation. Sources, in order:

1. the corpus store of (model, set), when one is built: `stats/count[f] / n_tokens` (counts over
   every firing activation, before the top-k cut; the store holds no BOS tokens);
2. the demo pack's `stats/<set>.json` (`DemoPack.density`), for the demo model when no store exists;
3. None: nothing is known.

Arrays are cached per (model, set) and checked against the store file's identity (inode, size,
mtime) on every call, so a store that is built or rebuilt replaces the cached figures at once;
`forget` drops them explicitly. Nothing here builds a store or loads a model.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from backend.corpus.store import CorpusStore, default_store_path
from backend.errors import StoreError

if TYPE_CHECKING:
    from backend.local.runtime import Runtime

_StoreKey = tuple[int, int, int] | None  # the store file's (inode, size, mtime_ns); None: no store


class DensityCache:
    """Per (model, set): the store key the figures were read for, and per layer the density array
    (float64 [d_sae]) or None."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[_StoreKey, str, dict[int, np.ndarray | None]]] = {}

    def get(self, key: tuple[str, str], store_key: _StoreKey) -> tuple[str, dict[int, np.ndarray | None]] | None:
        with self._lock:
            hit = self._cache.get(key)
        return (hit[1], hit[2]) if hit is not None and hit[0] == store_key else None

    def put(self, key: tuple[str, str], store_key: _StoreKey, source: str,
            layers: dict[int, np.ndarray | None]) -> None:
        with self._lock:
            self._cache[key] = (store_key, source, layers)

    def forget(self, model: str | None = None, set_id: str | None = None) -> None:
        with self._lock:
            for k in list(self._cache):
                if (model is None or k[0] == model) and (set_id is None or k[1] == set_id):
                    del self._cache[k]


def cache(rt: Runtime) -> DensityCache:
    return rt.shared("density", DensityCache)


def forget(rt: Runtime, model: str | None = None, set_id: str | None = None) -> None:
    """Drop cached densities (all, a model's, or one set's); the next call reads them again."""
    cache(rt).forget(model, set_id)


def _store_key(path: os.PathLike[str]) -> _StoreKey:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _from_store(path: os.PathLike[str], model: str, set_id: str) -> dict[int, np.ndarray | None] | None:
    """Every layer's count / n_tokens from the store, or None when it is unreadable or not this set's."""
    try:
        with CorpusStore(path) as store:  # type: ignore[arg-type]
            if store.attr("model") != model or store.attr("sae_set") != set_id or not store.n_tokens:
                return None
            return {layer: store.layer(layer).count / float(store.n_tokens)
                    for layer in store.layer_ids}
    except (StoreError, OSError):
        return None


def _from_pack(rt: Runtime, model: str, set_id: str) -> dict[int, np.ndarray | None] | None:
    entry = rt.model_entry(model)
    if entry.source != "demo":
        return None
    per_layer = rt.pack().density(set_id)
    return {layer: np.asarray(values, dtype=np.float64) for layer, values in per_layer.items()} or None


def for_set(rt: Runtime, model: str, set_id: str) -> tuple[str | None, dict[int, np.ndarray | None]]:
    """(source, per layer the density of every feature) of one set: source is 'store', 'demo pack'
    or None (then the dict is empty). `model` and `set_id` are resolved catalog ids."""
    path = default_store_path(rt.settings.store_dir(), model, set_id)
    store_key = _store_key(path)
    c = cache(rt)
    hit = c.get((model, set_id), store_key)
    if hit is not None:
        return hit[0] or None, hit[1]
    layers = _from_store(path, model, set_id) if store_key is not None else None
    source = "store"
    if layers is None:
        layers, source = _from_pack(rt, model, set_id), "demo pack"
    if layers is None:
        layers, source = {}, ""
    c.put((model, set_id), store_key, source, layers)
    return source or None, layers


def layers(rt: Runtime, model: str, set_id: str, wanted: Iterable[int]) -> dict[int, np.ndarray | None]:
    """Per wanted layer its density array, or None where nothing is known."""
    _, known = for_set(rt, model, set_id)
    return {layer: known.get(layer) for layer in wanted}


def at(values: np.ndarray | None, index: int) -> float | None:
    """One feature's density from a layer's array (None when unknown or out of range)."""
    if values is None or not 0 <= index < len(values):
        return None
    return float(values[index])
