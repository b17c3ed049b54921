"""Attribution graphs with circuit-tracer (compatible with the graph server's /generate-graph)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from backend.schemas.common import Request, Result


class GraphRequest(Request):
    prompt: str = Field(min_length=1)
    model: str = Field(description="Catalog model id (the seed's model_id).")
    transcoder_set: str
    batch_size: int = Field(48, ge=1)
    max_n_logits: int = Field(10, ge=1)
    desired_logit_prob: float = Field(0.95, gt=0.0, le=1.0)
    node_threshold: float = Field(0.8, gt=0.0, le=1.0)
    edge_threshold: float = Field(0.85, gt=0.0, le=1.0)
    max_feature_nodes: int = Field(5000, ge=1)
    offload: Literal["cpu", "disk"] | None = None
    slug_identifier: str | None = Field(None, max_length=128)
    signed_url: str | None = None
    compress: bool = False


class GraphResult(Result):
    slug: str
    n_nodes: int
    n_edges: int
    graph: dict[str, Any] = Field(description="Graph JSON in circuit-tracer / Neuronpedia's schema.")
    elapsed_ms: float = 0.0
