"""circuit-tracer ReplacementModels for attribution graphs, loaded through circuit-tracer itself.

- Catalog sets (`gemma`, `llama`, `mwhanna/qwen3-4b-transcoders`, `mntss/clt-gemma-2-2b-2.5M`, ...):
  `ReplacementModel.from_pretrained(tl_name, transcoder_set)`, which downloads (or finds in the
  Hugging Face cache) both the model and the transcoders.
- The demo pack: its per-layer transcoder files through `load_transcoder_set` (the format of
  `load_relu_transcoder`), and `ReplacementModel.from_config` on the pack's HookedTransformer
  config. A ReplacementModel wraps every MLP (`blocks.L.mlp.old_mlp`) and the unembedding
  (`unembed.old_unembed`), so the pack's HookedTransformer state dict is mapped onto those names.

Tokenizers are also loaded on their own (`prompt_tokenizer`) so a prompt can be measured and a
request refused or estimated before any model is loaded.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from backend.catalog import ModelEntry, TranscoderSetEntry
from backend.demo.pack import DemoPack
from backend.errors import ModelUnavailable
from backend.local.loading import TORCH_DTYPES, _hub_advice

_MLP = re.compile(r"^(blocks\.\d+\.mlp)\.")
_UNEMBED = re.compile(r"^unembed\.")


def replacement_key(entry: ModelEntry, tc: TranscoderSetEntry) -> str:
    """ModelManager key of the ReplacementModel of `entry` with transcoder set `tc`."""
    return f"{entry.id}#graph:{tc.id}"


def demo_scan(pack: DemoPack, set_id: str) -> str:
    """The `scan` (transcoder identifier written into graph JSON) of a demo pack set."""
    return f"{pack.manifest.name}/{set_id}"


def to_replacement_names(state: dict[str, Any]) -> dict[str, Any]:
    """A HookedTransformer state dict renamed for a ReplacementModel's wrapped MLPs and unembed."""
    out = {}
    for name, tensor in state.items():
        name = _MLP.sub(r"\1.old_mlp.", name)
        name = _UNEMBED.sub("unembed.old_unembed.", name)
        out[name] = tensor
    return out


def load_demo_replacement(pack: DemoPack, set_id: str, device: str, dtype: str) -> Any:
    import torch
    from circuit_tracer import ReplacementModel
    from circuit_tracer.transcoder import load_transcoder_set
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformerConfig
    from transformers import AutoTokenizer

    meta = pack.transcoder_set(set_id)
    paths = {layer: str(path) for layer, path in pack.transcoder_paths(set_id).items()}
    n_layers = pack.model_config()["n_layers"]
    if sorted(paths) != list(range(n_layers)):
        raise ModelUnavailable(
            f"Transcoder set '{set_id}' of the demo pack covers layers {sorted(paths)}; attribution "
            f"needs one transcoder on each of the model's {n_layers} layers. Rebuild the pack."
        )
    torch_dtype = TORCH_DTYPES[dtype]
    transcoders = load_transcoder_set(paths, scan=demo_scan(pack, set_id),
                                      feature_input_hook=meta.feature_input_hook,
                                      feature_output_hook=meta.feature_output_hook,
                                      device=torch.device("cpu"), dtype=torch_dtype,
                                      lazy_encoder=False, lazy_decoder=False)
    tokenizer_dir = str(pack.tokenizer_dir())
    # tokenizer_name lets circuit-tracer's own create_graph_files find the tokenizer of a graph.
    cfg = HookedTransformerConfig(**pack.model_config(), tokenizer_name=tokenizer_dir, device="cpu",
                                  dtype=torch_dtype)
    model = ReplacementModel.from_config(cfg, transcoders,
                                         tokenizer=AutoTokenizer.from_pretrained(tokenizer_dir))
    result = model.load_state_dict(to_replacement_names(load_file(str(pack.weights_path()), device="cpu")),
                                   strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("transcoders.")]
    if missing or result.unexpected_keys:
        raise ModelUnavailable(
            f"The demo pack's weights do not fit a circuit-tracer ReplacementModel (missing "
            f"{missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}). Rebuild the pack."
        )
    return model.to(device).eval()


def load_hub_replacement(entry: ModelEntry, tc: TranscoderSetEntry, device: str, dtype: str) -> Any:
    import torch
    from circuit_tracer import ReplacementModel

    try:
        model = ReplacementModel.from_pretrained(entry.tl_name, tc.circuit_tracer or tc.id,
                                                 device=torch.device(device), dtype=TORCH_DTYPES[dtype])
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(
            f"Could not load {entry.display_name} with {tc.display_name}. {_hub_advice(entry, exc)}"
        ) from exc
    return model.eval()


def load_replacement(entry: ModelEntry, tc: TranscoderSetEntry, device: str, dtype: str,
                     pack: DemoPack | None) -> Any:
    if tc.source == "demo":
        if pack is None:
            raise ModelUnavailable("The demo pack is not available. Run `make demo`.")
        return load_demo_replacement(pack, tc.id, device, dtype)
    return load_hub_replacement(entry, tc, device, dtype)


class PromptTokenizers:
    """Tokenizers on their own (no model), one per model, to measure prompts before loading.

    A fast tokenizer is not safe to use from two threads at once, so every use holds one lock:
    `with tokenizers.using(entry, pack) as tok:` (`tok` is None when it is not available offline).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, Any] = {}

    @contextmanager
    def using(self, entry: ModelEntry, pack: DemoPack | None) -> Iterator[Any | None]:
        with self._lock:
            yield self._get(entry, pack)

    def _get(self, entry: ModelEntry, pack: DemoPack | None) -> Any | None:
        key = f"{entry.id}:{pack.root if pack is not None else ''}"
        if key not in self._cache:
            from transformers import AutoTokenizer

            name = str(pack.tokenizer_dir()) if pack is not None else (entry.hf_repo or entry.tl_name)
            try:
                self._cache[key] = AutoTokenizer.from_pretrained(name)
            except (OSError, ValueError):
                return None
        return self._cache[key]


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids as circuit-tracer attributes them: the prompt without special tokens, with one
    special token (BOS, else PAD/EOS) in front, unless the prompt already starts with one.

    circuit-tracer's `ensure_tokenized` does the same, but skips a special token whose id is 0, so
    it is done here and the ids are passed to `attribute` ready-made.
    """
    ids = list(tokenizer(prompt, add_special_tokens=False).input_ids)
    specials = set(tokenizer.all_special_ids)
    if ids and ids[0] in specials:
        return ids
    candidates = [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id,
                  *tokenizer.all_special_ids]
    first = next((c for c in candidates if c is not None), None)
    return ids if first is None else [first, *ids]
