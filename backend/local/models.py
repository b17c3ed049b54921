"""Loaded models, shared by every session: an LRU under a memory budget, one lock per model.

A model is loaded once per process and used by every browser session, CLI call or HTTP request.
So every forward pass runs under that model's lock (`LoadedModel.use`), hooks are only ever added
inside that lock and inside a context manager, and nothing a request does outlives it.

Before loading, the need is estimated from the catalog (`compute.estimate_memory`); if it does not
fit in the budget even after unloading idle models, loading is refused with the figures.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from backend import compute
from backend.catalog import ModelEntry, SaeSetEntry, TranscoderSetEntry
from backend.demo.pack import DemoPack
from backend.errors import Busy, DoesNotFit, NotFound
from backend.local.dictionaries import FeatureDictionary
from backend.local.loading import load_dictionary, load_model, load_transcoders
from backend.protocol import Progress, no_progress

GB = compute.GB


def transcoder_key(set_id: str) -> str:
    """Transcoders live beside the SAEs in `LoadedModel.dictionaries` under this set key."""
    return f"tc:{set_id}"


def module_bytes(module: Any) -> int:
    if not isinstance(module, torch.nn.Module):
        return 0
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


@dataclass(eq=False)
class LoadedModel:
    """A model on a device, its SAEs loaded so far, and the lock every use goes through."""

    key: str
    entry: ModelEntry
    model: Any  # HookedTransformer, or a subclass such as circuit-tracer's ReplacementModel
    device: str
    dtype: str
    label: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    dictionaries: dict[tuple[str, int], FeatureDictionary] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)

    def nbytes(self) -> int:
        return module_bytes(self.model) + sum(d.nbytes for d in self.dictionaries.values())

    @contextmanager
    def use(self, timeout_s: float) -> Iterator[Any]:
        """Hold the model for one request; `Busy` if another request keeps it past the timeout."""
        if not self.lock.acquire(timeout=timeout_s):
            raise Busy(
                f"{self.entry.display_name} is busy with another request for over {timeout_s:.0f} s. "
                "Retry in a moment."
            )
        try:
            self.last_used = time.monotonic()
            yield self.model
        finally:
            self.lock.release()

    def loaded_layers(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for set_id, layer in self.dictionaries:
            out.setdefault(set_id, []).append(layer)
        return {k: sorted(v) for k, v in out.items()}


class ModelManager:
    def __init__(self, *, device: str, budget_bytes: int, max_models: int, lock_timeout_s: float,
                 pack: Callable[[], DemoPack | None]) -> None:
        self.device = device
        self.budget_bytes = budget_bytes
        self.max_models = max_models
        self.lock_timeout_s = lock_timeout_s
        self._pack = pack
        self._lock = threading.Lock()  # guards _resident and _loading
        self._loading: dict[str, threading.Lock] = {}
        self._resident: OrderedDict[str, LoadedModel] = OrderedDict()

    # ----------------------------------------------------------------- accounting
    def resident(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._resident.values())

    def in_use_bytes(self) -> int:
        return sum(m.nbytes() for m in self.resident())

    def device_free_bytes(self) -> int | None:
        info = compute.device_info(self.device)
        return None if info.free_gb is None else int(info.free_gb * GB)

    def _refuse(self, what: str, need: int, entry: ModelEntry, detail: str) -> DoesNotFit:
        gpu = compute.recommend_gpu(need / GB)
        advice = "Use a smaller model or fewer SAE layers, unload other models (System page)"
        advice += ", or raise FEATURESCOPE_MEMORY_BUDGET_GB"
        if gpu:
            advice += f"; it would fit on a {gpu}"
        return DoesNotFit(
            f"{what} needs about {need / GB:.2f} GB {detail}; {self._room_text()}. {advice}.",
            model=entry.id, need_gb=round(need / GB, 3),
        )

    def _room_text(self) -> str:
        free = self.device_free_bytes()
        used = self.in_use_bytes()
        text = f"the budget is {self.budget_bytes / GB:.2f} GB with {used / GB:.2f} GB in use"
        if free is not None:
            text += f", and {free / GB:.2f} GB is free on the {self.device}"
        return text

    def make_room(self, need: int, keep: str | None) -> bool:
        """Unload idle models (not `keep`) until `need` more bytes fit, e.g. for a graph's workspace."""
        return self._make_room(need, keep)

    def _make_room(self, need: int, keep: str | None) -> bool:
        """Unload idle models, least recently used first, until `need` bytes fit. True if it fits."""
        while True:
            with self._lock:
                used = sum(m.nbytes() for m in self._resident.values())
                count = len(self._resident)
                free = self.device_free_bytes()
                fits_budget = used + need <= self.budget_bytes
                fits_device = free is None or need <= free
                fits_count = keep is not None or count < self.max_models
                if fits_budget and fits_device and fits_count:
                    return True
                victim = next(
                    (m for k, m in self._resident.items() if k != keep and m.lock.acquire(blocking=False)),
                    None,
                )
                if victim is None:
                    return False
                del self._resident[victim.key]
                victim.lock.release()
            del victim
            self._free_cache()

    def _free_cache(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()

    # ----------------------------------------------------------------- models
    def refuse_if_too_big(self, entry: ModelEntry, dtype: str) -> None:
        """Raise `DoesNotFit` now if `entry` could never fit in the budget, even alone (the check
        `get` makes before loading), so a multi-model request is refused before any work."""
        need = int(compute.estimate_memory(entry, seq_len=512, batch_size=1, dtype=dtype,
                                           device=self.device).total_gb * GB)
        if need > self.budget_bytes:
            raise self._refuse(entry.display_name, need, entry, f"in {dtype}")

    def get(self, entry: ModelEntry, dtype: str, progress: Progress | None = None,
            *, key: str | None = None, loader: Callable[[], Any] | None = None,
            estimate_bytes: int | None = None, label: str | None = None) -> LoadedModel:
        """The loaded model for `entry` (loading it if needed, under the budget).

        `key`, `loader` and `estimate_bytes` let other parts of the backend keep their own variants
        of a model (e.g. a circuit-tracer ReplacementModel) under the same budget and LRU.
        """
        progress = progress or no_progress
        key = key or entry.id
        with self._lock:
            if key in self._resident:
                self._resident.move_to_end(key)
                return self._resident[key]
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:  # one load per key at a time; others wait and then find it resident
            with self._lock:
                if key in self._resident:
                    return self._resident[key]
            if estimate_bytes is None:
                estimate_bytes = int(compute.estimate_memory(
                    entry, seq_len=512, batch_size=1, dtype=dtype, device=self.device).total_gb * GB)
            if estimate_bytes > self.budget_bytes:
                raise self._refuse(entry.display_name, estimate_bytes, entry, f"in {dtype}")
            progress(None, f"Making room for {entry.display_name}…")
            if not self._make_room(estimate_bytes, keep=None):
                raise self._refuse(entry.display_name, estimate_bytes, entry,
                                   f"in {dtype}, and the models in use cannot be unloaded now")
            progress(None, f"Loading {entry.display_name} ({dtype}, {self.device})…")
            pack = self._pack() if entry.source == "demo" else None
            started = time.monotonic()
            model = loader() if loader else load_model(entry, self.device, dtype, pack)
            if label is None and pack is not None:
                label = pack.label
            loaded = LoadedModel(key=key, entry=entry, model=model, device=self.device, dtype=dtype,
                                 label=label)
            with self._lock:
                self._resident[key] = loaded
            progress(1.0, f"Loaded {entry.display_name} in {time.monotonic() - started:.1f} s")
            return loaded

    def dictionaries(self, loaded: LoadedModel, sae_set: SaeSetEntry, layers: Sequence[int],
                     progress: Progress | None = None) -> list[FeatureDictionary]:
        """The SAEs of `sae_set` at `layers` for `loaded`, loading the missing ones."""
        valid = set(sae_set.layers or ())
        bad = [layer for layer in layers if layer not in valid]
        if bad:
            raise NotFound(
                f"SAE set '{sae_set.id}' has no SAE at layer(s) {bad}; its layers are "
                f"{sorted(valid)}.", layers=bad,
            )
        pack = self._pack() if sae_set.source == "demo" else None

        def load(missing: list[int]) -> dict[int, FeatureDictionary]:
            out = {}
            for i, layer in enumerate(missing):
                progress_(i / len(missing), f"Loading SAE {sae_set.display_name}, layer {layer} "
                                            f"({i + 1}/{len(missing)})…")
                out[layer] = load_dictionary(loaded.entry, sae_set, layer, self.device, pack)
            return out

        progress_ = progress or no_progress
        return self._dictionaries(loaded, sae_set.id, sae_set.display_name, sae_set.d_sae, layers, load,
                                  progress_)

    def transcoders(self, loaded: LoadedModel, tc_set: TranscoderSetEntry, layers: Sequence[int],
                    progress: Progress | None = None) -> list[FeatureDictionary]:
        """The per-layer transcoders of `tc_set` at `layers` for `loaded`, as feature dictionaries
        (kept beside the SAEs under the key `tc:<set id>`)."""
        progress_ = progress or no_progress
        pack = self._pack() if tc_set.source == "demo" else None

        def load(missing: list[int]) -> dict[int, FeatureDictionary]:
            progress_(None, f"Loading {tc_set.display_name}, layer(s) {missing}…")
            return load_transcoders(loaded.entry, tc_set, missing, self.device, loaded.dtype, pack)

        return self._dictionaries(loaded, transcoder_key(tc_set.id), tc_set.display_name, tc_set.d_transcoder,
                                  layers, load, progress_)

    def _dictionaries(self, loaded: LoadedModel, key: str, name: str, width: int | None, layers: Sequence[int],
                      load: Callable[[list[int]], dict[int, FeatureDictionary]],
                      progress: Progress) -> list[FeatureDictionary]:
        missing = [layer for layer in dict.fromkeys(layers) if (key, layer) not in loaded.dictionaries]
        if missing:
            need = compute.sae_bytes(loaded.entry.d_model or 0, width or 0) * len(missing)
            if not self._make_room(need, keep=loaded.key):
                raise self._refuse(f"{len(missing)} layer(s) of {name}", need, loaded.entry, "")
            with loaded.lock:
                missing = [layer for layer in missing if (key, layer) not in loaded.dictionaries]
                if missing:
                    for layer, d in load(missing).items():
                        loaded.dictionaries[(key, layer)] = d
            progress(1.0, f"Loaded {len(missing)} layer(s) of {name}")
        return [loaded.dictionaries[(key, layer)] for layer in layers]

    def unload(self, model_id: str | None) -> list[str]:
        """Unload one model (every variant of it) or all; returns the keys unloaded."""
        gone: list[str] = []
        with self._lock:
            for key, m in list(self._resident.items()):
                if model_id is None or m.entry.id == model_id:
                    if not m.lock.acquire(timeout=self.lock_timeout_s):
                        raise Busy(f"{m.entry.display_name} is in use; unload it when the request ends.")
                    del self._resident[key]
                    m.lock.release()
                    gone.append(key)
        if model_id is not None and not gone:
            raise NotFound(f"'{model_id}' is not loaded.")
        self._free_cache()
        return gone
