"""The catalog points at real releases: checked against SAELens' and TransformerLens' registries."""

from __future__ import annotations

import pytest

from backend.catalog import load_catalog
from backend.errors import BackendError, LimitExceeded, NotFound, NotImplementedYet, error_from_wire

SEED_MODELS = {
    "gpt2-small": "gpt2-small-res-jb",
    "gemma-2-2b": "gemma-scope-2b-pt-res-canonical",
    "gemma-2-2b-it": "gemma-scope-2b-pt-res-canonical",
    "llama-3.1-8b": "llama_scope_lxr_8x",
}


def test_seed_models_use_real_saelens_releases_and_ids():
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    catalog = load_catalog()
    for model_id, release in SEED_MODELS.items():
        entry = catalog.model(model_id)
        (sae_set,) = [s for s in entry.sae_sets.values() if s.release == release]
        lookup = directory[release]
        for layer in sae_set.layers:
            sae_id = sae_set.sae_id_for(layer)
            assert sae_id in lookup.saes_map, f"{release} has no {sae_id}"
            if model_id != "gemma-2-2b-it":  # the IT entry links to the base model's dashboards
                assert lookup.neuronpedia_id[sae_id] == sae_set.neuronpedia_for(layer)


def test_models_are_known_to_transformer_lens():
    from transformer_lens.loading_from_pretrained import get_official_model_name

    for entry in load_catalog().models.values():
        if entry.source == "transformer_lens":
            assert get_official_model_name(entry.tl_name)


def test_transcoder_sets_of_the_graph_seed_are_listed():
    catalog = load_catalog()
    refs = {t.circuit_tracer for m in catalog.models.values() for t in m.transcoder_sets.values()}
    assert {"gemma", "llama", "mwhanna/qwen3-4b-transcoders", "mntss/clt-gemma-2-2b-2.5M"} <= refs


def test_unknown_ids_list_valid_ones():
    with pytest.raises(NotFound, match="Valid models: demo, gpt2-small"):
        load_catalog().model("gpt-5")
    with pytest.raises(NotFound, match="res-jb"):
        load_catalog().model("gpt2-small").sae_set("res")


def test_errors_round_trip_over_the_wire():
    for err in (LimitExceeded("k", 500, 100, "Ask for fewer."), NotImplementedYet("steer", "Steering"),
                NotFound("no such model", wanted="x")):
        back = error_from_wire(err.to_wire())
        assert type(back) is type(err)
        assert back.message == err.message and back.details == err.details
        assert back.status == err.status
    assert type(error_from_wire({"error": "???", "message": "m"})) is BackendError
