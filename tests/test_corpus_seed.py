"""`import-seed`: files in the Modal design's exact format (made here) become a store whose answers
equal a scan of the seed file in the seed's own style."""

from __future__ import annotations

import io
import json
import os

import h5py
import numpy as np
import pandas as pd
import pytest

from backend.corpus import cli
from backend.corpus.npy_objects import NpzReader, read_npy
from backend.errors import InvalidRequest
from backend.schemas import FeatureRef, FeatureRequest

WINDOW, K, D_SAE = 64, 8, 128
WORDS = "the tacos were amazing why in the world would anyone wait an hour for salsa verde mole".split()


def reviews(n: int = 14) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 90)))).capitalize() + "!" for _ in range(n)]
    texts[3] = "Why in the world <script>alert(1)</script> & more"
    return pd.DataFrame({"review_id": [f"rv{i:04d}xYz" for i in range(n)], "text": texts,
                         "stars": rng.integers(1, 6, size=n), "useful": rng.integers(0, 9, size=n),
                         "user_id": [f"u{i % 4}" for i in range(n)], "business_id": [f"b{i % 3}" for i in range(n)]})


@pytest.fixture(scope="module")
def seed_files(hf_cache, tmp_path_factory):
    """The seed's H5 (z_idx, z_val, rev_idx per row; each review in 64-token windows, the last one padded)
    and its metadata .npz (object arrays, as the seed's pandas data frame gives them)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained("gpt2")
    df = reviews()
    d = tmp_path_factory.mktemp("seed")
    np.savez(d / "mexican_national_metadata.npz", review_ids=df["review_id"].values.astype(object),
             texts=df["text"].values.astype(object), stars=df["stars"].values, useful=df["useful"].values,
             user_ids=df["user_id"].values.astype(object), business_ids=df["business_id"].values.astype(object))
    rng = np.random.default_rng(11)
    rev, n_real = [], []
    for rid, text in zip(df["review_id"][:-1], df["text"][:-1]):  # the last review has no rows
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        rows = -(-n // WINDOW) * WINDOW
        rev += [rid.encode()] * rows
        n_real += [n] * rows
    n_rows = len(rev)
    z_idx = np.stack([rng.choice(D_SAE, K, replace=False) for _ in range(n_rows)]).astype(np.int16)
    z_val = np.sort(rng.normal(0.05, 0.1, size=(n_rows, K)), axis=1)[:, ::-1].astype(np.float16)
    with h5py.File(d / "mexican_national_sae_features_e32_k32_lr0_0003-final.h5", "w") as f:
        f["z_idx"], f["z_val"], f["rev_idx"] = z_idx, z_val, np.array(rev, dtype="S12")
    return d / "mexican_national_sae_features_e32_k32_lr0_0003-final.h5", d / "mexican_national_metadata.npz", df


def seed_scan(h5_path, feature: int, tok, df) -> list[tuple[str, int, float]]:
    """The seed's way: scan z_idx/z_val in chunks for the feature (> 0), the review from rev_idx;
    rows past a review's own tokens (window padding) dropped; strongest first, ties in row order.
    Returns (review id, position in the review, activation)."""
    lengths = {r: len(tok(t, add_special_tokens=False)["input_ids"]) for r, t in zip(df["review_id"], df["text"])}
    hits = []
    with h5py.File(h5_path, "r") as f:
        first: dict[str, int] = {}
        for row, rid in enumerate(r.decode() for r in f["rev_idx"][:]):
            first.setdefault(rid, row)
        for start in range(0, f["z_idx"].shape[0], 100):
            idx, val = f["z_idx"][start:start + 100], f["z_val"][start:start + 100]
            acts = np.zeros(len(idx), np.float32)
            for i in range(len(idx)):  # as get_feature_activations_chunk
                mask = idx[i] == feature
                if np.any(mask):
                    acts[i] = val[i][mask][0]
            for local in np.flatnonzero(acts > 0):
                rid = f["rev_idx"][start + local].decode()  # as get_review_id_for_token
                pos = start + int(local) - first[rid]
                if pos < lengths[rid]:
                    hits.append((rid, pos, float(acts[local])))
    hits.sort(key=lambda h: -h[2])
    return hits


def test_fixture_is_the_seeds_pickled_format(seed_files):
    _, npz, _ = seed_files
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(npz, allow_pickle=False)["texts"]


@pytest.fixture(scope="module")
def imported(seed_files, topk_catalog, backend):
    h5, npz, _ = seed_files
    os.environ["FEATURESCOPE_CATALOG_PATH"] = str(topk_catalog)
    try:
        assert cli.main(["import-seed", "--h5", str(h5), "--metadata", str(npz), "--model", "gpt2-small",
                         "--sae-set", "topk-l8", "--layer", "8", "--shard-tokens", "300"]) == 0
    finally:
        del os.environ["FEATURESCOPE_CATALOG_PATH"]
    return backend.stores.path("gpt2-small", "topk-l8")


def test_imported_top_examples_equal_a_scan_of_the_seed_file(imported, seed_files, backend):
    from transformers import AutoTokenizer

    h5, _, df = seed_files
    tok = AutoTokenizer.from_pretrained("gpt2")
    store = backend.stores.open(imported)
    assert store.n_docs == len(df) - 1 and store.attr("padding_rows_dropped") > 0
    for f in (0, 17, 101):
        want = seed_scan(h5, f, tok, df)
        r = backend.feature(FeatureRequest(feature=FeatureRef(model="gpt2-small", sae_set="topk-l8", layer=8, index=f),
                                           n_examples=10, context_tokens=4))
        got = [(e.metadata["review_id"], e.doc_position, e.max_activation) for e in r.examples]
        assert [(rid, pos) for rid, pos, _ in got] == [(rid, pos) for rid, pos, _ in want[:10]]
        assert [v for _, _, v in got] == pytest.approx([v for _, _, v in want[:10]])
        assert r.n_active == len(want) and r.max_activation == pytest.approx(want[0][2])
        row = df.set_index("review_id").loc[got[0][0]]
        assert r.examples[0].metadata == {"review_id": got[0][0], "stars": int(row["stars"]),
                                          "useful": int(row["useful"]), "user_id": row["user_id"],
                                          "business_id": row["business_id"]}
        text_ids = tok(row["text"], add_special_tokens=False)["input_ids"]
        e = r.examples[0]
        assert e.token_ids == text_ids[max(0, e.doc_position - 4):e.doc_position + 5]
        assert r.sampling.corpus_coverage == pytest.approx((len(df) - 1) / len(df))


def test_seed_import_refuses_a_window_that_does_not_match(seed_files, topk_catalog, tmp_path, capsys, monkeypatch):
    h5, npz, _ = seed_files
    monkeypatch.setenv("FEATURESCOPE_CATALOG_PATH", str(topk_catalog))
    code = cli.main(["import-seed", "--h5", str(h5), "--metadata", str(npz), "--model", "gpt2-small",
                     "--sae-set", "topk-l8", "--window", "32", "--out", str(tmp_path / "x.h5")])
    err = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert code == 2 and err["error"] == "invalid_request" and "--window" in err["message"]


def test_object_arrays_are_read_without_unpickling(tmp_path):
    mixed = np.array([np.int64(5), np.float32(1.5), "héllo", None, True, b"by", 2.5], dtype=object)
    np.savez(tmp_path / "m.npz", mixed=mixed, texts=pd.Series(["a <b>", "c"]).values, n=np.arange(3))
    r = NpzReader(tmp_path / "m.npz")
    assert r.get("mixed").tolist() == mixed.tolist()
    assert r.get("texts").tolist() == ["a <b>", "c"] and r.get("n").tolist() == [0, 1, 2]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    buf = io.BytesIO()
    np.save(buf, np.array([Evil()], dtype=object), allow_pickle=True)
    buf.seek(0)
    with pytest.raises(InvalidRequest, match="system"):
        read_npy(buf)
