"""Typed access to backend/catalog.yaml (plus an optional user catalog merged over it).

The YAML is read once (`load_catalog` is cached) into frozen pydantic entries. Unknown ids raise
`NotFound` with the list of valid ones, so a typo in the CLI or a URL says what would work.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.errors import InvalidRequest, NotFound
from backend.links import neuronpedia_url

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _choices(kind: str, wanted: str, valid: list[str]) -> NotFound:
    listed = ", ".join(valid) if valid else "none"
    return NotFound(f"Unknown {kind} '{wanted}'. Valid {kind}s: {listed}.", wanted=wanted, valid=valid)


class SaeSetEntry(_Entry):
    """A family of SAEs on one model, one SAE per layer."""

    id: str
    display_name: str
    source: Literal["hub", "demo", "local", "topk_checkpoint"] = "hub"
    release: str | None = Field(None, description="SAELens release name (source: hub).")
    sae_id: str | None = Field(None, description="SAELens sae_id template with {layer}.")
    hook: str = Field(description="TransformerLens hook name template with {layer}.")
    layers: tuple[int, ...] | None = Field(None, description="Layers with an SAE; None: from source.")
    d_sae: int | None = None
    neuronpedia: str | None = Field(None, description="Neuronpedia source id template with {layer}.")
    path: str | None = Field(None, description="Directory (local) or checkpoint file (topk_checkpoint).")
    k: int | None = Field(None, description="Active latents per token (topk_checkpoint).")
    window: int | None = Field(None, description="Run text in independent windows of this many tokens.")
    prepend_bos: bool | None = Field(None, description="Prepend BOS when tokenising; None: model default.")

    @model_validator(mode="after")
    def _check_source_fields(self) -> SaeSetEntry:
        if self.source == "hub" and not (self.release and self.sae_id):
            raise ValueError(f"sae set '{self.id}': source 'hub' needs 'release' and 'sae_id'")
        if self.source in ("local", "topk_checkpoint") and not self.path:
            raise ValueError(f"sae set '{self.id}': source '{self.source}' needs 'path'")
        if "{layer}" not in self.hook and (self.layers is None or len(self.layers) != 1):
            raise ValueError(f"sae set '{self.id}': 'hook' needs a {{layer}} placeholder")
        return self

    def hook_for(self, layer: int) -> str:
        return self.hook.format(layer=layer)

    def sae_id_for(self, layer: int) -> str:
        if self.sae_id is None:
            raise InvalidRequest(f"SAE set '{self.id}' has no sae_id template.")
        return self.sae_id.format(layer=layer)

    def neuronpedia_for(self, layer: int) -> str | None:
        return self.neuronpedia.format(layer=layer) if self.neuronpedia else None


class TranscoderSetEntry(_Entry):
    id: str
    display_name: str
    source: Literal["hub", "demo"] = "hub"
    circuit_tracer: str | None = Field(None, description="circuit-tracer transcoder_set argument.")
    repo: str | None = None
    kind: Literal["per_layer", "cross_layer"] = "per_layer"
    d_transcoder: int | None = None
    neuronpedia: str | None = None
    layers: tuple[int, ...] | None = Field(None, description="Layers with a transcoder; None: every layer.")


class ModelEntry(_Entry):
    id: str
    display_name: str
    description: str = ""
    source: Literal["transformer_lens", "demo"] = "transformer_lens"
    tl_name: str | None = None
    hf_repo: str | None = None
    gated: bool = False
    n_params: int | None = None
    n_layers: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    d_head: int | None = None
    d_mlp: int | None = None
    d_vocab: int | None = None
    n_ctx: int | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    memory_note: str | None = None
    neuronpedia_id: str | None = None
    sae_sets: dict[str, SaeSetEntry] = Field(default_factory=dict)
    transcoder_sets: dict[str, TranscoderSetEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ModelEntry:
        if self.source == "transformer_lens" and not self.tl_name:
            raise ValueError(f"model '{self.id}': source 'transformer_lens' needs 'tl_name'")
        return self

    def sae_set(self, sae_set: str) -> SaeSetEntry:
        try:
            return self.sae_sets[sae_set]
        except KeyError:
            raise _choices(f"SAE set of {self.id}", sae_set, list(self.sae_sets)) from None

    def transcoder_set(self, name: str) -> TranscoderSetEntry:
        try:
            return self.transcoder_sets[name]
        except KeyError:
            raise _choices(f"transcoder set of {self.id}", name, list(self.transcoder_sets)) from None

    def transcoder_layers(self, tc: TranscoderSetEntry) -> tuple[int, ...]:
        """The layers of a transcoder set: its own list (the demo pack's), else every layer."""
        return tc.layers if tc.layers is not None else tuple(range(self.n_layers or 0))

    def feature_sets(self) -> list[FeatureSet]:
        """Every SAE and transcoder set of this model, with its real layers."""
        return [*(FeatureSet.of_sae(s) for s in self.sae_sets.values()),
                *(FeatureSet.of_transcoders(t, self.transcoder_layers(t)) for t in self.transcoder_sets.values())]

    def feature_set(self, set_id: str | None) -> FeatureSet:
        """THE resolver of feature sets: an SAE set or a transcoder set of this model, by catalog id or
        by circuit-tracer / repo name. None: the model's first per-layer transcoder set (the graph
        server steers the transcoders its graphs are built from), else its first SAE set."""
        sets = self.feature_sets()
        if set_id is None:
            default = next((f for f in sets if isinstance(f.entry, TranscoderSetEntry) and f.entry.kind == "per_layer"),
                           None)
            default = default or next((f for f in sets if f.kind == "sae"), None)
            if default is None:
                raise InvalidRequest(f"{self.display_name} has no SAE or transcoder set.")
            return default
        found = next((f for f in sets if f.id == set_id), None) or next(
            (f for f in sets
             if isinstance(f.entry, TranscoderSetEntry) and set_id in {f.entry.circuit_tracer, f.entry.repo}), None)
        if found is None:
            valid = [f.id for f in sets]
            raise NotFound(f"Unknown SAE or transcoder set '{set_id}' of {self.id}. "
                           f"Valid sets: {', '.join(valid) or 'none'}.", wanted=set_id, valid=valid)
        return found


@dataclass(frozen=True)
class FeatureSet:
    """An SAE set or a transcoder set of a model, as one thing: what the corpus stores, steering,
    the dashboards and the UI need to know about a family of feature dictionaries."""

    id: str
    kind: Literal["sae", "transcoder"]
    display_name: str
    layers: tuple[int, ...]
    d_sae: int | None
    entry: SaeSetEntry | TranscoderSetEntry
    window: int | None = None
    prepend_bos: bool | None = None
    k: int | None = None

    @classmethod
    def of_sae(cls, s: SaeSetEntry) -> FeatureSet:
        return cls(id=s.id, kind="sae", display_name=s.display_name, layers=tuple(s.layers or ()), d_sae=s.d_sae,
                   entry=s, window=s.window, prepend_bos=s.prepend_bos,
                   k=s.k if s.source == "topk_checkpoint" else None)

    def neuronpedia_url(self, layer: int, index: int) -> str | None:
        template = self.entry.neuronpedia
        return neuronpedia_url(template.format(layer=layer) if template else None, index)

    def check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise NotFound(f"{self.display_name} has no layer {layer}; its layers are {list(self.layers)}.")

    def prepend_bos_for(self, model_default: bool) -> bool:
        """Whether to prepend BOS: the SAE set's own choice, else the model's default."""
        if self.kind == "sae" and self.prepend_bos is not None:
            return bool(self.prepend_bos)
        return bool(model_default)

    def hook_template(self) -> str:
        if isinstance(self.entry, SaeSetEntry):
            return self.entry.hook
        return "blocks.{layer}.hook_resid_mid -> blocks.{layer}.hook_mlp_out"

    @classmethod
    def of_transcoders(cls, t: TranscoderSetEntry, layers: tuple[int, ...]) -> FeatureSet:
        return cls(id=t.id, kind="transcoder", display_name=t.display_name, layers=layers,
                   d_sae=t.d_transcoder, entry=t)


class Catalog(_Entry):
    models: dict[str, ModelEntry]

    def model(self, model_id: str) -> ModelEntry:
        try:
            return self.models[model_id]
        except KeyError:
            raise _choices("model", model_id, list(self.models)) from None

    def resolve_model(self, name: str) -> ModelEntry:
        """The entry a model name means (`find_model`); unknown: NotFound listing the catalog ids."""
        found = find_model(name, list(self.models.values()))
        if found is None:
            raise _choices("model", name, list(self.models))
        return found

    def ids(self) -> list[str]:
        return list(self.models)

    def with_model(self, entry: ModelEntry) -> Catalog:
        """A copy with `entry` added or replaced (used to fill in the demo pack's shapes)."""
        return Catalog(models={**self.models, entry.id: entry})


M = TypeVar("M")
NAME_FIELDS = (("id",), ("tl_name", "hf_repo"), ("neuronpedia_id",))


def find_model(name: str, models: Sequence[M]) -> M | None:
    """THE resolver of model names, over catalog entries or the `ModelInfo`s a service lists: a
    catalog id, else a TransformerLens or Hugging Face name (`google/gemma-2-2b`, as the graph
    server and the hub write it), else a Neuronpedia id, exact first, then case-insensitively; else
    a name whose last part is a catalog id (`someorg/GPT2-Small`)."""
    name = name.strip()
    for same in (str.__eq__, lambda a, b: a.lower() == b.lower()):
        for fields in NAME_FIELDS:
            for m in models:
                if any(same(name, getattr(m, f, None) or "") for f in fields):
                    return m
    last = name.rsplit("/", 1)[-1].lower()  # a hub name whose last part is a catalog id
    return next((m for m in models if getattr(m, "id", "").lower() == last), None)


def _with_ids(raw_models: dict[str, Any]) -> dict[str, Any]:
    """Give every entry its key as `id`, so the YAML need not repeat it."""
    out: dict[str, Any] = {}
    for mid, m in raw_models.items():
        m = dict(m or {})
        m["id"] = mid
        for group in ("sae_sets", "transcoder_sets"):
            m[group] = {sid: {**(s or {}), "id": sid} for sid, s in (m.get(group) or {}).items()}
        out[mid] = m
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Extra entries replace or extend base ones; sae/transcoder sets merge per id."""
    merged = {k: dict(v) for k, v in base.items()}
    for mid, m in extra.items():
        if mid in merged:
            for group in ("sae_sets", "transcoder_sets"):
                m[group] = {**merged[mid].get(group, {}), **m.get(group, {})}
            merged[mid] = {**merged[mid], **m}
        else:
            merged[mid] = m
    return merged


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"Could not read catalog {path}: {exc}. Fix or remove the file.") from exc
    return _with_ids(data.get("models") or {})


@functools.cache
def load_catalog(extra_path: Path | None = None) -> Catalog:
    """Our catalog, with `extra_path` (a user's YAML in the same format) merged over it."""
    raw = _read(CATALOG_PATH)
    if extra_path is not None:
        raw = _merge(raw, _read(Path(extra_path)))
    try:
        return Catalog(models=raw)
    except ValueError as exc:
        raise InvalidRequest(f"The catalog is invalid: {exc}") from exc
