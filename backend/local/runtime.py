"""The runtime every engine takes: the shared state of one in-process backend.

Settings and limits, the catalog (with the demo pack's figures filled in), the model manager, the
explanations, the device and the demo pack: one small object, built once per process by
`LocalBackend` (or by a CLI or a shard worker that needs no facade) and passed to each engine
module (`analysis`, `system`, `steering`, `compare`, `graphs`, `dashboard`, `experiments`). An
engine reads what it needs from here; it never sees `LocalBackend`, so engines import only what
lies below them and the facade stays a list of one-line delegations.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from backend import compute
from backend.catalog import Catalog, ModelEntry, load_catalog
from backend.demo.pack import DemoPack, fill_entry, find_pack
from backend.explanations import ExplanationStore
from backend.local.models import LoadedModel, ModelManager
from backend.protocol import Progress
from backend.settings import Limits, Settings, get_settings

T = TypeVar("T")


class Runtime:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.limits: Limits = self.settings.limits
        self.device = compute.resolve_device(self.settings.device)
        dev = compute.device_info(self.device)
        budget_gb = self.settings.memory_budget_gb or compute.default_budget_gb(dev)
        self.models = ModelManager(
            device=self.device,
            budget_bytes=int(budget_gb * compute.GB),
            max_models=self.settings.max_loaded_models,
            lock_timeout_s=self.limits.lock_timeout_s,
            pack=self.pack,
        )
        self.explanations = ExplanationStore(self.catalog_entries, self.settings.data_dir,
                                             self._pack_explanations)
        self._shared_lock = threading.Lock()
        self._shared: dict[str, Any] = {}

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
        """The catalog entry of a catalog id, a hub name or a seed server's name (catalog.resolve_model)."""
        return self._catalog.resolve_model(model_id)

    def dtype_for(self, entry: ModelEntry) -> str:
        return compute.resolve_dtype(self.settings.dtype, entry.dtype, self.device)

    def load(self, model_id: str, progress: Progress | None = None) -> LoadedModel:
        entry = self.model_entry(model_id)
        return self.models.get(entry, self.dtype_for(entry), progress)

    def shared(self, name: str, make: Callable[[], T]) -> T:
        """Engine state that lives as long as the runtime (open corpus stores, graph caches), made by
        the engine on first use, so the runtime never imports an engine."""
        with self._shared_lock:
            if name not in self._shared:
                self._shared[name] = make()
            return self._shared[name]
