"""A build killed with SIGKILL (mid-shard, or mid-merge) and run again gives the same bytes as a
build that never stopped. The kill is real: the build process sends SIGKILL to itself at a named
point (backend/corpus/faults.py), so the test needs no timing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from backend.corpus import cli
from backend.corpus.build import BuildOptions, build_lock, build_store
from backend.corpus.faults import VARIABLE
from backend.corpus.sources import SourceSpec
from backend.errors import Busy, StoreError

# ~750 words: any BPE tokenizer makes at least 5 shards of this size, so kills land mid-build.
SHARD_TOKENS = 150
TEXTS = [f"Line {i}: the {'kettle' if i % 2 else 'teapot'} sang {'loudly ' * (i % 5)}at dawn." for i in range(30)]


def args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--model", "demo", "--sae-set", "res", "--source", str(corpus), "--out", str(out),
            "--shard-tokens", str(SHARD_TOKENS), "--k", "8", "--seq-len", "32", "--batch-tokens", "128", *extra]


def run_killed(argv: list[str], point: str) -> subprocess.CompletedProcess:
    env = {**os.environ, VARIABLE: point}
    return subprocess.run([sys.executable, "-m", "backend.corpus", *argv], capture_output=True, text=True,
                          timeout=600, env=env)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kettle") / "corpus.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(hf_cache, corpus, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("ref") / "store.h5"
    assert cli.main(args(corpus, out)) == 0
    return sha(out)


def test_sigkill_mid_shard_then_mid_merge_then_rerun_gives_the_same_store(reference, corpus, tmp_path, capsys):
    out = tmp_path / "store.h5"
    parts = out.with_name(out.name + ".parts")
    killed = run_killed(args(corpus, out), "shard-batch:1:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "tokens/s" in killed.stderr and "ETA" in killed.stderr, "the CLI shows a rate and an ETA"
    assert (parts / "shard-00000.h5").exists() and (parts / ".shard-00001.h5.partial").exists()
    assert not out.exists()
    with pytest.raises(StoreError, match="different build"):
        build_store(BuildOptions(model="demo", sae_set="res", source=SourceSpec(str(corpus)), out=out, k=4,
                                 seq_len=32, shard_tokens=SHARD_TOKENS, batch_tokens=128), backend=_backend())

    killed = run_killed(args(corpus, out), "merge-group:1:0")  # resumes the shards, then dies merging
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "Resuming: 1 of" in killed.stderr
    assert out.with_name(f".{out.name}.partial").exists() and not out.exists()

    capsys.readouterr()
    assert cli.main(args(corpus, out)) == 0
    assert sha(out) == reference
    assert not parts.exists(), "the parts folder goes once the store is complete"
    capsys.readouterr()
    assert cli.main(["info", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["attrs"]["n_docs"] == len(TEXTS) and summary["attrs"]["n_shards"] > 2


def test_a_second_build_of_the_same_store_waits_its_turn(corpus, tmp_path):
    out = tmp_path / "store.h5"
    with build_lock(out), pytest.raises(Busy, match="Another build"):
        build_store(BuildOptions(model="demo", sae_set="res", source=SourceSpec(str(corpus)), out=out),
                    backend=_backend())


def _backend():
    from backend.local import LocalBackend

    return LocalBackend()


def test_rerunning_a_finished_build_is_a_no_op_that_says_so_and_force_rebuilds(corpus, tmp_path, capsys, monkeypatch):
    from backend.corpus import build as build_module

    shards_built: list[int] = []
    real = build_module.build_shard

    def counting(spec, *a, **kw):
        shards_built.append(spec["shard"])
        return real(spec, *a, **kw)

    monkeypatch.setattr(build_module, "build_shard", counting)
    out = tmp_path / "store.h5"
    assert cli.main(args(corpus, out)) == 0
    first, stamp = sha(out), out.stat().st_mtime_ns
    assert len(shards_built) > 2
    shards_built.clear()
    capsys.readouterr()

    assert cli.main(args(corpus, out)) == 0
    assert "already built from these inputs: nothing to do (--force rebuilds it)" in capsys.readouterr().err
    assert shards_built == [] and out.stat().st_mtime_ns == stamp and sha(out) == first

    assert cli.main(args(corpus, out, "--k", "4")) == 0  # other inputs: built again
    assert len(shards_built) > 2 and sha(out) != first
    shards_built.clear()

    assert cli.main(args(corpus, out, "--k", "4", "--force")) == 0
    assert len(shards_built) > 2, "--force rebuilds every shard"
