"""Compute awareness: which device and environment we are on, and what a model would need.

The estimates follow the compute-awareness notes (seed 004): weights from the parameter count
and dtype, an activation cache for a given sequence length (residual, attention Q/K/V/Z and
pattern, MLP pre/post per layer) and the SAE parameters. They are deliberately on the safe side.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path

from backend.catalog import ModelEntry
from backend.schemas import DeviceInfo, EnvironmentInfo, MemoryEstimate

GB = 1024**3

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Common GPUs by memory, smallest first: what to suggest when something does not fit.
GPU_LADDER: list[tuple[str, float]] = [
    ("NVIDIA T4 (16 GB)", 16),
    ("NVIDIA L4 / A10G / RTX 4090 (24 GB)", 24),
    ("NVIDIA L40S / A6000 (48 GB)", 48),
    ("NVIDIA A100 / H100 (80 GB)", 80),
    ("NVIDIA H200 (141 GB)", 141),
]
# Leave this share of a GPU for the CUDA context, fragmentation and other processes.
USABLE_FRACTION = 0.9


def detect_environment(env: dict[str, str] | None = None) -> EnvironmentInfo:
    """Where we run: HF Space, Modal, RunPod, Colab, Kaggle, Vast, Lambda, Docker, SSH or local."""
    env = dict(os.environ) if env is None else env
    checks: list[tuple[str, str, list[str]]] = [
        ("hf_space", "SPACE_ID", ["SPACE_ID", "SPACE_HOST", "SPACE_HARDWARE"]),
        ("modal", "MODAL_TASK_ID", ["MODAL_TASK_ID", "MODAL_ENVIRONMENT"]),
        ("runpod", "RUNPOD_POD_ID", ["RUNPOD_POD_ID", "RUNPOD_GPU_COUNT"]),
        ("colab", "COLAB_RELEASE_TAG", ["COLAB_RELEASE_TAG", "COLAB_GPU"]),
        ("kaggle", "KAGGLE_KERNEL_RUN_TYPE", ["KAGGLE_KERNEL_RUN_TYPE"]),
        ("vast", "VAST_CONTAINERLABEL", ["VAST_CONTAINERLABEL"]),
    ]
    for kind, marker, keys in checks:
        if env.get(marker):
            return EnvironmentInfo(kind=kind, details={k: env[k] for k in keys if env.get(k)})
    if Path("/etc/lambda").exists():
        return EnvironmentInfo(kind="lambda")
    if Path("/.dockerenv").exists():
        return EnvironmentInfo(kind="docker", details={"hostname": socket.gethostname()})
    if env.get("SSH_CONNECTION"):
        return EnvironmentInfo(kind="ssh_remote", details={"hostname": socket.gethostname()})
    return EnvironmentInfo(kind="local", details={"hostname": socket.gethostname()})


def resolve_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        if requested == "cuda" and not torch.cuda.is_available():
            from backend.errors import InvalidRequest

            raise InvalidRequest("FEATURESCOPE_DEVICE=cuda, but no CUDA GPU is visible. Use 'auto' or 'cpu'.")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(requested: str, catalog_dtype: str, device: str) -> str:
    """The catalog's dtype on a GPU; float32 on CPU, where half precision is slow or unsupported."""
    if requested != "auto":
        return requested
    if device == "cpu":
        return "float32"
    if catalog_dtype == "bfloat16" and device == "cuda":
        import torch

        if not torch.cuda.is_bf16_supported():
            return "float16"
    return catalog_dtype


def device_info(device: str) -> DeviceInfo:
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        return DeviceInfo(
            kind="cuda",
            name=props.name,
            count=torch.cuda.device_count(),
            total_gb=total / GB,
            used_gb=(total - free) / GB,
            free_gb=free / GB,
            compute_capability=f"{props.major}.{props.minor}",
            torch_reserved_gb=torch.cuda.memory_reserved(0) / GB,
        )
    import psutil

    vm = psutil.virtual_memory()
    name = platform.processor() or platform.machine()
    if device == "mps":
        return DeviceInfo(kind="mps", name=f"Apple GPU ({name})", total_gb=vm.total / GB,
                          used_gb=(vm.total - vm.available) / GB, free_gb=vm.available / GB)
    return DeviceInfo(
        kind="cpu",
        name=f"{name or 'CPU'} ({os.cpu_count()} cores)",
        count=os.cpu_count() or 1,
        total_gb=vm.total / GB,
        used_gb=(vm.total - vm.available) / GB,
        free_gb=vm.available / GB,
    )


def default_budget_gb(device: DeviceInfo) -> float:
    """90% of the device's memory (GPU), or of the machine's (CPU)."""
    return round((device.total_gb or 8.0) * USABLE_FRACTION, 2)


def recommend_gpu(total_gb: float) -> str | None:
    for name, mem in GPU_LADDER:
        if total_gb <= mem * USABLE_FRACTION:
            return name
    return None


def activation_cache_bytes(entry: ModelEntry, seq_len: int, batch: int, dtype_bytes: int) -> int:
    """A full activation cache for one forward pass (the seed's per-layer formula)."""
    d_model = entry.d_model or 0
    n_heads = entry.n_heads or 0
    d_head = entry.d_head or (d_model // n_heads if n_heads else 0)
    d_mlp = entry.d_mlp or 4 * d_model
    resid = batch * seq_len * d_model
    attn = 4 * batch * seq_len * n_heads * d_head + batch * n_heads * seq_len * seq_len
    mlp = 2 * batch * seq_len * d_mlp
    return (entry.n_layers or 0) * (resid + attn + mlp) * dtype_bytes


def sae_bytes(d_in: int, d_sae: int, dtype_bytes: int = 4) -> int:
    """W_enc, W_dec, b_enc, b_dec (plus a threshold vector for JumpReLU)."""
    return (2 * d_in * d_sae + 2 * d_sae + d_in) * dtype_bytes


def estimate_memory(
    entry: ModelEntry,
    *,
    seq_len: int,
    batch_size: int,
    dtype: str,
    device: str,
    sae_layers: int = 0,
    d_sae: int | None = None,
    available_gb: float | None = None,
) -> MemoryEstimate:
    nbytes = DTYPE_BYTES[dtype]
    notes: list[str] = []
    if entry.n_params is None:
        notes.append("Parameter count unknown; weights estimated as 0.")
    weights = (entry.n_params or 0) * nbytes / GB
    acts = activation_cache_bytes(entry, seq_len, batch_size, nbytes) / GB
    saes = 0.0
    if sae_layers and entry.d_model and d_sae:
        saes = sae_layers * sae_bytes(entry.d_model, d_sae, nbytes) / GB
    total = weights + acts + saes
    fits = None if available_gb is None else total <= available_gb
    if fits is False:
        notes.append(f"Needs about {total:.1f} GB; {available_gb:.1f} GB is available.")
    return MemoryEstimate(
        model=entry.id,
        dtype=dtype,
        seq_len=seq_len,
        batch_size=batch_size,
        weights_gb=round(weights, 3),
        activations_gb=round(acts, 3),
        saes_gb=round(saes, 3),
        sae_layers=sae_layers,
        total_gb=round(total, 3),
        device=device,
        available_gb=None if available_gb is None else round(available_gb, 3),
        fits=fits,
        recommended_gpu=recommend_gpu(total),
        notes=notes,
    )


VERSIONED_PACKAGES = (
    "torch",
    "transformer-lens",
    "sae-lens",
    "circuit-tracer",
    "transformers",
    "streamlit",
    "fastapi",
    "pydantic",
    "h5py",
    "numpy",
)


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def cuda_details() -> dict[str, str]:
    import torch

    out = {"cuda_available": str(torch.cuda.is_available())}
    if torch.cuda.is_available():
        out["cuda_version"] = str(torch.version.cuda)
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out
