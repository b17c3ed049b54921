"""The steering playground under AppTest: what it shows against the backend's own answers."""

from __future__ import annotations

import html
import json
import re

import pytest

from backend.schemas import ExperimentRequest, SteerRequest, SteerSweepRequest
from components.steer_views import differing_positions
from tests.test_app_pages import all_markup, app

PROMPT = "Tell me <script>alert(1)</script> about tokens"


def steer_page(**query: str):
    at = app(**{"model": "demo", "sae_set": "res", **query}).run()
    at.switch_page("pages/steer.py").run()
    assert not at.exception, at.exception
    return at


def frame_with(at, column: str):
    (frame,) = [d.value for d in at.dataframe if column in d.value.columns]
    return frame


@pytest.fixture(scope="module")
def steered(hf_cache):
    """The page opened from a 'Steer it' link (feature, no position) and run once."""
    at = steer_page(feature="1:7", prompt=PROMPT)
    assert at.text_area(key="st.prompt").value == PROMPT
    at.button(key="st_run").click().run()
    assert not at.exception, at.exception
    return at


def expected_steer(backend, features):
    return backend.steer(
        SteerRequest(
            model="demo", sae_set="res", prompt=PROMPT, n_tokens=16, top_k=5, seed=0, features=features
        )
    )


def test_link_steers_the_feature_and_shows_both_runs_escaped_and_marked(steered, backend):
    want = expected_steer(
        backend,
        [
            {
                "layer": 1,
                "index": 7,
                "delta": 10.0,
                "steer_all_prompt_positions": True,
                "steer_generated_tokens": True,
            }
        ],
    )
    diff = differing_positions(want.default_ids, want.steered_ids, len(want.prompt_tokens))
    assert diff, "a delta of 10 on every token should change the generation"
    default_html, steered_html = [e.proto.body for e in steered.get("html")][:2]
    for body in (default_html, steered_html):
        assert "<script" not in body and "&lt;" in body
        assert html.unescape(re.sub(r"<[^>]+>", "", body)).startswith(PROMPT), "the text, tokens escaped"
    assert steered_html.count("<mark") == len(diff) == default_html.count("<mark")
    assert "<script" not in all_markup(steered)
    metrics = {m.label: m.value for m in steered.metric}
    assert metrics["ΔCE loss on the prompt"] == f"{want.metrics.delta_ce_loss:+.4f}"
    assert metrics["KL(default ‖ steered)"] == f"{want.metrics.kl_divergence:.4f}"
    table = frame_with(steered, "steered top-k")
    assert len(table) == len(want.steered_logits_by_token)
    first = want.steered_logits_by_token[len(want.prompt_tokens)][1][0]
    assert table["steered top-k"][len(want.prompt_tokens)].split("  ")[0].endswith(f"{first[1]:.3f}")
    ivs = frame_with(steered, "value set")
    assert list(ivs["feature"]) == ["1:7"] and list(ivs["operation"]) == ["delta"]
    assert steered.query_params["feature"] == "1:7"


def test_a_graph_node_link_ablates_at_its_position(hf_cache, backend):
    at = steer_page(feature="0:5", position="4", prompt=PROMPT)
    at.button(key="st_run").click().run()
    assert not at.exception, at.exception
    ivs = frame_with(at, "value set")
    assert list(ivs["operation"]) == ["ablate"] and list(ivs["positions"]) == ["4"]
    want = expected_steer(
        backend,
        [{"layer": 0, "index": 5, "ablate": True, "steer_positions": [4], "token_active_position": 4}],
    )
    assert ivs["activation there (default)"][0] == f"{want.interventions[0].clean_activations[4]:.3f}"
    assert {m.label: m.value for m in at.metric}[
        "KL(default ‖ steered)"
    ] == f"{want.metrics.kl_divergence:.4f}"


def test_sweep_plots_cost_against_alpha(steered, backend):
    steered.text_input(key="st.sweep_alphas").input("0, 1, 4")
    steered.button(key="st_sweep_run").click().run()
    assert not steered.exception, steered.exception
    want = backend.sweep(
        SteerSweepRequest(
            model="demo",
            sae_set="res",
            prompt=PROMPT,
            n_tokens=16,
            seed=0,
            alphas=[0, 1, 4],
            feature={
                "layer": 1,
                "index": 7,
                "steer_all_prompt_positions": True,
                "steer_generated_tokens": True,
            },
        )
    )
    (chart,) = [c for c in steered.get("plotly_chart") if "alpha" in c.proto.spec]
    traces = json.loads(chart.proto.spec)["data"]
    assert traces[0]["x"] == [0.0, 1.0, 4.0]
    assert traces[0]["y"] == pytest.approx([p.metrics.delta_ce_loss for p in want.points])
    assert traces[1]["y"] == pytest.approx([p.metrics.kl_divergence for p in want.points])
    table = frame_with(steered, "same as default")
    assert list(table["same as default"]) == [p.steered_ids == want.default_ids for p in want.points]
    assert table["same as default"][1], "alpha 1 is the default run"


def test_experiment_section_matches_the_backend(steered, backend):
    texts = [
        "The cat sat on the warm mat all day long.",
        "Rivers carry water from hills down to the sea.",
        "Seven plus five makes twelve, as every child learns.",
    ]
    steered.multiselect(key="st_exp_layers").set_value([1])
    steered.radio(key="st_exp_source").set_value("the interventions above")
    steered.radio(key="st_exp_corpus").set_value("my passages")
    steered.text_area(key="st.passages").input("\n".join(texts))
    steered.text_input(key="st_exp_alphas").input("0, 2")
    steered.number_input(key="st_exp_batch").set_value(2)
    (submit,) = [b for b in steered.button if b.label == "Run experiment"]
    submit.click().run()
    assert not steered.exception, steered.exception
    want = backend.experiment(
        ExperimentRequest(
            model="demo",
            sae_set="res",
            layers=[1],
            alphas=[0, 2],
            alpha=2.0,
            corpus="texts",
            texts=texts,
            max_passages=16,
            max_len=64,
            batch_size=2,
            feature_source="list",
            features=[{"layer": 1, "index": 7}],
            features_per_layer=3,
        )
    )
    frame = frame_with(steered, "delta_ce_loss")
    assert list(frame["alpha"]) == [r.alpha for r in want.rows]
    assert list(frame["delta_ce_loss"]) == pytest.approx([r.delta_ce_loss for r in want.rows], abs=1e-9)
    assert list(frame["kl"]) == pytest.approx([r.kl for r in want.rows], abs=1e-9)
    titles = [
        json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "")
        for c in steered.get("plotly_chart")
    ]
    assert any("CE by layer at alpha = 2" in t for t in titles)


def test_a_link_to_a_transcoder_feature_steers_the_transcoder(hf_cache):
    at = steer_page(sae_set="demo", feature="1:5", position="2", prompt="Transcoder features steer too")
    assert at.selectbox(key="st_set::demo").value == "demo"
    at.button(key="st_run").click().run()
    assert not at.exception, at.exception
    ivs = frame_with(at, "value set")
    assert list(ivs["set"]) == ["demo"] and list(ivs["kind"]) == ["transcoder"]
    assert list(ivs["writes to"]) == ["blocks.1.hook_mlp_out"]




def test_the_grid_says_how_strongly_each_feature_fires(steered, backend):
    """Repro 12 of issue 12: the page shows a sensible amount, the feature's corpus maximum, taken
    from the feature's dashboard (its store is ready by now: the `backend` fixture built it)."""
    from backend.schemas import FeatureRef, FeatureRequest

    want = backend.feature(FeatureRequest(feature=FeatureRef(model="demo", sae_set="res", layer=1, index=7)))
    assert want.max_activation is not None
    at = steer_page(feature="1:7", prompt=PROMPT)
    captions = [c.value for c in at.caption]
    assert any(c.startswith(f"1:7 fires up to {want.max_activation:.3g} in the corpus") for c in captions), captions


def test_a_frequency_penalty_at_temperature_zero_is_said_to_be_ignored(hf_cache, backend):
    """Greedy decoding takes the argmax before any penalty (TransformerLens' `sample_logits` does the
    same), so a penalty typed at temperature 0 changes nothing: the page says so instead of leaving
    the user to wonder why the text is the same."""
    at = steer_page(feature="1:7", prompt=PROMPT)
    notes = lambda: [c.value for c in at.caption if "greedy decoding" in c.value]  # noqa: E731
    assert notes() == []
    at.number_input(key="st.freq_penalty").set_value(2.0).run()
    assert len(notes()) == 1 and "Raise the temperature" in notes()[0]
    features = [{"layer": 1, "index": 7, "delta": 10.0, "steer_all_prompt_positions": True,
                 "steer_generated_tokens": True}]
    plain, penalised = (backend.steer(SteerRequest(model="demo", sae_set="res", prompt=PROMPT, n_tokens=8,
                                                   top_k=0, seed=0, freq_penalty=p, features=features))
                        for p in (0.0, 2.0))
    assert penalised.steered_generation == plain.steered_generation  # what the note tells the user
    at.number_input(key="st.temperature").set_value(0.8).run()
    assert notes() == []
