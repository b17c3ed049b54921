"""Feature dictionaries: one interface over SAELens SAEs and the Modal design's TopK checkpoints.

A dictionary reads one hook point and turns its activations into feature activations:

    encode(x: [..., d_in]) -> [..., d_sae]       decode(z) -> [..., d_in]
    w_dec: [d_sae, d_in]                        decoder directions (rows are features)

`SaeLensDictionary` delegates to SAELens' own `encode`/`decode`, so every SAELens architecture
(standard, JumpReLU, TopK, gated) behaves exactly as in SAELens.

Each dictionary also names where its reconstruction belongs (`out_hook_name`): the same hook for
an SAE, `hook_mlp_out` for a transcoder that reads `hook_resid_mid`. Steering writes there.

`TranscoderDictionary` wraps one of circuit-tracer's per-layer transcoders, delegating `encode`
to it, so steering and the feature browser see transcoder features as attribution does.

`TopKCheckpoint` is the seed's TopK SAE: a checkpoint whose `ema_sae` state dict holds
`W_dec` (d_model x n_latents), `W_enc` (n_latents x d_model) and `b_pre` (d_model). Inputs are
mean-centred and L2-normalised per token before encoding; the top k pre-activations are kept
(with their sign, as the seed does) and the rest set to zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend.errors import InvalidRequest, ModelUnavailable


def _nbytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


@dataclass
class SaeLensDictionary:
    sae: Any  # sae_lens.SAE
    hook_name: str
    layer: int

    @property
    def out_hook_name(self) -> str:
        return self.hook_name

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def dtype(self) -> torch.dtype:
        return self.sae.W_dec.dtype

    @property
    def w_dec(self) -> torch.Tensor:
        return self.sae.W_dec

    @property
    def nbytes(self) -> int:
        return _nbytes(self.sae)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and _plain_jumprelu(self.sae):
            return _jumprelu_encode(self.sae, x)
        return self.sae.encode(x.to(self.dtype))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(z.to(self.dtype))


def _plain_jumprelu(sae: Any) -> bool:
    """A SAELens JumpReLUSAE whose `encode` is exactly `_jumprelu_encode`: no input normalisation,
    no hook_z reshaping, a ReLU base activation and no hooks on its hook points."""
    from sae_lens import JumpReLUSAE

    return (type(sae) is JumpReLUSAE and sae.cfg.normalize_activations == "none"
            and not getattr(sae, "hook_z_reshaping_mode", False) and type(sae.activation_fn) is torch.nn.ReLU
            and not any(h._forward_hooks or h._forward_pre_hooks
                        for h in (sae.hook_sae_input, sae.hook_sae_acts_pre, sae.hook_sae_acts_post)))


def _jumprelu_encode(sae: Any, x: torch.Tensor) -> torch.Tensor:
    """SAELens' `JumpReLUSAE.encode`, the same operations in the same order (so the same bits), with
    two dense [tokens, d_sae] buffers instead of six: the bias added, the ReLU and the mask applied
    in place (`relu(h) * (h > threshold)`, the mask taken before the ReLU as SAELens does).
    Only without autograd (in-place ops); `tests/test_analyze.py` checks it against `sae.encode`."""
    sae_in = x.to(sae.dtype) - sae.b_dec * sae.cfg.apply_b_dec_to_input
    hidden = sae_in @ sae.W_enc
    hidden += sae.b_enc
    fires = hidden > sae.threshold
    return hidden.relu_().mul_(fires)


@dataclass
class TranscoderDictionary:
    """One layer of a circuit-tracer per-layer transcoder set: reads `hook_name` (the MLP's input,
    `blocks.L.hook_resid_mid`), writes `out_hook_name` (`blocks.L.hook_mlp_out`)."""

    transcoder: Any  # circuit_tracer.transcoder.SingleLayerTranscoder
    hook_name: str
    out_hook_name: str
    layer: int

    @property
    def d_in(self) -> int:
        return int(self.transcoder.d_model)

    @property
    def d_sae(self) -> int:
        return int(self.transcoder.d_transcoder)

    @property
    def dtype(self) -> torch.dtype:
        return self.transcoder.b_enc.dtype

    @property
    def w_dec(self) -> torch.Tensor:
        return self.transcoder.W_dec

    @property
    def nbytes(self) -> int:
        return _nbytes(self.transcoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.transcoder.encode(x.to(self.dtype))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The features' part of the MLP output (the skip connection, if any, needs the input)."""
        return z.to(self.dtype) @ self.transcoder.W_dec + self.transcoder.b_dec


class TopKCheckpoint(torch.nn.Module):
    """The seed's TopK SAE, loaded without unpickling (weights_only=True or safetensors)."""

    normalizes_input = True

    def __init__(self, w_dec: torch.Tensor, w_enc: torch.Tensor, b_pre: torch.Tensor, k: int,
                 hook_name: str, layer: int) -> None:
        super().__init__()
        d_model, n_lat = w_dec.shape
        if w_enc.shape != (n_lat, d_model) or b_pre.shape != (d_model,):
            raise InvalidRequest(
                f"TopK checkpoint shapes do not match: W_dec {tuple(w_dec.shape)}, "
                f"W_enc {tuple(w_enc.shape)}, b_pre {tuple(b_pre.shape)}; expected W_dec "
                "(d_model, n_latents), W_enc (n_latents, d_model), b_pre (d_model,)."
            )
        if not 0 < k <= n_lat:
            raise InvalidRequest(f"TopK k must be between 1 and {n_lat}; got {k}.")
        self.W_dec = torch.nn.Parameter(w_dec, requires_grad=False)
        self.W_enc = torch.nn.Parameter(w_enc, requires_grad=False)
        self.b_pre = torch.nn.Parameter(b_pre, requires_grad=False)
        self.k = k
        self.hook_name = hook_name
        self.layer = layer

    @property
    def out_hook_name(self) -> str:
        return self.hook_name

    @property
    def d_in(self) -> int:
        return int(self.W_dec.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @property
    def w_dec(self) -> torch.Tensor:
        return self.W_dec.T

    @property
    def nbytes(self) -> int:
        return _nbytes(self)

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        """Mean-centre and L2-normalise each token's activation vector."""
        x = x - x.mean(-1, keepdim=True)
        return x / x.norm(dim=-1, keepdim=True)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = (self.normalize(x.to(self.dtype)) - self.b_pre) @ self.W_enc.T
        top = torch.topk(h, self.k, dim=-1)
        return torch.zeros_like(h).scatter_(-1, top.indices, top.values)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the normalised space the SAE was trained on."""
        return z.to(self.dtype) @ self.W_dec.T + self.b_pre

    @classmethod
    def load(cls, path: Path, *, k: int, hook_name: str, layer: int, device: str) -> TopKCheckpoint:
        path = Path(path)
        if not path.exists():
            raise ModelUnavailable(f"TopK checkpoint {path} does not exist. Check the catalog 'path'.")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(str(path), device="cpu")
            state = {k.removeprefix("ema_sae."): v for k, v in flat.items()}
        else:
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # torch raises UnpicklingError for anything but tensors
                raise InvalidRequest(
                    f"{path} is not a plain tensor checkpoint ({type(exc).__name__}). Featurescope "
                    "never unpickles arbitrary objects; re-save it as {'ema_sae': state_dict} or as "
                    "safetensors."
                ) from exc
            state = ckpt.get("ema_sae", ckpt) if isinstance(ckpt, dict) else None
            if not isinstance(state, dict):
                raise InvalidRequest(f"{path} holds no 'ema_sae' state dict.")
        missing = {"W_dec", "W_enc", "b_pre"} - set(state)
        if missing:
            raise InvalidRequest(f"{path} lacks {sorted(missing)} in its 'ema_sae' state dict.")
        module = cls(state["W_dec"].float(), state["W_enc"].float(), state["b_pre"].float(), k,
                     hook_name, layer)
        return module.to(device).eval()


FeatureDictionary = SaeLensDictionary | TopKCheckpoint | TranscoderDictionary
