"""Which feature dictionary a set id names: an SAE set or a per-layer transcoder set of the model.

`FeatureRef.sae_set` may name either (attribution-graph nodes are transcoder features). Both load
through the `ModelManager` as feature dictionaries with one interface, so the store, the
dashboard and search serve them with the same code. Cross-layer transcoders are refused: their
features write to every later layer, so no single layer holds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from backend.catalog import ModelEntry, SaeSetEntry, TranscoderSetEntry
from backend.errors import InvalidRequest, NotFound
from backend.links import neuronpedia_url
from backend.protocol import Progress


@dataclass(frozen=True)
class DictionarySet:
    id: str
    kind: Literal["sae", "transcoder"]
    display_name: str
    layers: tuple[int, ...]
    d_sae: int | None
    entry: SaeSetEntry | TranscoderSetEntry
    window: int | None = None
    prepend_bos: bool | None = None
    k: int | None = None

    def neuronpedia_url(self, layer: int, index: int) -> str | None:
        template = self.entry.neuronpedia
        return neuronpedia_url(template.format(layer=layer) if template else None, index)

    def check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise NotFound(f"{self.display_name} has no layer {layer}; its layers are {list(self.layers)}.")


def resolve(entry: ModelEntry, set_id: str, pack: Any | None = None) -> DictionarySet:
    """The SAE or transcoder set `set_id` of `entry` (`pack`: the demo pack, for demo sets)."""
    if set_id in entry.sae_sets:
        s = entry.sae_sets[set_id]
        return DictionarySet(id=s.id, kind="sae", display_name=s.display_name, layers=tuple(s.layers or ()),
                             d_sae=s.d_sae, entry=s, window=s.window, prepend_bos=s.prepend_bos,
                             k=s.k if s.source == "topk_checkpoint" else None)
    if set_id in entry.transcoder_sets:
        t = entry.transcoder_sets[set_id]
        if t.kind != "per_layer":
            raise InvalidRequest(
                f"{t.display_name} is a cross-layer transcoder: each feature writes to every later layer, "
                "so it has no one-layer dashboard or corpus store. Open its features in the graph viewer.")
        if t.source == "demo":
            if pack is None:
                raise InvalidRequest("The demo pack is not available.")
            layers = tuple(pack.transcoder_set(t.id).layers)
        else:
            layers = tuple(range(entry.n_layers or 0))
        return DictionarySet(id=t.id, kind="transcoder", display_name=t.display_name, layers=layers,
                             d_sae=t.d_transcoder, entry=t)
    valid = [*entry.sae_sets, *entry.transcoder_sets]
    raise NotFound(f"Unknown SAE or transcoder set '{set_id}' of {entry.id}. Valid sets: {', '.join(valid)}.",
                   wanted=set_id, valid=valid)


def load(models: Any, loaded: Any, dset: DictionarySet, layers: Sequence[int],
         progress: Progress | None = None) -> list[Any]:
    """The feature dictionaries of `dset` at `layers`, through the ModelManager (cached there)."""
    for layer in layers:
        dset.check_layer(layer)
    if dset.kind == "sae":
        return models.dictionaries(loaded, dset.entry, list(layers), progress)
    return models.transcoders(loaded, dset.entry, list(layers), progress)
