"""From an experiment's sums to its plain result: per-feature rows, per-layer summaries, snippets."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from backend.experiments.state import State, feature_key, unit_key
from backend.local import analysis, steer_metrics
from backend.schemas import ExperimentRequest, ExperimentResult, FeatureMetrics, LayerSummary, Snippet

if TYPE_CHECKING:
    from backend.experiments.plan import Plan


def build_result(plan: Plan, state: State, req: ExperimentRequest, alphas: list[float]) -> ExperimentResult:
    with plan.loaded.use(60) as model:
        tok = model.tokenizer

        def decode(ids: list[int]) -> list[str]:
            return analysis.token_texts(tok, ids)

        rows: list[FeatureMetrics] = []
        for f in state.features:
            st = state.stats.get(feature_key(f.layer, f.index))
            for alpha in alphas:
                sums = state.sums.get(unit_key(f.layer, f.index, alpha))
                if sums is None or st is None:
                    continue
                m = sums.means()
                rows.append(
                    FeatureMetrics(
                        layer=f.layer,
                        feature=f.index,
                        alpha=alpha,
                        label=f.label,
                        label_confidence=f.label_confidence,
                        delta_ce_loss=m["delta_ce_loss"],
                        ce_loss_default=m["ce_loss_default"],
                        ce_loss_steered=m["ce_loss_steered"],
                        kl=m["kl"],
                        top_logit_deltas=steer_metrics.top_deltas(sums.mean_logit_delta(), decode),
                        firing_rate=st.n_fire / st.n_tokens if st.n_tokens else 0.0,
                        mean_act=st.act_sum / st.n_fire if st.n_fire else 0.0,
                        max_act=st.act_max,
                        n_tokens=sums.n_positions,
                    )
                )
        by_index = {p.index: p for p in plan.passages}
        snippets: list[Snippet] = []
        w = req.snippet_window
        for f in state.features:
            for kl, passage, pos, d_next, s_next in state.snippets.get(feature_key(f.layer, f.index), []):
                ids = by_index[passage].ids
                texts = decode([ids[pos], d_next, s_next])
                snippets.append(
                    Snippet(
                        layer=f.layer,
                        feature=f.index,
                        alpha=req.alpha,
                        passage=passage,
                        position=pos,
                        kl=kl,
                        before=tok.decode(ids[max(0, pos - w) : pos], skip_special_tokens=True),
                        token=texts[0],
                        after=tok.decode(ids[pos + 1 : pos + 1 + w], skip_special_tokens=True),
                        default_next=texts[1],
                        steered_next=texts[2],
                    )
                )
    return ExperimentResult(
        model=plan.entry.id,
        sae_set=plan.fset.id,
        hook=plan.fset.hook_template(),
        corpus=plan.corpus_label,
        n_passages=len(plan.passages),
        n_tokens=sum(len(p.ids) for p in plan.passages),
        alphas=alphas,
        alpha=req.alpha,
        features=state.features,
        rows=rows,
        layers=layer_summaries(rows),
        snippets=snippets,
        batch_size=state.batch_size,
        notes=list(state.notes),
        label=plan.loaded.label,
    )


def layer_summaries(rows: list[FeatureMetrics]) -> list[LayerSummary]:
    """Mean and (population) standard deviation over each layer's features, per alpha."""
    groups: dict[tuple[int, float], list[FeatureMetrics]] = {}
    for r in rows:
        groups.setdefault((r.layer, r.alpha), []).append(r)
    out = []
    for (layer, alpha), rs in sorted(groups.items()):
        dce, kl = [r.delta_ce_loss for r in rs], [r.kl for r in rs]
        out.append(
            LayerSummary(
                layer=layer,
                alpha=alpha,
                n_features=len(rs),
                delta_ce_loss_mean=statistics.fmean(dce),
                delta_ce_loss_std=statistics.pstdev(dce),
                kl_mean=statistics.fmean(kl),
                kl_std=statistics.pstdev(kl),
                firing_rate_mean=statistics.fmean(r.firing_rate for r in rs),
            )
        )
    return out
