"""Attribution graphs with circuit-tracer, compatible with the graph server's /generate-graph.

A /generate-graph body of the graph server validates as a `GraphRequest` unchanged: the same field
names (`model_id` is accepted for `model`, and may be the Hugging Face name, e.g.
'google/gemma-2-2b') and the same defaults. `signed_url` and `compress` are for the HTTP service,
which uploads the graph JSON (gzipped when asked) itself; `attribute` ignores them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from backend.schemas.common import Request, Result


class GraphRequest(Request):
    prompt: str = Field(min_length=1, description="The text to attribute (a BOS token is prepended).")
    model: str = Field(description="Catalog model id, or its Hugging Face / TransformerLens name "
                       "(the graph server's /generate-graph reads it as `model_id`).")
    transcoder_set: str | None = Field(
        None, description="Catalog transcoder set id or circuit-tracer name ('gemma', "
                          "'mntss/clt-gemma-2-2b-2.5M'); default: the model's first transcoder set.")
    batch_size: int = Field(48, ge=1, description="Source nodes per backward pass (speed and memory only).")
    max_n_logits: int = Field(10, ge=1, description="Most logit nodes (top next-token candidates).")
    desired_logit_prob: float = Field(
        0.95, gt=0.0, le=1.0, description="Keep logits until their cumulative probability reaches this.")
    node_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="Keep the nodes carrying this share of the influence on the logits.")
    edge_threshold: float = Field(0.85, gt=0.0, le=1.0,
                                  description="Keep the edges carrying this fraction of the edge influence.")
    max_feature_nodes: int = Field(5000, ge=1, description="Most feature nodes attributed (the node budget).")
    offload: Literal["cpu", "disk"] | None = Field(
        None, description="Move finished parts of the model off the GPU during attribution to save memory.")
    slug_identifier: str | None = Field(None, max_length=128,
                                        description="Name of the graph (metadata.slug).")
    signed_url: str | None = Field(None, description="HTTP service only: PUT the graph JSON to this URL.")
    compress: bool = Field(False, description="HTTP service only: gzip the JSON before uploading it.")
    user_id: str | None = Field(None, max_length=256, description="Creator name written into metadata.info.")
    estimate_only: bool = Field(False, description="Only check the limits and estimate time and memory.")


class GraphEstimate(Result):
    """What a request will cost, worked out before anything runs."""

    n_tokens: int = Field(description="Tokens attributed, the BOS token included.")
    tokens_exact: bool = Field(True, description="False when the tokenizer was not available (upper bound).")
    n_layers: int
    feature_rows: int = Field(description="Feature nodes attributed at most (the node budget, capped).")
    logit_rows: int
    backward_passes: int
    batch_size: int
    device: str
    model_gb: float = Field(description="Model and transcoders still to load (0 when already loaded).")
    workspace_gb: float = Field(description="Device memory for the attribution itself.")
    device_gb: float = Field(description="model_gb + workspace_gb.")
    host_gb: float = Field(description="Host memory for the adjacency matrix and pruning.")
    available_device_gb: float | None = None
    available_host_gb: float | None = None
    fits: bool | None = Field(None, description="None when free memory is unknown.")
    seconds: float = Field(description="Expected attribution time.")
    seconds_basis: str = Field(description="How the time was estimated.")
    cached: bool = Field(False, description="The result is cached: it will cost nothing.")
    notes: list[str] = Field(default_factory=list)


class GraphResult(Result):
    slug: str
    model: str = Field("", description="Catalog model id.")
    transcoder_set: str = Field("", description="Catalog transcoder set id.")
    n_tokens: int = 0
    n_active_features: int = Field(0, description="Transcoder features active on the prompt.")
    n_feature_nodes: int = Field(0, description="Feature nodes attributed (at most max_feature_nodes).")
    n_nodes: int = Field(0, description="Nodes in the pruned graph.")
    n_edges: int = Field(0, description="Edges in the pruned graph.")
    graph: dict[str, Any] | None = Field(
        None, description="Graph JSON in circuit-tracer / Neuronpedia's schema; None for estimate_only.")
    estimate: GraphEstimate | None = None
    cached: bool = Field(False, description="Served from the graph cache.")
    timings_ms: dict[str, float] = Field(default_factory=dict, description="Time per phase.")
    label: str | None = Field(None, description="e.g. 'tiny random model' for the fallback pack.")
    elapsed_ms: float = 0.0
