"""The loaded dictionaries of the layers a request needs, for a feature set the catalog resolved
(`sae_set` may name an SAE or a transcoder set)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from backend.catalog import FeatureSet, ModelEntry, SaeSetEntry
from backend.errors import InvalidRequest, NotFound
from backend.local.dictionaries import FeatureDictionary
from backend.local.models import LoadedModel
from backend.protocol import Progress

if TYPE_CHECKING:
    from backend.local.runtime import Runtime


def resolve_model(backend: Runtime, model_id: str) -> ModelEntry:
    """The catalog entry for a catalog id or a hub / seed server name (`Catalog.resolve_model`)."""
    return backend.model_entry(model_id)


def resolve_set(entry: ModelEntry, set_id: str | None) -> FeatureSet:
    """An SAE set or a transcoder set of `entry`; None: its first per-layer transcoder set, else its
    first SAE set (`ModelEntry.feature_set`, the catalog's one resolver)."""
    return entry.feature_set(set_id)


def load_dictionaries(
    backend: Runtime,
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
    if isinstance(fset.entry, SaeSetEntry):
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
