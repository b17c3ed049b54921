"""The experiments pipeline: the CLI's files, its numbers against the playground's, out-of-memory
halving, resuming, and the automatic choice of live features."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

from backend.errors import InvalidRequest, LimitExceeded
from backend.experiments import runner
from backend.experiments.state import State
from backend.schemas import ExperimentRequest, SteerRequest
from tests.conftest import REPO

PASSAGES = [
    "The reactor reached full power at noon and the operators logged every reading.",
    "A quiet river ran past the mill, turning its wheel slowly through the long afternoon.",
    "Numbers such as 3, 14 and 159 appear in the first digits of pi.",
    "She opened the letter, read it twice, and then laughed out loud.",
]


def request(**over) -> ExperimentRequest:
    base = dict(
        model="demo",
        sae_set="res",
        corpus="texts",
        texts=PASSAGES,
        max_passages=3,
        alphas=[0.0, 2.0],
        alpha=2.0,
        feature_source="list",
        batch_size=2,
        n_snippets=2,
        features=[
            {"layer": 0, "index": 9, "label": "zero-nine", "label_confidence": 0.9},
            {"layer": 1, "index": 30, "label": "one-thirty", "label_confidence": 0.5},
        ],
    )
    return ExperimentRequest.model_validate({**base, **over})


def rows_by_key(result) -> dict:
    return {(r.layer, r.feature, r.alpha): r for r in result.rows}


def test_cli_writes_every_output_and_matches_the_playground(backend, tmp_path):
    corpus = tmp_path / "passages.txt"
    corpus.write_text("\n".join(PASSAGES) + "\n")
    feats = tmp_path / "features.csv"
    feats.write_text(
        "layer,feature_id,label,label_confidence\n0,9,zero-nine,0.9\n1,30,one-thirty,0.5\n"
        "1,31,low confidence,0.1\n"
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "backend.experiments",
            "run",
            "--config",
            str(REPO / "configs" / "demo.yaml"),
            "--corpus",
            str(corpus),
            "--feature_source",
            "csv",
            "--features-csv",
            str(feats),
            "--min-conf",
            "0.3",
            "--alpha",
            "2",
            "--alpha-sweep",
            "0,2",
            "--max_passages",
            "3",
            "--batch-size",
            "2",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Passages" in proc.stderr, "a progress bar of passages"
    for rel in (
        "csv/per_feature_metrics.csv",
        "csv/per_layer_summary.csv",
        "csv/selected_features.csv",
        "csv/passages.csv",
        "plots/layer_vs_dloss_alpha2.png",
        "plots/metrics_vs_alpha.png",
        "snippets/examples.jsonl",
        "report.md",
        "result.json",
    ):
        assert (out / rel).stat().st_size > 0, rel
    assert (out / "plots/metrics_vs_alpha.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert (
        "![layer_vs_dloss_alpha2](plots/layer_vs_dloss_alpha2.png)" in report
        and "## Example snippets" in report
    )
    with open(out / "csv/per_feature_metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    assert {(int(r["layer"]), int(r["feature"])) for r in metrics} == {(0, 9), (1, 30)}, "min_conf drops 1:31"
    assert {float(r["alpha"]) for r in metrics} == {0.0, 2.0}
    with open(out / "csv/passages.csv") as f:
        passages = [row["text"] for row in csv.DictReader(f)]
    assert passages == PASSAGES[:3]
    with open(out / "csv/per_layer_summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 4  # 2 layers x 2 alphas

    # The same feature and alpha in the playground, passage by passage, token-weighted.
    for row in metrics:
        layer, index, alpha = int(row["layer"]), int(row["feature"]), float(row["alpha"])
        ce = kl = 0.0
        n_pred = n_pos = 0
        for text in passages:
            r = backend.steer(
                SteerRequest(
                    model="demo",
                    sae_set="res",
                    prompt=text,
                    n_tokens=1,
                    features=[
                        {"layer": layer, "index": index, "alpha": alpha, "steer_all_prompt_positions": True}
                    ],
                )
            )
            n = len(r.prompt_tokens)
            ce += r.metrics.delta_ce_loss * (n - 1)
            kl += r.metrics.kl_divergence * n
            n_pred, n_pos = n_pred + n - 1, n_pos + n
        assert float(row["delta_ce_loss"]) == pytest.approx(ce / n_pred, abs=2e-5)
        assert float(row["kl"]) == pytest.approx(kl / n_pos, abs=2e-5)
        assert int(row["n_tokens"]) == n_pos


def test_out_of_memory_halves_the_batch_and_the_run_goes_on(backend, monkeypatch):
    reference = runner.run(backend, request(batch_size=1))
    real = runner.run_batch
    sizes = []

    def tight(model, plan, batch, *args):
        sizes.append(len(batch))
        if len(batch) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, plan, batch, *args)

    monkeypatch.setattr(runner, "run_batch", tight)
    result = runner.run(backend, request(batch_size=4))
    assert sizes == [3, 2, 1, 1, 1] and result.batch_size == 1
    assert any("Out of memory at batch size" in n for n in result.notes)
    want = rows_by_key(reference)
    for key, row in rows_by_key(result).items():
        assert row.delta_ce_loss == pytest.approx(want[key].delta_ce_loss, abs=1e-6)
        assert row.kl == pytest.approx(want[key].kl, abs=1e-6)


def test_an_interrupted_run_resumes_without_redoing_batches(backend, tmp_path, monkeypatch):
    req = request(batch_size=1)
    whole = runner.run(backend, req)
    real_save = State.save
    saves = []

    def crash_after_first(self, directory):
        real_save(self, directory)
        saves.append(self.n_done)
        if len(saves) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(State, "save", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        runner.run(backend, req, checkpoint_dir=tmp_path)
    monkeypatch.setattr(State, "save", real_save)
    batches = []
    real_batch = runner.run_batch
    monkeypatch.setattr(
        runner,
        "run_batch",
        lambda model, plan, batch, *a: batches.append(batch) or real_batch(model, plan, batch, *a),
    )
    resumed = runner.run(backend, req, checkpoint_dir=tmp_path)
    assert [p.text for b in batches for p in b] == PASSAGES[1:3], "only the passages not yet done"
    assert any("Resumed after 1 of 3" in n for n in resumed.notes)
    for key, row in rows_by_key(resumed).items():
        assert row.delta_ce_loss == pytest.approx(rows_by_key(whole)[key].delta_ce_loss, abs=1e-9)
        assert row.top_logit_deltas == rows_by_key(whole)[key].top_logit_deltas
    other = runner.run(backend, request(batch_size=1, seed=99), checkpoint_dir=tmp_path)
    assert not any("Resumed" in n for n in other.notes), "a different experiment ignores the checkpoint"


def test_auto_choice_takes_live_features_above_the_percentile(backend):
    req = request(
        feature_source="auto",
        features=[],
        layers=[1],
        features_per_layer=4,
        live_percentile=75,
        calibration_passages=3,
        alphas=[2.0],
        n_snippets=0,
    )
    result = runner.run(backend, req)
    chosen = [f.index for f in result.features]
    assert len(chosen) == 4 and all(f.layer == 1 for f in result.features)
    loaded = backend.load("demo")
    (d,) = backend.models.dictionaries(loaded, backend.model_entry("demo").sae_set("res"), [1])
    fires, n = torch.zeros(d.d_sae), 0
    with loaded.use(30) as model, torch.inference_mode():
        for text in PASSAGES[:3]:
            tokens = model.to_tokens(text)
            _, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
            z = d.sae.encode(cache["blocks.1.hook_resid_post"])[0, 1:]  # not BOS
            fires += (z > 0).sum(0).cpu()
            n += z.shape[0]
    rates = (fires / n).numpy()
    live = rates[rates > 0]
    threshold = np.percentile(live, 75)
    assert all(rates[i] >= threshold - 1e-9 for i in chosen)
    assert runner.run(backend, req).features == result.features, "the seed makes the choice reproducible"


def test_protocol_experiment_is_limited_and_explains(backend, tmp_path):
    with pytest.raises(LimitExceeded, match="max_passages"):
        backend.experiment(request(max_passages=backend.limits.max_experiment_passages + 1))
    result = backend.experiment(request(corpus="demo", texts=None, max_passages=2, max_len=32))
    assert result.n_passages == 2 and "demo pack corpus" in result.corpus
    assert {(r.layer, r.feature) for r in result.rows} == {(0, 9), (1, 30)}
    bad = tmp_path / "bad.csv"
    bad.write_text("layer,id\n0,3\n")
    from backend.experiments.features import read_features_csv

    with pytest.raises(InvalidRequest, match="feature_id"):
        read_features_csv(bad)
    with pytest.raises(InvalidRequest, match="reads blocks"):
        backend.experiment(request(hook="resid_pre"))
