"""Loading models and SAEs through their libraries' own loaders.

- Hub models: `HookedTransformer.from_pretrained(entry.tl_name)` (Hugging Face cache, or the hub).
- Hub SAEs: `SAE.from_pretrained(release, sae_id)`.
- Local SAE directories: `SAE.load_from_disk(path)`.
- TopK checkpoints of the Modal design: `TopKCheckpoint.load` (weights_only / safetensors).
- The demo pack: a HookedTransformer built from the pack's config and safetensors weights.
- Transcoders: circuit-tracer's own loaders (`load_relu_transcoder` for the pack's per-layer
  files, `load_transcoder_from_hub` for the catalog's hub sets).

Failures become `ModelUnavailable` with what to do (go online, log in for a gated model, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from backend.catalog import ModelEntry, SaeSetEntry, TranscoderSetEntry
from backend.demo.pack import DemoPack
from backend.errors import InvalidRequest, ModelUnavailable
from backend.local.dictionaries import (
    FeatureDictionary,
    SaeLensDictionary,
    TopKCheckpoint,
    TranscoderDictionary,
)

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _hub_advice(entry: ModelEntry | None, exc: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    parts = [f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''})"]
    if offline:
        parts.append("HF_HUB_OFFLINE=1 is set and the files are not in the local Hugging Face cache:")
        parts.append("download them once on a connected machine, or unset HF_HUB_OFFLINE.")
    else:
        parts.append("Check the network connection to huggingface.co.")
    if entry is not None and entry.gated:
        parts.append(f"{entry.display_name} is gated: accept its licence on huggingface.co and set HF_TOKEN.")
    parts.append("The offline demo model always works.")
    return " ".join(parts)


def load_demo_model(pack: DemoPack, device: str, dtype: str) -> Any:
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    cfg = HookedTransformerConfig(**pack.model_config(), device=device, dtype=TORCH_DTYPES[dtype])
    tokenizer = AutoTokenizer.from_pretrained(str(pack.tokenizer_dir()))
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model = model.to(TORCH_DTYPES[dtype])
    model.load_state_dict(load_file(str(pack.weights_path()), device="cpu"), strict=True)
    return model.to(device).eval()


def load_hub_model(entry: ModelEntry, device: str, dtype: str) -> Any:
    from transformer_lens import HookedTransformer

    try:
        model = HookedTransformer.from_pretrained(entry.tl_name, device=device, dtype=TORCH_DTYPES[dtype])
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"Could not load {entry.display_name}. {_hub_advice(entry, exc)}") from exc
    return model.eval()


def load_model(entry: ModelEntry, device: str, dtype: str, pack: DemoPack | None) -> Any:
    if entry.source == "demo":
        if pack is None:
            raise ModelUnavailable("The demo pack is not available. Run `make demo`.")
        return load_demo_model(pack, device, dtype)
    return load_hub_model(entry, device, dtype)


def load_dictionary(
    entry: ModelEntry, sae_set: SaeSetEntry, layer: int, device: str, pack: DemoPack | None
) -> FeatureDictionary:
    """The SAE of `sae_set` at `layer`, ready on `device`."""
    from sae_lens import SAE

    hook = sae_set.hook_for(layer)
    if sae_set.source == "topk_checkpoint":
        return TopKCheckpoint.load(Path(str(sae_set.path).format(layer=layer)).expanduser(),
                                   k=sae_set.k or 32, hook_name=hook, layer=layer, device=device)
    try:
        if sae_set.source == "hub":
            sae = SAE.from_pretrained(sae_set.release, sae_set.sae_id_for(layer), device=device)
        elif sae_set.source == "local":
            path = Path(str(sae_set.path).format(layer=layer)).expanduser()
            if not (path / "cfg.json").exists():
                raise ModelUnavailable(
                    f"{path} is not a SAELens SAE directory (no cfg.json). Point the catalog 'path' "
                    "at a folder holding cfg.json and sae_weights.safetensors; use {layer} for per-layer folders."
                )
            sae = SAE.load_from_disk(path, device=device)
        else:  # demo
            if pack is None:
                raise ModelUnavailable("The demo pack is not available. Run `make demo`.")
            sae = SAE.load_from_disk(pack.sae_dir(sae_set.id, layer), device=device)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ModelUnavailable):
            raise
        raise ModelUnavailable(
            f"Could not load the {sae_set.display_name} SAE for layer {layer}. {_hub_advice(None, exc)}"
        ) from exc
    sae_hook = getattr(sae.cfg.metadata, "hook_name", None)
    if sae_hook and sae_hook != hook:
        raise InvalidRequest(
            f"The SAE for layer {layer} of '{sae_set.id}' reads {sae_hook}, but the catalog says {hook}. "
            "Fix the catalog's 'hook' template."
        )
    return SaeLensDictionary(sae=sae.eval(), hook_name=hook, layer=layer)


def load_transcoders(
    entry: ModelEntry, tc_set: TranscoderSetEntry, layers: list[int], device: str, dtype: str,
    pack: DemoPack | None,
) -> dict[int, TranscoderDictionary]:
    """Per-layer transcoders of `tc_set` at `layers`, as feature dictionaries on `device`."""
    import torch

    if tc_set.kind != "per_layer":
        raise InvalidRequest(
            f"{tc_set.display_name} is a cross-layer transcoder: its features write to every later "
            "layer, so they cannot be read or steered one layer at a time. Use it for attribution graphs."
        )
    if tc_set.source == "demo":
        from circuit_tracer.transcoder.single_layer_transcoder import load_relu_transcoder

        if pack is None:
            raise ModelUnavailable("The demo pack is not available. Run `make demo`.")
        meta, paths = pack.transcoder_set(tc_set.id), pack.transcoder_paths(tc_set.id)
        missing = [layer for layer in layers if layer not in paths]
        if missing:
            raise InvalidRequest(f"{tc_set.display_name} has no transcoder at layer(s) {missing}; "
                                 f"its layers are {sorted(paths)}.")
        loaded = {layer: load_relu_transcoder(str(paths[layer]), layer, device=torch.device(device),
                                              dtype=TORCH_DTYPES[dtype], lazy_encoder=False,
                                              lazy_decoder=False) for layer in layers}
        in_hook, out_hook = meta.feature_input_hook, meta.feature_output_hook
    else:
        from circuit_tracer.utils.hf_utils import load_transcoder_from_hub

        try:
            tset, _ = load_transcoder_from_hub(tc_set.circuit_tracer, device=torch.device(device),
                                               dtype=TORCH_DTYPES[dtype], lazy_decoder=False)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(f"Could not load {tc_set.display_name}. {_hub_advice(entry, exc)}") from exc
        missing = [layer for layer in layers if not 0 <= layer < len(tset)]
        if missing:
            raise InvalidRequest(f"{tc_set.display_name} has no transcoder at layer(s) {missing}.")
        loaded = {layer: tset[layer] for layer in layers}
        in_hook, out_hook = tset.feature_input_hook, tset.feature_output_hook
    return {layer: TranscoderDictionary(transcoder=t.eval(), hook_name=f"blocks.{layer}.{in_hook}",
                                        out_hook_name=f"blocks.{layer}.{out_hook}", layer=layer)
            for layer, t in loaded.items()}
