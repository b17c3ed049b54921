"""Feature density as data (backend/local/density.py): from a built corpus store it is the store's
per-feature count over its tokens, read here straight from the HDF5 file; from the demo pack's
stats/<set>.json it is the file's numbers; with neither it is None. The highlighter hides dense
features by the field, with the count hidden shown."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from backend.local import LocalBackend, density
from backend.schemas import AnalyzeRequest, FeatureRef, FeatureRequest
from backend.settings import Settings
from tests.conftest import REPO
from tests.test_app_pages import all_markup, app


def pack_copy(root: Path, stats: dict[str, dict] | None) -> Path:
    """The demo pack under `root` (files linked), with only `stats` as its stats/<set>.json (the
    pack's own stats are left out: a linked stats folder would let a test write into the pack)."""
    src = REPO / "assets" / "demo"
    root.mkdir(parents=True)
    for item in src.iterdir():
        if item.name not in ("manifest.json", "stats"):
            (root / item.name).symlink_to(item)
    manifest = json.loads((src / "manifest.json").read_text())
    for kind in ("sae_sets", "transcoder_sets"):
        for entry in manifest.get(kind, {}).values():
            entry.pop("stats", None)
    for set_id, body in (stats or {}).items():
        (root / "stats").mkdir(exist_ok=True)
        (root / "stats" / f"{set_id}.json").write_text(json.dumps(body))
        manifest["sae_sets"][set_id]["stats"] = f"stats/{set_id}.json"
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_density_from_a_built_store_is_count_over_tokens(backend):
    ref = FeatureRef(model="demo", sae_set="res", layer=1, index=3)
    res = backend.feature(FeatureRequest(feature=ref, n_examples=1))  # builds the store on first use
    path = backend.stores.path("demo", "res")
    with h5py.File(path, "r") as f:
        n_tokens = int(f.attrs["n_tokens"])
        want = {int(layer): f[f"layers/{layer}/stats/count"][()] / n_tokens for layer in f["layers"]}
    source, got = density.for_set(backend.runtime, "demo", "res")
    assert source == "store" and set(got) == set(want)
    for layer in want:
        np.testing.assert_allclose(got[layer], want[layer], rtol=1e-12)
    assert res.density == pytest.approx(want[1][3])
    result = backend.analyze(AnalyzeRequest(model="demo", sae_set="res", text="The cat sat on the mat.", k=5,
                                            layers=[1], track=[{"layer": 1, "index": 3}]))
    lt = result.layers[0]
    assert lt.densities is not None
    for idx, dens in zip(lt.indices, lt.densities):
        assert dens == pytest.approx([want[1][i] for i in idx])
    assert [a.density for a in lt.features_at(1)] == pytest.approx([want[1][i] for i in lt.indices[1]])
    assert result.tracked[0].density == pytest.approx(want[1][3])


def test_density_from_the_pack_stats_file(tmp_path):
    d_sae = json.loads((REPO / "assets/demo/manifest.json").read_text())["sae_sets"]["res"]["d_sae"]
    rng = np.random.default_rng(0)
    body = {"tokens": 1000, "bos": "excluded", "density": {"0": rng.random(d_sae).tolist(),
                                                           "1": rng.random(d_sae).tolist()}}
    pack = pack_copy(tmp_path / "pack", {"res": body})
    rt = LocalBackend(Settings(data_dir=tmp_path / "data", demo_dir=pack)).runtime
    source, got = density.for_set(rt, "demo", "res")
    assert source == "demo pack"
    for layer, values in body["density"].items():
        assert got[int(layer)].tolist() == values
    res = LocalBackend(Settings(data_dir=tmp_path / "data", demo_dir=tmp_path / "pack")).feature(
        FeatureRequest(feature=FeatureRef(model="demo", sae_set="res", layer=1, index=7), wait_for_store=False))
    assert res.store_status == "pending" and res.density == body["density"]["1"][7]


def test_density_is_none_without_store_or_stats(tmp_path, hf_cache):
    rt = LocalBackend(Settings(data_dir=tmp_path / "data", demo_dir=pack_copy(tmp_path / "pack", None))).runtime
    assert density.for_set(rt, "demo", "res") == (None, {})
    assert density.for_set(rt, "gpt2-small", "res-jb") == (None, {})
    assert density.layers(rt, "demo", "res", [0, 1]) == {0: None, 1: None}


def test_highlighter_hides_by_the_density_field(hf_cache, monkeypatch, backend):
    """Even features dense (50%), odd ones not (0%), whatever the explanations' notes say."""
    def fake(rt, model, set_id, wanted):
        d_sae = rt.model_entry(model).sae_set(set_id).d_sae
        return {layer: np.where(np.arange(d_sae) % 2 == 0, 0.5, 0.0) for layer in wanted}

    monkeypatch.setattr(density, "layers", fake)
    text = "Dense features hide by their density."
    at = app(model="demo", sae_set="res", text=text, layer="1", k="5").run()
    assert not at.exception, at.exception
    want = backend.analyze(AnalyzeRequest(model="demo", sae_set="res", text=text, layers=[1], k=5))
    shown = [(p, i) for p, idx in enumerate(want.layers[0].indices) if not want.tokens[p].special
             for i in idx]
    frame = at.dataframe[0].value
    assert list(zip(frame["pos"], frame["feature"])) == [(p, i) for p, i in shown if i % 2]
    assert set(frame["density"]) <= {0.0}
    n_hidden = len({i for _, i in shown if i % 2 == 0})
    assert n_hidden and f"{n_hidden} dense feature(s) hidden" in all_markup(at)
    at.toggle(key="hl_dense_on").set_value(False).run()
    assert list(zip(at.dataframe[0].value["pos"], at.dataframe[0].value["feature"])) == shown
