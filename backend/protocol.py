"""The Backend protocol: the only thing the UI, the CLI and the HTTP service call.

Every method takes one request model and returns one result model from `backend.schemas`;
results hold plain data so the same models travel over HTTP unchanged. Failures are
`backend.errors.BackendError`s whose message says what to do.

Long methods accept an optional `progress(fraction, message)` callback: `fraction` is in [0, 1]
or None when unknown. The UI turns it into a progress bar, the CLI into a tqdm line.

Beyond the eight methods of DESIGN.md, `estimate` and `unload` serve the System page: memory
estimates before loading, and freeing a model. They cross the protocol so a remote GPU can be
managed from the app as well as a local one. `sweep` (one feature scaled by several alphas on a
prompt) and `experiment` (seed 002's interventions over a corpus) serve the steering playground:
each is one call, so the default run is computed once and a remote GPU does the whole job.
"""

from __future__ import annotations

from typing import Callable, Literal, Protocol, runtime_checkable

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

Progress = Callable[[float | None, str], None]


def no_progress(fraction: float | None, message: str) -> None:
    """The default progress callback: ignore."""


@runtime_checkable
class Backend(Protocol):
    kind: Literal["local", "remote"]

    def info(self) -> InfoResult: ...

    def catalog(self) -> CatalogResult: ...

    def estimate(self, req: EstimateRequest) -> MemoryEstimate: ...

    def unload(self, req: UnloadRequest) -> InfoResult: ...

    def analyze(self, req: AnalyzeRequest, progress: Progress | None = None) -> AnalyzeResult: ...

    def feature(self, req: FeatureRequest, progress: Progress | None = None) -> FeatureResult: ...

    def search(self, req: SearchRequest, progress: Progress | None = None) -> SearchResult: ...

    def save_explanation(self, req: ExplanationEdit) -> ExplanationSaved: ...

    def steer(self, req: SteerRequest, progress: Progress | None = None) -> SteerResult: ...

    def sweep(self, req: SteerSweepRequest, progress: Progress | None = None) -> SteerSweepResult: ...

    def experiment(self, req: ExperimentRequest, progress: Progress | None = None) -> ExperimentResult: ...

    def attribute(self, req: GraphRequest, progress: Progress | None = None) -> GraphResult: ...

    def compare(self, req: CompareRequest, progress: Progress | None = None) -> CompareResult: ...
