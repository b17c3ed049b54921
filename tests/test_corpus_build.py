"""Building stores: every source format, sharding, and the local and Modal executors sharing one merge."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend.corpus import layout as L
from backend.corpus.build import BuildOptions, build_store
from backend.corpus.sources import SourceSpec, documents
from backend.corpus.store import CorpusStore
from backend.errors import InvalidRequest

TEXTS = [f"Review {i}: the {'tacos' if i % 2 else 'salsa'} were {'great' if i % 3 else 'awful'}, "
         f"{'and the service was slow' * (i % 4)} see you soon." for i in range(24)]
ROWS = [{"text": t, "stars": i % 5 + 1, "review_id": f"r{i:03d}", "useful": float(i) / 2} for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    (d / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pd.DataFrame(ROWS).to_csv(d / "reviews.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(d / "reviews.parquet")
    (d / "reviews.txt").write_text("\n".join(TEXTS) + "\n\n")
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(d / "hf"))
    files = d / "files"
    files.mkdir()
    for i, t in enumerate(TEXTS[:5]):
        (files / f"{i:02d}.txt").write_text(t + "\nsecond line")
    return d


@pytest.mark.parametrize("name", ["reviews.jsonl", "reviews.csv", "reviews.parquet", "hf"])
def test_tabular_sources_give_texts_and_metadata(corpus_dir, name):
    docs = list(documents(SourceSpec(str(corpus_dir / name))))
    assert [t for t, _ in docs] == TEXTS
    assert [m for _, m in docs] == [{k: v for k, v in r.items() if k != "text"} for r in ROWS]


def test_text_sources_split_by_line_or_by_file(corpus_dir):
    assert [t for t, _ in documents(SourceSpec(str(corpus_dir / "reviews.txt")))] == TEXTS
    by_file = list(documents(SourceSpec(str(corpus_dir / "files"))))
    assert [t for t, _ in by_file] == [t + "\nsecond line" for t in TEXTS[:5]]
    assert by_file[0][1] == {"file": "00.txt"}


def test_source_errors_say_what_to_do(corpus_dir):
    with pytest.raises(InvalidRequest, match="--text-column"):
        list(documents(SourceSpec(str(corpus_dir / "reviews.jsonl"), text_column="body")))
    with pytest.raises(InvalidRequest, match="does not exist"):
        list(documents(SourceSpec(str(corpus_dir / "missing.jsonl"))))


SHARD_TOKENS = 150  # the corpus is ~600 words: any BPE tokenizer makes more than 3 shards of this size


def build(backend, source: Path, out: Path, **kw) -> Path:
    return build_store(BuildOptions(model="demo", sae_set="res", source=SourceSpec(str(source)), out=out, k=8,
                                    seq_len=32, batch_tokens=1024, **kw), backend=backend)


def datasets_of(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with CorpusStore(path) as s:
        s.f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if hasattr(obj, "shape") else None)
    return out


@pytest.fixture(scope="module")
def one_shard(backend, corpus_dir, tmp_path_factory) -> Path:
    return build(backend, corpus_dir / "reviews.jsonl", tmp_path_factory.mktemp("one") / "s.h5", shard_tokens=10**9)


@pytest.fixture(scope="module")
def sharded(backend, corpus_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sharded") / "s.h5"
    return build(backend, corpus_dir / "reviews.jsonl", out, shard_tokens=SHARD_TOKENS, keep_shards=True)


def test_sharded_build_equals_one_shard(backend, one_shard, sharded):
    with CorpusStore(sharded) as s:
        assert s.attr("n_shards") > 3 and s.n_docs == len(TEXTS)
        assert [s.meta(d)["stars"] for d in range(s.n_docs)] == [r["stars"] for r in ROWS]
    a, b = datasets_of(one_shard), datasets_of(sharded)
    assert a.keys() == b.keys()
    if backend.device != "cpu":
        # The shards batch other windows together than the single shard does, and on a GPU a matrix
        # product's last bits depend on its batch's shape: values agree closely, and the few entries
        # ranked among near-equal values, or at a JumpReLU threshold, may differ. Exact on a CPU.
        for name in a:
            assert a[name].shape == b[name].shape, name
            if a[name].dtype.kind == "f":
                np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)
            elif "layers/" not in name:  # tokens, documents and their metadata: exact
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
            else:
                assert np.mean(a[name] == b[name]) > 0.9, name
        return
    for name in a:
        if name.endswith(L.STAT_SUM):  # float sums in another order
            np.testing.assert_allclose(a[name], b[name], rtol=1e-9)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


class FakeModal(types.ModuleType):
    """`modal` as the executor uses it: Function.from_name(app, name).map(specs), each spec sent as JSON."""

    def __init__(self) -> None:
        super().__init__("modal")
        self.calls: list[tuple[str, str]] = []
        fake = self

        class Function:
            @staticmethod
            def from_name(app: str, name: str):
                fake.calls.append((app, name))
                from backend.corpus.shards import build_shard_bytes

                return types.SimpleNamespace(map=lambda specs: (build_shard_bytes(json.loads(json.dumps(s)))
                                                                for s in specs))

        self.Function = Function


def test_modal_executor_shards_are_the_local_ones(backend, corpus_dir, sharded, tmp_path, monkeypatch):
    local = sharded
    fake = FakeModal()
    monkeypatch.setitem(sys.modules, "modal", fake)
    remote = build(backend, corpus_dir / "reviews.jsonl", tmp_path / "modal.h5", shard_tokens=SHARD_TOKENS, executor="modal",
                   keep_shards=True)
    assert fake.calls == [("featurescope", "corpus_shard")]
    local_parts = sorted(local.with_name(local.name + ".parts").glob("shard-*.h5"))
    modal_parts = sorted((tmp_path / "modal.h5.parts").glob("shard-*.h5"))
    assert len(local_parts) == len(modal_parts) > 1
    for a, b in zip(local_parts, modal_parts):
        assert a.read_bytes() == b.read_bytes(), "a shard is the same file whichever executor built it"
    a, b = datasets_of(local), datasets_of(remote)
    assert all(np.array_equal(a[n], b[n]) for n in a) and a.keys() == b.keys()
    with CorpusStore(remote) as s:
        assert s.attr("executor") == "modal"


def test_modal_executor_without_modal_says_how_to_install(backend, corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "modal", None)  # import modal -> ImportError
    with pytest.raises(InvalidRequest, match="pip install modal"):
        build(backend, corpus_dir / "reviews.jsonl", tmp_path / "x.h5", executor="modal")


def test_shards_option_cuts_equal_shards(backend, corpus_dir, tmp_path):
    out = build(backend, corpus_dir / "reviews.txt", tmp_path / "n.h5", shards=3, keep_shards=True)
    parts = sorted((tmp_path / "n.h5.parts").glob("shard-*.h5"))
    sizes = [CorpusStore(p).n_tokens for p in parts]
    with CorpusStore(out) as s:
        assert len(parts) == 3 == s.attr("n_shards") and sum(sizes) == s.n_tokens
        assert max(sizes) - min(sizes) < 2 * max(s.doc_bounds(d)[1] - s.doc_bounds(d)[0] for d in range(s.n_docs))
