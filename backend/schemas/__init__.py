"""Every request and result of the Backend protocol; also the HTTP wire format.

One module per operation, re-exported here so callers write `from backend.schemas import X`.
"""

from backend.schemas.analyze import (
    AnalyzeRequest,
    AnalyzeResult,
    FeatureActivation,
    LayerTopK,
    TrackedActivations,
)
from backend.schemas.common import FeatureRef, LayerFeature, Request, Result, TokenInfo
from backend.schemas.compare import (
    CompareRequest,
    CompareResult,
    ModelReading,
    SentenceReading,
    TermTokenization,
)
from backend.schemas.feature import (
    Example,
    FeatureHit,
    FeatureRequest,
    FeatureResult,
    Histogram,
    LogitEntry,
    QuantileBand,
    Sampling,
    SearchRequest,
    SearchResult,
)
from backend.schemas.graph import GraphEstimate, GraphRequest, GraphResult
from backend.schemas.steer import SteerFeature, SteerMetrics, SteerRequest, SteerResult
from backend.schemas.system import (
    CatalogResult,
    DeviceInfo,
    EnvironmentInfo,
    EstimateRequest,
    InfoResult,
    LoadedModelInfo,
    MemoryEstimate,
    ModelInfo,
    SaeSetInfo,
    TranscoderSetInfo,
    UnloadRequest,
)

__all__ = [
    "AnalyzeRequest",
    "AnalyzeResult",
    "CatalogResult",
    "CompareRequest",
    "CompareResult",
    "DeviceInfo",
    "EnvironmentInfo",
    "EstimateRequest",
    "Example",
    "FeatureActivation",
    "FeatureHit",
    "FeatureRef",
    "FeatureRequest",
    "FeatureResult",
    "GraphEstimate",
    "GraphRequest",
    "GraphResult",
    "Histogram",
    "InfoResult",
    "LayerFeature",
    "LayerTopK",
    "LoadedModelInfo",
    "LogitEntry",
    "MemoryEstimate",
    "ModelInfo",
    "ModelReading",
    "QuantileBand",
    "Request",
    "Result",
    "SaeSetInfo",
    "Sampling",
    "SearchRequest",
    "SearchResult",
    "SentenceReading",
    "SteerFeature",
    "SteerMetrics",
    "SteerRequest",
    "SteerResult",
    "TermTokenization",
    "TokenInfo",
    "TrackedActivations",
    "TranscoderSetInfo",
    "UnloadRequest",
]
