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

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel

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

    def info(self) -> InfoResult:
        """Device, memory, loaded models, versions and the limits table."""

    def catalog(self) -> CatalogResult:
        """Models with their SAE and transcoder sets (each with its layers)."""

    def estimate(self, req: EstimateRequest) -> MemoryEstimate:
        """Memory a model would need, and whether it fits."""

    def unload(self, req: UnloadRequest) -> InfoResult:
        """Unload one model (or all)."""

    def analyze(self, req: AnalyzeRequest, progress: Progress | None = None) -> AnalyzeResult:
        """Per-token top-k SAE features of a text."""

    def feature(self, req: FeatureRequest, progress: Progress | None = None) -> FeatureResult:
        """One feature's dashboard."""

    def search(self, req: SearchRequest, progress: Progress | None = None) -> SearchResult:
        """Features firing on a text, or matching an explanation."""

    def save_explanation(self, req: ExplanationEdit) -> ExplanationSaved:
        """Save your own explanation of a feature (empty text: remove it)."""

    def steer(self, req: SteerRequest, progress: Progress | None = None) -> SteerResult:
        """Default vs steered generation."""

    def sweep(self, req: SteerSweepRequest, progress: Progress | None = None) -> SteerSweepResult:
        """One feature scaled by several alphas on a prompt."""

    def experiment(self, req: ExperimentRequest, progress: Progress | None = None) -> ExperimentResult:
        """Small intervention experiment over a corpus (large runs: python -m backend.experiments run)."""

    def attribute(self, req: GraphRequest, progress: Progress | None = None) -> GraphResult:
        """Attribution graph of a prompt (circuit-tracer JSON)."""

    def compare(self, req: CompareRequest, progress: Progress | None = None) -> CompareResult:
        """Several models on the same domain sentences."""


@dataclass(frozen=True)
class MethodSpec:
    """One protocol method as the CLI, the service and the client see it, read from `Backend`."""

    name: str
    request: type[BaseModel] | None
    result: type[BaseModel]
    long: bool  # takes a progress callback: GPU work (the service runs it under its GPU lock)
    doc: str

    @property
    def summary(self) -> str:
        """The docstring's first line: the CLI's help and the route's summary."""
        return self.doc.splitlines()[0].rstrip(".") if self.doc else self.name


def _describe(name: str, fn: Callable) -> MethodSpec:
    hints = typing.get_type_hints(fn)
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    request = next((t for p in params if isinstance(t := hints.get(p.name), type) and issubclass(t, BaseModel)),
                   None)
    result = hints.get("return")
    if not (isinstance(result, type) and issubclass(result, BaseModel)):
        raise TypeError(f"Backend.{name} must return a pydantic model, not {result!r}")
    return MethodSpec(name=name, request=request, result=result,
                      long=any(p.name == "progress" for p in params), doc=inspect.getdoc(fn) or "")


@functools.cache
def methods() -> dict[str, MethodSpec]:
    """Every method of the Backend protocol, in declaration order: THE registry of methods."""
    return {name: _describe(name, fn) for name, fn in vars(Backend).items()
            if not name.startswith("_") and inspect.isfunction(fn)}
