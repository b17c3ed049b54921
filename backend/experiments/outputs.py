"""An experiment's files, in seed 002's layout:

    <out>/csv/per_feature_metrics.csv    one row per (layer, feature, alpha)
    <out>/csv/per_layer_summary.csv      one row per (layer, alpha)
    <out>/csv/selected_features.csv      the features tested (Neuronpedia template columns)
    <out>/csv/passages.csv               the passages used (corpus index, tokens, text)
    <out>/plots/layer_vs_dloss_alpha<a>.png, metrics_vs_alpha.png
    <out>/snippets/examples.jsonl        highest-KL windows at the headline alpha
    <out>/report.md                      settings, tables, the plots and example snippets
    <out>/result.json                    the whole ExperimentResult

Plots are drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from backend.schemas import ExperimentResult


def _deltas_text(deltas: list[tuple[str, float]]) -> str:
    return "; ".join(f"{json.dumps(tok, ensure_ascii=False)} {value:+.3f}" for tok, value in deltas)


def per_feature_frame(result: ExperimentResult) -> pd.DataFrame:
    rows = [
        {
            "layer": r.layer,
            "feature": r.feature,
            "alpha": r.alpha,
            "label": r.label or "",
            "delta_ce_loss": r.delta_ce_loss,
            "ce_loss_default": r.ce_loss_default,
            "ce_loss_steered": r.ce_loss_steered,
            "kl": r.kl,
            "top_logit_deltas": _deltas_text(r.top_logit_deltas),
            "firing_rate": r.firing_rate,
            "mean_act": r.mean_act,
            "max_act": r.max_act,
            "n_tokens": r.n_tokens,
        }
        for r in result.rows
    ]
    return pd.DataFrame(
        rows,
        columns=[
            "layer",
            "feature",
            "alpha",
            "label",
            "delta_ce_loss",
            "ce_loss_default",
            "ce_loss_steered",
            "kl",
            "top_logit_deltas",
            "firing_rate",
            "mean_act",
            "max_act",
            "n_tokens",
        ],
    )


def per_layer_frame(result: ExperimentResult) -> pd.DataFrame:
    return pd.DataFrame(
        [s.model_dump() for s in result.layers],
        columns=[
            "layer",
            "alpha",
            "n_features",
            "delta_ce_loss_mean",
            "delta_ce_loss_std",
            "kl_mean",
            "kl_std",
            "firing_rate_mean",
        ],
    )


def plot_files(result: ExperimentResult, plots: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plots.mkdir(parents=True, exist_ok=True)
    layers = per_layer_frame(result)
    paths = []
    at = layers[layers["alpha"] == result.alpha]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.errorbar(at["layer"], at["delta_ce_loss_mean"], yerr=at["delta_ce_loss_std"], marker="o", capsize=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("ΔCE loss (nats)")
    ax.set_title(f"{result.model} / {result.sae_set}: ΔCE by layer at alpha = {result.alpha:g}")
    fig.tight_layout()
    path = plots / f"layer_vs_dloss_alpha{result.alpha:g}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for layer, group in layers.groupby("layer"):
        axes[0].plot(group["alpha"], group["delta_ce_loss_mean"], marker="o", label=f"layer {layer}")
        axes[1].plot(group["alpha"], group["kl_mean"], marker="o", label=f"layer {layer}")
    axes[0].set_ylabel("ΔCE loss (nats)")
    axes[1].set_ylabel("KL(default ‖ steered)")
    for ax in axes:
        ax.set_xlabel("alpha")
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("Mean over each layer's features")
    fig.tight_layout()
    path = plots / "metrics_vs_alpha.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def _md_table(frame: pd.DataFrame, floats: str = "{:.4f}") -> str:
    cols = list(frame.columns)
    kinds = [frame[c].dtype.kind for c in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        cells = [floats.format(v) if kind == "f" and v == v else str(v) for v, kind in zip(row, kinds)]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def _md_text(text: str) -> str:
    """Model text in markdown: inside a code span, backticks and newlines made harmless."""
    return "`" + text.replace("`", "ˋ").replace("\n", "↵") + "`"


def report(result: ExperimentResult, settings: dict, plots: list[Path], out: Path) -> str:
    lines = [f"# Intervention experiment: {result.model} / {result.sae_set}", ""]
    if result.label:
        lines += [f"> Results from a {result.label}.", ""]
    lines += [
        f"- hook: `{result.hook}`",
        f"- corpus: {result.corpus}; {result.n_passages} passages, {result.n_tokens:,} tokens",
        f"- alphas: {', '.join(f'{a:g}' for a in result.alphas)} "
        f"(headline {result.alpha:g}); each feature's activation multiplied by alpha at every "
        "non-special token",
        f"- features: {len(result.features)}; batch size at the end {result.batch_size}",
        "",
    ]
    lines += [
        "ΔCE is the token-weighted mean change of next-token cross-entropy (steered − default); KL is "
        "the mean KL(default ‖ steered) per token; logit deltas are mean changes of centred logits.",
        "",
    ]
    for path in plots:
        lines += [f"![{path.stem}]({path.relative_to(out).as_posix()})", ""]
    lines += ["## Per layer", "", _md_table(per_layer_frame(result)), ""]
    at = per_feature_frame(result)
    at = at[at["alpha"] == result.alpha].sort_values("delta_ce_loss", ascending=False)
    lines += [
        f"## Features at alpha = {result.alpha:g} (largest ΔCE first)",
        "",
        _md_table(
            at[["layer", "feature", "label", "delta_ce_loss", "kl", "firing_rate", "top_logit_deltas"]]
        ),
        "",
    ]
    if result.snippets:
        lines += [f"## Example snippets at alpha = {result.alpha:g} (highest KL)", ""]
        for s in result.snippets:
            lines.append(
                f"- **{s.layer}:{s.feature}**, passage {s.passage}, position {s.position}, KL {s.kl:.3f}: "
                f"{_md_text(s.before)} **{_md_text(s.token)}** {_md_text(s.after)} — next token "
                f"{_md_text(s.default_next)} → {_md_text(s.steered_next)}"
            )
        lines.append("")
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    lines += [
        "## Settings",
        "",
        "```yaml",
        *(f"{k}: {json.dumps(v)}" for k, v in settings.items()),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_all(
    result: ExperimentResult, settings: dict, passages: list[tuple[int, int, str]], out: Path
) -> list[Path]:
    """Every output file; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    csv_dir, snip_dir = out / "csv", out / "snippets"
    csv_dir.mkdir(exist_ok=True)
    snip_dir.mkdir(exist_ok=True)
    written = []
    for name, frame in (
        ("per_feature_metrics.csv", per_feature_frame(result)),
        ("per_layer_summary.csv", per_layer_frame(result)),
        (
            "selected_features.csv",
            pd.DataFrame(
                [
                    {
                        "layer": f.layer,
                        "feature_id": f.index,
                        "label": f.label or "",
                        "label_confidence": f.label_confidence,
                    }
                    for f in result.features
                ],
                columns=["layer", "feature_id", "label", "label_confidence"],
            ),
        ),
        ("passages.csv", pd.DataFrame(passages, columns=["corpus_index", "n_tokens", "text"])),
    ):
        frame.to_csv(csv_dir / name, index=False)
        written.append(csv_dir / name)
    with open(snip_dir / "examples.jsonl", "w", encoding="utf-8") as f:
        for s in result.snippets:
            f.write(s.model_dump_json() + "\n")
    written.append(snip_dir / "examples.jsonl")
    plots = plot_files(result, out / "plots")
    written += plots
    (out / "report.md").write_text(report(result, settings, plots, out), encoding="utf-8")
    (out / "result.json").write_text(result.model_dump_json(indent=1), encoding="utf-8")
    return written + [out / "report.md", out / "result.json"]
