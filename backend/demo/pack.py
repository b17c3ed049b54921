"""The demo pack's on-disk format, and where to find the pack.

A pack is a directory:

    manifest.json                     what is in the pack (see `Manifest`)
    model/config.json                 TransformerLens HookedTransformerConfig fields
    model/model.safetensors           the HookedTransformer state dict
    tokenizer/                        a Hugging Face fast tokenizer (tokenizer.json + config)
    saes/<set>/layer_<L>/             SAELens format: cfg.json, sae_weights.safetensors
    transcoders/<set>/layer_<L>.safetensors
                                      circuit-tracer per-layer transcoders, one file per layer, in
                                      the format its `load_relu_transcoder` reads: W_enc and W_dec
                                      [d_transcoder, d_model], b_enc, b_dec, and for JumpReLU
                                      `activation_function.threshold`; they read `hook_resid_mid`
                                      and write `hook_mlp_out` (manifest: feature_*_hook)
    explanations/<set>.json           {"<layer>": {"<index>": "explanation"}} (SAE or transcoder set)
    stats/<set>.json                  {"tokens": n, "bos": "excluded", "density": {"<layer>": [f, ...]}}:
                                      per feature, the share of the sample's non-BOS tokens it fires on
    corpus file (manifest `corpus`)   text the pack's corpus activation store is built from: one
                                      document per line, `.txt` or `.txt.gz`

The trained pack lives in assets/demo (settings.demo_dir). When it is missing, a tiny random pack
with the same layout is built once under settings.data_dir and labelled as such.
"""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backend.errors import ModelUnavailable

FORMAT = "featurescope-demo"
VERSION = 2  # 2: transcoder sets in circuit-tracer's per-layer format
TINY_LABEL = "tiny random model built locally: the trained demo pack is not installed"


class PackSaeSet(BaseModel):
    model_config = ConfigDict(extra="allow")

    hook: str = Field(description="Hook name template with {layer}.")
    layers: list[int]
    d_sae: int
    dir: str = Field(description="Directory holding layer_<L>/ SAELens folders.")
    explanations: str | None = None
    stats: str | None = Field(None, description="stats/<set>.json: per-feature firing density.")
    bos: str | None = Field(None, description="'excluded': the dictionaries never saw BOS (training, "
                                              "calibration, statistics); their output there is meaningless.")


class PackTranscoderSet(BaseModel):
    model_config = ConfigDict(extra="allow")

    dir: str = Field(description="Directory holding layer_<L>.safetensors.")
    layers: list[int]
    d_transcoder: int
    kind: str = "per_layer"
    feature_input_hook: str = "hook_resid_mid"
    feature_output_hook: str = "hook_mlp_out"
    explanations: str | None = None
    stats: str | None = Field(None, description="stats/<set>.json: per-feature firing density.")
    bos: str | None = Field(None, description="'excluded': the dictionaries never saw BOS (training, "
                                              "calibration, statistics); their output there is meaningless.")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: str = FORMAT
    version: int = VERSION
    name: str
    label: str | None = Field(None, description="Shown beside results, e.g. for the tiny fallback.")
    model_dir: str = "model"
    tokenizer_dir: str = "tokenizer"
    sae_sets: dict[str, PackSaeSet] = Field(default_factory=dict)
    transcoder_sets: dict[str, PackTranscoderSet] = Field(default_factory=dict)
    corpus: str | None = Field(None, description="Corpus file relative to the pack root (one document "
                                                 "per line, .txt or .txt.gz) for the activation store.")


class DemoPack:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        path = self.root / "manifest.json"
        try:
            self.manifest = Manifest.model_validate_json(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"The demo pack at {self.root} is unreadable ({exc}). Rebuild it with `make demo`."
            ) from exc
        if self.manifest.format != FORMAT or self.manifest.version != VERSION:
            raise ModelUnavailable(
                f"{path} is format {self.manifest.format} v{self.manifest.version}; this version "
                f"reads {FORMAT} v{VERSION}. Rebuild the pack with `make demo`."
            )

    @property
    def label(self) -> str | None:
        return self.manifest.label

    def model_config(self) -> dict[str, Any]:
        return json.loads((self.root / self.manifest.model_dir / "config.json").read_text())

    def weights_path(self) -> Path:
        return self.root / self.manifest.model_dir / "model.safetensors"

    def tokenizer_dir(self) -> Path:
        return self.root / self.manifest.tokenizer_dir

    def sae_set(self, set_id: str) -> PackSaeSet:
        try:
            return self.manifest.sae_sets[set_id]
        except KeyError:
            raise ModelUnavailable(
                f"The demo pack has no SAE set '{set_id}'; it has {sorted(self.manifest.sae_sets)}."
            ) from None

    def sae_dir(self, set_id: str, layer: int) -> Path:
        return self.root / self.sae_set(set_id).dir / f"layer_{layer}"

    def corpus_path(self) -> Path | None:
        """The text the pack's activation store is built from, if the pack has one."""
        if self.manifest.corpus is None:
            return None
        path = self.root / self.manifest.corpus
        return path if path.exists() else None

    def transcoder_set(self, set_id: str) -> PackTranscoderSet:
        try:
            return self.manifest.transcoder_sets[set_id]
        except KeyError:
            raise ModelUnavailable(
                f"The demo pack has no transcoder set '{set_id}'; it has "
                f"{sorted(self.manifest.transcoder_sets)}."
            ) from None

    def transcoder_paths(self, set_id: str) -> dict[int, Path]:
        """layer -> safetensors file, for circuit-tracer's `load_transcoder_set`."""
        tc = self.transcoder_set(set_id)
        return {layer: self.root / tc.dir / f"layer_{layer}.safetensors" for layer in tc.layers}

    def explanations(self, set_id: str) -> dict[int, dict[int, str]]:
        """Explanations of an SAE set or a transcoder set of the pack (empty when it has none)."""
        if set_id in self.manifest.sae_sets:
            rel = self.manifest.sae_sets[set_id].explanations
        elif set_id in self.manifest.transcoder_sets:
            rel = self.manifest.transcoder_sets[set_id].explanations
        else:
            rel = None
        if rel is None or not (self.root / rel).exists():
            return {}
        raw = json.loads((self.root / rel).read_text())
        return {int(layer): {int(i): str(text) for i, text in feats.items()} for layer, feats in raw.items()}


    def density(self, set_id: str) -> dict[int, list[float]]:
        """Per layer, each feature's share of the pack's sample tokens (BOS excluded) that it fires
        on; empty when the pack ships no statistics for the set (packs before the rebuild)."""
        entry = self.manifest.sae_sets.get(set_id) or self.manifest.transcoder_sets.get(set_id)
        rel = entry.stats if entry is not None else None
        if rel is None or not (self.root / rel).exists():
            return {}
        raw = json.loads((self.root / rel).read_text())
        return {int(layer): [float(v) for v in values] for layer, values in raw["density"].items()}


_build_lock = threading.Lock()


def _current(manifest: Path) -> bool:
    """Whether a (tiny, rebuildable) pack exists in this version's format."""
    try:
        m = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    return m.get("format") == FORMAT and m.get("version") == VERSION


@functools.cache
def _find(demo_dir: Path, data_dir: Path) -> DemoPack:
    if (demo_dir / "manifest.json").exists():
        return DemoPack(demo_dir)
    tiny_dir = data_dir / "tiny-demo"
    with _build_lock:
        if not _current(tiny_dir / "manifest.json"):
            from backend.demo.tiny import build_tiny_pack

            build_tiny_pack(tiny_dir, {"format": FORMAT, "version": VERSION, "label": TINY_LABEL})
    return DemoPack(tiny_dir)


def find_pack(demo_dir: Path, data_dir: Path) -> DemoPack:
    """The trained pack if installed, else the tiny fallback (built on first use, in a second)."""
    return _find(Path(demo_dir).resolve(), Path(data_dir).resolve())


def safetensors_numel(path: Path) -> int:
    """Number of elements in a safetensors file, read from its JSON header (no tensor loaded)."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    total = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for dim in meta["shape"]:
            n *= int(dim)
        total += n
    return total


def fill_entry(entry: Any, pack: DemoPack) -> Any:
    """The catalog's demo entry with shapes, layers and label taken from the installed pack."""
    cfg = pack.model_config()
    sae_sets = {}
    for set_id, sae_set in entry.sae_sets.items():
        if set_id in pack.manifest.sae_sets:
            ps = pack.manifest.sae_sets[set_id]
            sae_sets[set_id] = sae_set.model_copy(update={"layers": tuple(ps.layers), "d_sae": ps.d_sae,
                                                          "hook": ps.hook})
    transcoder_sets = {}
    for set_id, tc in entry.transcoder_sets.items():
        if set_id in pack.manifest.transcoder_sets:
            pt = pack.manifest.transcoder_sets[set_id]
            transcoder_sets[set_id] = tc.model_copy(update={"d_transcoder": pt.d_transcoder, "kind": pt.kind,
                                                                "layers": tuple(pt.layers)})
    return entry.model_copy(update={
        "n_params": safetensors_numel(pack.weights_path()),
        "n_layers": cfg["n_layers"],
        "d_model": cfg["d_model"],
        "n_heads": cfg["n_heads"],
        "d_head": cfg["d_head"],
        "d_mlp": cfg.get("d_mlp"),
        "d_vocab": cfg["d_vocab"],
        "n_ctx": cfg["n_ctx"],
        "sae_sets": sae_sets,
        "transcoder_sets": transcoder_sets,
    })
