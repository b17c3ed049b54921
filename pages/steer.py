"""Steering playground: turn features up, down or off and compare DEFAULT with STEERED; sweep
one feature's alpha; run small intervention experiments over a corpus.

Links from other pages: ?model=…&sae_set=…&feature=L:I[&position=P][&prompt=…].
"""

from __future__ import annotations

import streamlit as st

from backend.schemas import ExperimentRequest, SteerRequest, SteerSweepRequest
from components import state
from components.experiment_views import render_experiment
from components.steer_form import (
    features_from_csv,
    features_from_rows,
    initial_rows,
    parse_alphas,
    render_interventions,
)
from components.steer_views import (
    interventions_frame,
    kl_figure,
    render_metrics,
    render_side_by_side,
    sweep_figure,
    sweep_frame,
    topk_frame,
)
from components.text import visible

DEFAULT_PROMPT = "The weather today is"
URL_PROMPT_LIMIT = 500


def feature_sets(model) -> dict[str, str]:
    sets = {s.id: f"{s.display_name} (SAE)" for s in model.sae_sets}
    sets.update(
        {t.id: f"{t.display_name} (transcoder)" for t in model.transcoder_sets if t.kind == "per_layer"}
    )
    return sets


def follow_link(sets: dict[str, str], set_key: str, sidebar_set: str | None) -> tuple[str | None, int | None]:
    """A new link (?feature=L:I[&position=P][&sae_set=…][&prompt=…]) sets the feature set, the prompt
    and the first intervention; returns the (feature, position) the interventions start from.

    The URL is read as it was before the sidebar rewrote `sae_set` (a link may name a transcoder set)."""
    raw = state.query_param_at_start("position")
    link = (state.query_param_at_start("feature"), int(raw) if raw and raw.isdigit() else None)
    if st.session_state.get("st_link") != link:
        st.session_state["st_link"] = st.session_state["st_rows_from"] = link
        if state.query_param_at_start("sae_set") in sets:
            st.session_state[set_key] = state.query_param_at_start("sae_set")
        if state.query_param_at_start("prompt"):
            st.session_state["st_prompt"] = state.query_param_at_start("prompt")
    if set_key not in st.session_state:
        st.session_state[set_key] = sidebar_set if sidebar_set in sets else next(iter(sets))
    if "st_prompt" not in st.session_state:
        st.session_state["st_prompt"] = DEFAULT_PROMPT
    return st.session_state.get("st_rows_from", (None, None))


def settings_inputs() -> dict:
    c = st.columns(6)
    return dict(
        n_tokens=int(c[0].number_input("Tokens", 1, 256, 16, key="st_n_tokens")),
        temperature=float(c[1].number_input("Temperature", 0.0, 10.0, 0.0, 0.1, key="st_temperature")),
        top_k=int(c[2].number_input("Top-k per token", 0, 100, 5, key="st_top_k")),
        freq_penalty=float(c[3].number_input("Frequency penalty", -10.0, 10.0, 0.0, 0.1, key="st_freq")),
        seed=int(c[4].number_input("Seed", 0, 2**31 - 1, 0, key="st_seed")),
        freeze_attention=c[5].checkbox(
            "Freeze attention",
            key="st_freeze",
            help="The steered run reads the prompt with the default run's attention patterns.",
        ),
    )


def steer_tab(model_id: str, set_id: str, prompt: str, rows, settings: dict) -> None:
    if st.button("Steer", type="primary", key="st_run"):
        try:
            features = features_from_rows(rows, set_id)
            req = SteerRequest.model_validate(
                {"model": model_id, "sae_set": set_id, "prompt": prompt, "features": features, **settings}
            )
        except ValueError as exc:
            st.warning(str(exc))
            return
        with state.progress("Steering…") as progress:
            result = state.call(state.backend().steer, req, progress=progress)
        st.session_state["st_result"] = result
        if result is not None and features:
            first = features[0]
            state.set_query_params(
                feature=f"{first['layer']}:{first['index']}",
                sae_set=set_id,
                prompt=prompt if len(prompt) <= URL_PROMPT_LIMIT else None,
            )
    result = st.session_state.get("st_result")
    if result is None:
        st.caption("Add interventions above (feature layer:index, what to do, where) and press **Steer**.")
        return
    if result.label:
        st.info(f"Results from a {result.label}.", icon=":material/science:")
    render_side_by_side(result)
    render_metrics(result)
    if result.interventions:
        st.markdown("**Interventions**")
        st.dataframe(interventions_frame(result), hide_index=True, width="stretch", key="st_interventions")
    st.plotly_chart(kl_figure(result), key="st_kl", width="stretch")
    st.markdown(
        "**Top next-token probabilities at every position** (DEFAULT_LOGITS_BY_TOKEN / "
        "STEERED_LOGITS_BY_TOKEN)"
    )
    st.dataframe(topk_frame(result), hide_index=True, width="stretch", key="st_topk")
    st.caption(
        f"Seed {result.seed} · {result.elapsed_ms:.0f} ms · positions count the prompt's tokens"
        + (", BOS at 0" if result.prompt_tokens and result.prompt_tokens[0].special else "")
    )


def sweep_tab(model_id: str, set_id: str, prompt: str, rows, settings: dict) -> None:
    first = next((str(f) for f in rows["feature"].tolist() if isinstance(f, str) and f.strip()), "")
    c1, c2, c3 = st.columns([1, 2, 2])
    feature = c1.text_input("Feature (layer:index)", value=first, key="st_sweep_feature")
    where = c2.radio(
        "Where",
        ["all prompt positions", "generated tokens", "both"],
        horizontal=True,
        key="st_sweep_where",
        index=2,
    )
    alphas_text = c3.text_input("Alphas", "0, 0.5, 1, 2, 4", key="st_sweep_alphas")
    if st.button("Sweep", key="st_sweep_run"):
        try:
            from backend.schemas import LayerFeature

            f = LayerFeature.parse(feature)
            target = {
                "layer": f.layer,
                "index": f.index,
                "steer_all_prompt_positions": where != "generated tokens",
                "steer_generated_tokens": where != "all prompt positions",
            }
            req = SteerSweepRequest.model_validate(
                {
                    "model": model_id,
                    "sae_set": set_id,
                    "prompt": prompt,
                    "feature": target,
                    "alphas": parse_alphas(alphas_text),
                    **{k: v for k, v in settings.items() if k != "top_k"},
                }
            )
        except ValueError as exc:
            st.warning(str(exc))
            return
        with state.progress("Sweeping alpha…") as progress:
            st.session_state["st_sweep"] = state.call(state.backend().sweep, req, progress=progress)
    result = st.session_state.get("st_sweep")
    if result is None:
        st.caption(
            "Scale one feature by each alpha in turn: the cost on the prompt and the generation at each."
        )
        return
    acts = result.feature.clean_activations
    if not any(a > 0 for a in acts):
        st.warning(
            "This feature is not active anywhere on the prompt, so scaling it changes the prompt "
            "nothing; use delta or set_value in the Steer tab to push it."
        )
    st.plotly_chart(sweep_figure(result), key="st_sweep_plot", width="stretch")
    st.dataframe(sweep_frame(result, visible), hide_index=True, width="stretch", key="st_sweep_table")
    st.caption(f"Default: {visible(result.default_generation)}")


def experiment_tab(model, set_id: str, rows) -> None:
    st.caption(
        "Seed 002's pipeline on a few passages: each feature's activation times alpha at every token; "
        "ΔCE, KL and logit deltas. Large runs: `python -m backend.experiments run --config …`."
    )
    layers_all = next((list(s.layers) for s in [*model.sae_sets, *model.transcoder_sets] if s.id == set_id), [])
    with st.form("st_exp_form", border=False):
        c1, c2, c3 = st.columns(3)
        layers = c1.multiselect("Layers", layers_all, default=layers_all[-1:], key="st_exp_layers")
        source = c2.radio(
            "Features",
            ["auto (live, by percentile)", "the interventions above", "CSV upload"],
            key="st_exp_source",
        )
        upload = c3.file_uploader("Neuronpedia-template CSV", type=["csv"], key="st_exp_csv")
        c4, c5, c6, c7 = st.columns(4)
        per_layer = c4.number_input("Features per layer", 1, 20, 3, key="st_exp_k")
        percentile = c5.number_input("Live percentile", 0.0, 100.0, 90.0, key="st_exp_pct")
        alphas_text = c6.text_input("Alphas", "0, 0.5, 1, 2, 4", key="st_exp_alphas")
        headline = c7.number_input("Headline alpha", value=2.0, key="st_exp_alpha")
        c8, c9, c10, c11 = st.columns(4)
        corpus = c8.radio("Corpus", ["demo pack", "my passages"], key="st_exp_corpus", horizontal=True)
        n_passages = c9.number_input("Passages", 1, 1000, 16, key="st_exp_n")
        max_len = c10.number_input("Max tokens per passage", 8, 1024, 64, key="st_exp_len")
        batch = c11.number_input("Batch size", 1, 64, 8, key="st_exp_batch")
        texts = st.text_area("Passages (one per line)", key="st_exp_texts", height=90)
        submitted = st.form_submit_button("Run experiment")
    if submitted:
        try:
            data = {
                "model": model.id,
                "sae_set": set_id,
                "layers": layers or None,
                "alphas": parse_alphas(alphas_text),
                "alpha": float(headline),
                "max_passages": int(n_passages),
                "max_len": int(max_len),
                "batch_size": int(batch),
                "features_per_layer": int(per_layer),
                "live_percentile": float(percentile),
            }
            if corpus == "my passages":
                data.update(corpus="texts", texts=[t for t in texts.splitlines() if t.strip()])
            if source.startswith("auto"):
                data["feature_source"] = "auto"
            else:
                listed = (
                    features_from_csv(upload.getvalue())
                    if source == "CSV upload" and upload
                    else [
                        {"layer": f["layer"], "index": f["index"]} for f in features_from_rows(rows, set_id)
                    ]
                )
                data.update(feature_source="list", features=listed)
            req = ExperimentRequest.model_validate(data)
        except (ValueError, AttributeError) as exc:
            st.warning(str(exc) if not isinstance(exc, AttributeError) else "Upload a CSV first.")
            return
        with state.progress("Running the experiment…") as progress:
            st.session_state["st_experiment"] = state.call(state.backend().experiment, req, progress=progress)
    result = st.session_state.get("st_experiment")
    if result is not None:
        render_experiment(result, key="st_exp")


def main() -> None:
    selection = state.selection()
    if selection is None:
        st.info("Pick a model in the sidebar.")
        return
    model = selection.model
    sets = feature_sets(model)
    if not sets:
        st.info(f"{model.display_name} has no SAE or transcoder set to steer with.")
        return
    st.title("Steering playground")
    set_key = f"st_set::{model.id}"
    rows_from = follow_link(sets, set_key, selection.sae_set)
    c1, c2 = st.columns([1, 3])
    set_id = c1.selectbox("Features from", list(sets), key=set_key, format_func=lambda s: sets[s])
    prompt = c2.text_area("Prompt", key="st_prompt", height=80)
    st.markdown("**Interventions**")
    rows = render_interventions(initial_rows(*rows_from), key="st_rows")
    settings = settings_inputs()
    tab_steer, tab_sweep, tab_exp = st.tabs(["Steer", "Alpha sweep", "Experiments"])
    with tab_steer:
        steer_tab(model.id, set_id, prompt, rows, settings)
    with tab_sweep:
        sweep_tab(model.id, set_id, prompt, rows, settings)
    with tab_exp:
        experiment_tab(model, set_id, rows)


main()
