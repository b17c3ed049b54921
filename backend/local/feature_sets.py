"""Which features a request means: the model (by catalog id or hub name), the SAE or transcoder set
(`sae_set` may name either), and the loaded dictionaries of the layers it needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from backend.catalog import ModelEntry, SaeSetEntry, TranscoderSetEntry
from backend.errors import InvalidRequest, NotFound
from backend.local.dictionaries import FeatureDictionary
from backend.local.models import LoadedModel
from backend.protocol import Progress

if TYPE_CHECKING:
    from backend.local.backend import LocalBackend


def resolve_model(backend: LocalBackend, model_id: str) -> ModelEntry:
    """The catalog entry for a catalog id, or for a TransformerLens / Hugging Face name
    (`google/gemma-2-2b`, as the graph server's `model_id` is written)."""
    try:
        return backend.model_entry(model_id)
    except NotFound:
        for entry in backend.catalog_entries().models.values():
            if model_id in (entry.tl_name, entry.hf_repo):
                return entry
        raise


@dataclass(frozen=True)
class FeatureSet:
    id: str
    kind: Literal["sae", "transcoder"]
    entry: SaeSetEntry | TranscoderSetEntry

    @property
    def display_name(self) -> str:
        return self.entry.display_name

    def prepend_bos(self, model) -> bool:
        if self.kind == "sae" and self.entry.prepend_bos is not None:
            return bool(self.entry.prepend_bos)
        return bool(model.cfg.default_prepend_bos)

    def hook_template(self) -> str:
        if self.kind == "sae":
            return self.entry.hook
        return "blocks.{layer}.hook_resid_mid -> blocks.{layer}.hook_mlp_out"


def resolve_set(entry: ModelEntry, set_id: str | None) -> FeatureSet:
    """An SAE set or a per-layer transcoder set of `entry`; None: its first transcoder set, else
    its first SAE set (the graph server steers transcoder features and names no set)."""
    if set_id is None:
        per_layer = [t for t in entry.transcoder_sets.values() if t.kind == "per_layer"]
        if per_layer:
            return FeatureSet(per_layer[0].id, "transcoder", per_layer[0])
        if entry.sae_sets:
            first = next(iter(entry.sae_sets.values()))
            return FeatureSet(first.id, "sae", first)
        raise InvalidRequest(f"{entry.display_name} has no SAE or transcoder set to steer with.")
    if set_id in entry.sae_sets:
        return FeatureSet(set_id, "sae", entry.sae_sets[set_id])
    if set_id in entry.transcoder_sets:
        return FeatureSet(set_id, "transcoder", entry.transcoder_sets[set_id])
    valid = list(entry.sae_sets) + list(entry.transcoder_sets)
    raise NotFound(
        f"Unknown SAE or transcoder set '{set_id}' of {entry.id}. Valid sets: {', '.join(valid) or 'none'}.",
        wanted=set_id,
        valid=valid,
    )


def load_dictionaries(
    backend: LocalBackend,
    loaded: LoadedModel,
    fset: FeatureSet,
    layers: Sequence[int],
    progress: Progress | None = None,
) -> dict[int, FeatureDictionary]:
    layers = list(dict.fromkeys(layers))
    n_layers = loaded.model.cfg.n_layers
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise NotFound(
            f"{loaded.entry.display_name} has layers 0–{n_layers - 1}; there is no layer {bad[0]}.",
            layers=bad,
        )
    if fset.kind == "sae":
        found = backend.models.dictionaries(loaded, fset.entry, layers, progress)
    else:
        found = backend.models.transcoders(loaded, fset.entry, layers, progress)
    return dict(zip(layers, found))


def check_index(d: FeatureDictionary, fset: FeatureSet, index: int) -> None:
    if not 0 <= index < d.d_sae:
        raise InvalidRequest(
            f"Feature {d.layer}:{index} is out of range: {fset.display_name} has "
            f"{d.d_sae:,} features per layer (0–{d.d_sae - 1})."
        )
