"""LocalBackend: the protocol, in this process, on the host GPU (or CPU).

A thin facade: each protocol method checks the request against the limits table once
(`request_limits.check_request`) and hands it, with the runtime, to the engine module that holds
the work. The engines take the `Runtime` (settings and limits, catalog, models, explanations,
device, demo pack), never this class, so they import only what lies below them.
"""

from __future__ import annotations

from typing import Any, Literal

from backend.local import analysis, compare, steering, system
from backend.local.runtime import Runtime
from backend.protocol import Progress
from backend.request_limits import check_request
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
    MemoryEstimate,
    SearchRequest,
    SearchResult,
    SteerRequest,
    SteerResult,
    SteerSweepRequest,
    SteerSweepResult,
    UnloadRequest,
)
from backend.settings import Settings


class LocalBackend:
    kind: Literal["local", "remote"] = "local"

    def __init__(self, settings: Settings | None = None) -> None:
        self.runtime = Runtime(settings)

    def __getattr__(self, name: str) -> Any:
        """The runtime's state (settings, limits, models, pack(), model_entry(), ...) reads through the
        facade, for CLIs and tests; engines get the runtime itself."""
        if name == "runtime":
            raise AttributeError(name)
        return getattr(self.runtime, name)

    def _checked(self, req: Any) -> Runtime:
        check_request(req, self.runtime.limits)
        return self.runtime

    # ------------------------------------------------------------------ system (local/system.py)
    def info(self) -> InfoResult:
        return system.info(self.runtime)

    def catalog(self) -> CatalogResult:
        return system.catalog(self.runtime)

    def estimate(self, req: EstimateRequest) -> MemoryEstimate:
        return system.estimate(self._checked(req), req)

    def unload(self, req: UnloadRequest) -> InfoResult:
        return system.unload(self._checked(req), req)

    # ------------------------------------------------------------------ analysis (local/analysis.py)
    def analyze(self, req: AnalyzeRequest, progress: Progress | None = None) -> AnalyzeResult:
        return analysis.analyze(self._checked(req), req, progress)

    # ------------------------------------------------------------------ compare (local/compare.py)
    def compare(self, req: CompareRequest, progress: Progress | None = None) -> CompareResult:
        """Several models on the same sentences and domain terms, loaded one after another."""
        return compare.compare_models(self._checked(req), req, progress)

    # ------------------------------------------------------------------ steering (local/steering.py)
    def steer(self, req: SteerRequest, progress: Progress | None = None) -> SteerResult:
        return steering.steer(self._checked(req), req, progress)

    def sweep(self, req: SteerSweepRequest, progress: Progress | None = None) -> SteerSweepResult:
        return steering.sweep(self._checked(req), req, progress)

    def experiment(self, req: ExperimentRequest, progress: Progress | None = None) -> ExperimentResult:
        from backend.experiments.runner import run_request

        return run_request(self._checked(req), req, progress)

    # ------------------------------------------------------------------ feature browser (local/dashboard.py)
    @property
    def stores(self):
        from backend.local import dashboard

        return dashboard.stores(self.runtime)

    def feature(self, req: FeatureRequest, progress: Progress | None = None) -> FeatureResult:
        from backend.local import dashboard

        return dashboard.feature(self._checked(req), req, progress)

    def search(self, req: SearchRequest, progress: Progress | None = None) -> SearchResult:
        from backend.local import dashboard

        return dashboard.search(self._checked(req), req, progress)

    def save_explanation(self, req: ExplanationEdit) -> ExplanationSaved:
        from backend.local import dashboard

        return dashboard.save_explanation(self._checked(req), req)

    # ------------------------------------------------------------------ attribution graphs (local/graphs.py)
    @property
    def graphs(self):
        from backend.local.graphs import engine

        return engine(self.runtime)

    def attribute(self, req: GraphRequest, progress: Progress | None = None) -> GraphResult:
        self._checked(req)
        return self.graphs.attribute(req, progress)
