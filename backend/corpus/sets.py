"""Which feature dictionary a set id names: an SAE set or a per-layer transcoder set of the model.

`FeatureRef.sae_set` may name either (attribution-graph nodes are transcoder features). Both load
through the `ModelManager` as feature dictionaries with one interface, so the store, the
dashboard and search serve them with the same code. Cross-layer transcoders are refused: their
features write to every later layer, so no single layer holds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backend.catalog import FeatureSet, ModelEntry, TranscoderSetEntry
from backend.errors import InvalidRequest
from backend.protocol import Progress

DictionarySet = FeatureSet  # the catalog's one model of "an SAE or transcoder set"


def resolve(entry: ModelEntry, set_id: str) -> DictionarySet:
    """The SAE or per-layer transcoder set `set_id` of `entry` (`ModelEntry.feature_set`), refusing
    cross-layer transcoders, which have no one-layer store."""
    dset = entry.feature_set(set_id)
    if isinstance(dset.entry, TranscoderSetEntry) and dset.entry.kind != "per_layer":
        raise InvalidRequest(
            f"{dset.display_name} is a cross-layer transcoder: each feature writes to every later layer, "
            "so it has no one-layer dashboard or corpus store. Open its features in the graph viewer.")
    return dset


def load(models: Any, loaded: Any, dset: DictionarySet, layers: Sequence[int],
         progress: Progress | None = None) -> list[Any]:
    """The feature dictionaries of `dset` at `layers`, through the ModelManager (cached there)."""
    for layer in layers:
        dset.check_layer(layer)
    if dset.kind == "sae":
        return models.dictionaries(loaded, dset.entry, list(layers), progress)
    return models.transcoders(loaded, dset.entry, list(layers), progress)
