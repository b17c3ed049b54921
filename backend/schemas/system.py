"""Compute awareness: what runs where, what is loaded, and what would fit."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from backend.schemas.common import Request, Result


class DeviceInfo(Result):
    kind: Literal["cpu", "cuda", "mps"]
    name: str
    count: int = 1
    total_gb: float | None = None
    used_gb: float | None = None
    free_gb: float | None = None
    compute_capability: str | None = None
    torch_reserved_gb: float | None = None


class EnvironmentInfo(Result):
    kind: str = Field(description="local, hf_space, modal, runpod, colab, kaggle, vast, lambda, docker, ssh_remote")
    details: dict[str, str] = Field(default_factory=dict)


class LoadedModelInfo(Result):
    model: str
    display_name: str
    device: str
    dtype: str
    memory_gb: float
    sae_layers: dict[str, list[int]] = Field(default_factory=dict, description="SAE set -> loaded layers.")
    label: str | None = Field(None, description="e.g. 'tiny random model' for the fallback pack.")


class InfoResult(Result):
    backend: Literal["local", "remote"]
    device: DeviceInfo
    environment: EnvironmentInfo
    loaded: list[LoadedModelInfo]
    memory_budget_gb: float
    memory_in_use_gb: float
    versions: dict[str, str]
    limits: dict[str, float]
    remote_url: str | None = None


class MemoryEstimate(Result):
    model: str
    dtype: str
    seq_len: int
    batch_size: int
    weights_gb: float
    activations_gb: float = Field(description="Activation cache of one forward at seq_len x batch.")
    saes_gb: float
    sae_layers: int
    total_gb: float
    device: str
    available_gb: float | None = Field(None, description="Free device memory, or the budget if lower.")
    fits: bool | None = Field(None, description="None when the device memory is unknown.")
    recommended_gpu: str | None = Field(None, description="Smallest common GPU that would hold it.")
    notes: list[str] = Field(default_factory=list)


class SaeSetInfo(Result):
    id: str
    display_name: str
    source: str
    release: str | None
    hook: str
    layers: list[int]
    d_sae: int | None
    neuronpedia: str | None
    window: int | None = None


class TranscoderSetInfo(Result):
    id: str
    display_name: str
    source: str
    circuit_tracer: str | None
    kind: str
    d_transcoder: int | None
    layers: list[int] = Field(default_factory=list, description="Layers with a transcoder.")


class ModelInfo(Result):
    id: str
    display_name: str
    description: str
    source: str
    n_params: int | None
    n_layers: int | None
    d_model: int | None
    d_vocab: int | None
    n_ctx: int | None
    dtype: str
    gated: bool
    neuronpedia_id: str | None
    tl_name: str | None = Field(None, description="TransformerLens name; the model answers to it too.")
    hf_repo: str | None = Field(None, description="Hugging Face repo; the model answers to it too.")
    memory_note: str | None
    sae_sets: list[SaeSetInfo]
    transcoder_sets: list[TranscoderSetInfo]
    loaded: bool = False
    available: bool = Field(description="Weights are on disk or the hub is reachable.")
    availability: str = Field("", description="Why it is or is not available.")
    label: str | None = None


class CatalogResult(Result):
    models: list[ModelInfo]
    default_model: str


class EstimateRequest(Request):
    model: str
    seq_len: int = Field(512, ge=1, le=1_000_000)
    batch_size: int = Field(1, ge=1, le=4096)
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    sae_set: str | None = None
    sae_layers: list[int] | None = Field(None, description="None: every layer of the SAE set.")


class UnloadRequest(Request):
    model: str | None = Field(None, description="None unloads every model.")
