"""Damaged, unsafe, unfinished and mismatched stores get a clear StoreError, never a crash or a wrong answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from backend.corpus import cli
from backend.corpus import layout as L
from backend.corpus.store import CorpusStore
from backend.corpus.writer import LayerSpec, StoreWriter
from backend.errors import LimitExceeded, NotFound, StoreError
from backend.schemas import FeatureRef, FeatureRequest


def small_store(path: Path, *, model="m", sae_set="s", layer=3, d_sae=50, k=4, probe=None, complete=True) -> Path:
    rng = np.random.default_rng(0)
    w = StoreWriter(path, attrs={"model": model, "sae_set": sae_set, "kind": "store"},
                    layers=[LayerSpec(layer, d_sae, k, f"blocks.{layer}.hook_resid_pre", probe)])
    ids = [rng.integers(0, 90, 300) for _ in range(40)]
    w.add_documents(ids, [{"i": i} for i in range(40)])
    n = sum(len(x) for x in ids)
    w.add_activations(layer, np.stack([rng.choice(d_sae, k, replace=False) for _ in range(n)]),
                      rng.random((n, k)).astype(np.float32))
    if not complete:
        w.f.close()
        return w.tmp
    return w.finish()


@pytest.fixture
def good(tmp_path) -> Path:
    return small_store(tmp_path / "good.h5")


def test_a_good_store_opens(good):
    with CorpusStore(good) as s:
        assert s.n_tokens == 12000 and s.layer(3).n_entries(7) > 0


def test_truncated_store(good, tmp_path):
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(StoreError, match="truncated"):
        CorpusStore(bad)


def flip(path: Path, dataset: str, chunk: int = 0) -> None:
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(chunk).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 5)
        byte = fh.read(1)
        fh.seek(offset + 5)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_a_flipped_byte_in_the_index_is_caught_on_read(good, tmp_path):
    bad = tmp_path / "flipped.h5"
    shutil.copy(good, bad)
    flip(bad, "layers/3/" + L.INDEX_VALUE)
    with CorpusStore(bad) as s:
        with pytest.raises(StoreError, match="damaged"):
            s.layer(3).entries(0, 0, 10)


def test_a_flipped_byte_in_the_offsets_is_caught_on_open(good, tmp_path):
    bad = tmp_path / "flipped.h5"
    shutil.copy(good, bad)
    flip(bad, "layers/3/" + L.INDEX_OFFSETS)
    with pytest.raises(StoreError, match="damaged"):
        CorpusStore(bad)
    assert cli.main(["info", str(bad)]) == 2


@pytest.mark.parametrize("kind", ["external link", "external storage", "virtual dataset"])
def test_stores_that_point_at_other_files_are_refused(good, tmp_path, kind):
    bad = tmp_path / "linked.h5"
    shutil.copy(good, bad)
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    with h5py.File(bad, "a") as f:
        if kind == "external link":
            f["layers/3/extra"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/x")
        elif kind == "external storage":
            f.create_dataset("raw", shape=(16,), dtype="f4", external=[(str(tmp_path / "secret.bin"), 0, 64)])
        else:
            layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
            layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "x", shape=(4,))
            f.create_virtual_dataset("virtual", layout)
    with pytest.raises(StoreError, match="does not follow external links"):
        CorpusStore(bad)


def test_an_unfinished_store_says_to_resume(tmp_path):
    partial = small_store(tmp_path / "unfinished.h5", complete=False)
    with pytest.raises(StoreError, match="unfinished.*again to resume"):
        CorpusStore(partial)


def test_not_a_store(tmp_path):
    other = tmp_path / "seed.h5"
    with h5py.File(other, "w") as f:
        f["z_idx"] = np.zeros((3, 2), np.int16)
    with pytest.raises(StoreError, match="import-seed"):
        CorpusStore(other)


@pytest.fixture
def gpt2_store_path(backend):
    path = backend.stores.path("gpt2-small", "res-jb")
    path.parent.mkdir(parents=True, exist_ok=True)
    yield path
    path.unlink(missing_ok=True)


def ask(backend, index=7):
    return backend.feature(FeatureRequest(feature=FeatureRef(model="gpt2-small", sae_set="res-jb", layer=3,
                                                             index=index), n_examples=3))


def test_a_store_of_another_model_or_sae_is_refused(backend, gpt2_store_path):
    small_store(gpt2_store_path, model="demo", sae_set="res")
    with pytest.raises(StoreError, match="built for demo/res, not gpt2-small/res-jb"):
        ask(backend)
    small_store(gpt2_store_path, model="gpt2-small", sae_set="res-jb", d_sae=50)
    with pytest.raises(StoreError, match="holds 50 features.*has 96"):
        ask(backend)
    small_store(gpt2_store_path, model="gpt2-small", sae_set="res-jb", d_sae=96,
                probe=np.full(L.N_PROBE, 3.0, np.float32))
    with pytest.raises(StoreError, match="other weights"):
        ask(backend)


def test_without_a_store_the_dashboard_says_how_to_build_one(backend, gpt2_store_path):
    r = ask(backend)
    assert r.examples == [] and r.density is None and len(r.top_logits) == 10
    assert any("python -m backend.corpus build --model gpt2-small --sae-set res-jb" in n for n in r.notes)
    assert r.neuronpedia_url == "https://www.neuronpedia.org/gpt2-small/3-res-jb/7"


def test_bad_feature_requests(backend):
    with pytest.raises(NotFound, match="0–95"):
        ask(backend, index=96)
    with pytest.raises(NotFound, match="Valid sets: res-jb, topk-l8"):
        backend.feature(FeatureRequest(feature=FeatureRef(model="gpt2-small", sae_set="nope", layer=3, index=0)))
    with pytest.raises(NotFound, match="no layer 40"):
        backend.feature(FeatureRequest(feature=FeatureRef(model="gpt2-small", sae_set="res-jb", layer=40, index=0)))
    with pytest.raises(LimitExceeded, match="the limit is 200"):
        backend.feature(FeatureRequest(feature=FeatureRef(model="demo", sae_set="res", layer=0, index=0),
                                       n_examples=190, n_quantiles=10, examples_per_quantile=3))


def test_cli_errors_are_json(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "missing.h5")]) == 2
    err = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert err["error"] == "store_error" and "no corpus store" in err["message"]
