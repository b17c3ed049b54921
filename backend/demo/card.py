"""CARD.md (what the pack is and how good it is) and SOURCES.md (where its corpus comes from).

Both are rendered from the build's metrics.json, so every figure in them is one the build
measured. Model tokens in the card are shown inside code spans with backticks removed.
"""

from __future__ import annotations

import math
from typing import Any

from backend.demo import corpus as corpus_mod
from backend.demo.autoexplain import TOP_N
from backend.demo.lm import HOLDOUT_EVERY


def _code(text: str, table: bool = False) -> str:
    """Inline code for arbitrary model text (no backticks or newlines inside; pipes escaped in tables)."""
    clean = " ".join(str(text).replace("`", "'").split())
    if table:
        clean = clean.replace("|", "\\|")
    return f"`{clean}`" if clean else "` `"


def _f(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def headline(m: dict[str, Any]) -> dict[str, Any]:
    """The figures the card leads with (also used by the tests)."""
    saes = m["saes"].values()
    tcs = m["transcoders"]["per_layer"].values()
    return {
        "heldout_loss": m["model"]["heldout_loss"], "unigram_loss": m["model"]["unigram_loss"],
        "sae_fve_min": min(s["fve"] for s in saes), "sae_l0_max": max(s["l0"] for s in saes),
        "sae_ce_increase_max": max(s["ce_increase"] for s in saes),
        "transcoder_fve_min": min(t["fve"] for t in tcs), "transcoder_l0_max": max(t["l0"] for t in tcs),
        "goal_met": all(s["fve"] >= 0.8 and s["l0"] <= 64 for s in saes),
        "wall_s": m["build"].get("wall_s"),
        "dense_max": max((d.get("dense_fraction", float("nan")) for d in [*saes, *tcs]), default=float("nan")),
        "readability": {k: v["non_dense_share"] for k, v in m.get("readability", {}).items()
                        if isinstance(v, dict)},
    }


def render_card(m: dict[str, Any]) -> str:
    cfg, mod, cor = m["config"], m["model"], m["corpus"]
    h = headline(m)
    loss, uni = mod["heldout_loss"], mod["unigram_loss"]
    lines = [
        f"# {cfg['name']}: the Featurescope offline demo pack",
        "",
        "A small causal transformer trained by this project on the Python 3.11 documentation, with a",
        "residual-stream SAE and a per-layer transcoder on every layer and an automatic explanation for",
        "every feature. It makes every page of Featurescope work with no GPU and no network.",
        "Everything here was measured by the build (`python -m backend.demo build`) and is also in",
        "`metrics.json`.",
        "",
    ]
    if cfg.get("label"):
        lines += [f"> **{cfg['label']}**", ""]
    lines += [
        "## Headline",
        "",
        f"- Held-out loss **{loss:.3f} nats/token** (perplexity {math.exp(loss):.1f}) against "
        f"**{uni:.3f}** for a unigram model of the training tokens (perplexity {math.exp(uni):.1f}).",
        f"- Residual SAEs: FVE ≥ **{h['sae_fve_min']:.3f}** on every layer at L0 ≤ "
        f"**{h['sae_l0_max']:.1f}**; "
        f"CE-loss increase when spliced in ≤ **{h['sae_ce_increase_max']:.3f}** nats. "
        f"Goal (FVE ≥ 0.8 with L0 ≤ 64): **{'met' if h['goal_met'] else 'not met'}**.",
        f"- Transcoders: FVE of the MLP output ≥ **{h['transcoder_fve_min']:.3f}** at L0 ≤ "
        f"**{h['transcoder_l0_max']:.1f}**; all layers replaced at once raise the loss by "
        f"{m['transcoders']['all_layers']['ce_increase']:.3f} nats.",
        *([f"- Dense features (firing on more than 10% of held-out non-BOS tokens): at most "
           f"**{h['dense_max']:.2%}** of any dictionary's features. Of the top-10 features per token and "
           f"layer on {len(m['readability']['sentences'])} held-out documentation sentences, "
           + ", ".join(f"**{v:.1%}** are not dense (`{k}`)" for k, v in h["readability"].items()) + "."]
          if "readability" in m else []),
        f"- Build: {_minutes(m['build']['wall_s'])} of wall time on {m['build']['threads']} CPU threads "
        f"({m['build']['machine']}, torch {m['build']['torch']}).",
        "",
        "## Corpus",
        "",
        f"The Python 3.11 documentation from Debian's `{cor['source']['package']}` "
        f"{cor['source']['version']} (PSF License; see SOURCES.md): {cor['documents']:,} documents "
        f"(sections of the reStructuredText sources, markup removed, one per line of "
        f"`{cor['file']}`), {cor['characters']:,} characters, "
        f"{cor['train_tokens'] + cor['heldout_tokens']:,} tokens (BOS separators included). "
        f"Every {HOLDOUT_EVERY}th document is held out: {cor['heldout_docs']} documents, "
        f"{cor['heldout_tokens']:,} tokens.",
        "",
        "## Tokenizer and model",
        "",
        f"- Byte-level BPE (GPT-2 pre-tokenisation) trained on the corpus: {mod['d_vocab']:,} tokens, "
        "`<|endoftext|>` as BOS/EOS/pad.",
        f"- TransformerLens `HookedTransformer`: {cfg['n_layers']} layers, d_model {cfg['d_model']}, "
        f"{cfg['n_heads']} heads of {cfg['d_model'] // cfg['n_heads']}, d_mlp {cfg['d_mlp']}, "
        f"context {cfg['n_ctx']}, "
        f"LayerNorm, GELU, learned positions; {mod['n_params']:,} parameters.",
        f"- Trained from scratch on CPU"
        f"{' (bfloat16 autocast, float32 weights)' if cfg.get('lm_bf16') else ''}: "
        f"{mod['train']['steps']:,} AdamW steps of "
        f"{mod['train']['batch_rows']} rows × "
        f"{cfg['n_ctx']} tokens ({mod['train']['tokens']:,} tokens, "
        f"{mod['train']['tokens'] / max(1, cor['train_tokens']):.1f} epochs), "
        f"peak learning rate {mod['train']['lr']}, "
        f"cosine decay; final training loss {mod['train']['final_train_loss']:.3f}.",
        "",
        "### Sample generations",
        "",
        "Greedy, then sampled (temperature 0.8, top-k 40, seeded); the prompt in bold.",
        "",
    ]
    for g in m["generations"]:
        lines += [f"- **{_code(g['prompt'])}** {_code(g['greedy'])}",
                  f"  - sampled: {_code(g['sampled'])}"]
    lines += [
        "",
        "## Residual SAEs (`res`)",
        "",
        f"One SAE per layer on `blocks.L.hook_resid_post`, {cfg['d_dict']:,} features, saved with SAELens' "
        "`JumpReLUSAE` (load with `SAE.load_from_disk`). Trained as BatchTopK dictionaries "
        f"(k = {cfg['k']}, {cfg['dict_tokens']:,} tokens, AuxK loss for dead features), then given the "
        "JumpReLU threshold at which the mean L0 is k on fresh training rows"
        + (f"; a feature firing on more than {cfg['density_cap']:.0%} of a training batch's tokens is "
           "held back by a routing bias that becomes part of its threshold, so that few features are "
           "dense" if cfg.get("density_cap", 1.0) < 1.0 else "")
        + (f"; after that calibration, each feature still firing on more than {cfg['density_limit']:.0%} "
           f"of the {cfg['calibration_rows']} calibration rows' tokens has its own threshold raised to "
           "the value it exceeds on exactly that share (theta and these limits set in turn, three rounds)"
           if cfg.get("density_limit", 1.0) < 1.0 else "") + ".",
        "**BOS**: no dictionary saw a BOS position, in training, threshold calibration or any statistic "
        "here (the model writes an attention-sink vector there). Their output on BOS is meaningless, so "
        "the manifest marks every set `\"bos\": \"excluded\"` and the app leaves BOS out of its tables "
        "and colour scales unless *Include special tokens* is on.",
        f"Measured on {next(iter(m['saes'].values()))['tokens']:,} held-out tokens (BOS excluded); CE "
        "with SAELens' `get_recons_loss` (BOS positions left unchanged); *recovered* is SAELens' "
        "CE loss score.",
        "",
        "| layer | L0 | FVE | CE clean | CE spliced | CE increase | CE recovered | KL | dead | dense |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for layer, s in m["saes"].items():
        lines.append(f"| {layer} | {s['l0']:.1f} | {s['fve']:.3f} | {s['ce_clean']:.3f} | "
                     f"{s['ce_spliced']:.3f} | "
                     f"{s['ce_increase']:.3f} | {_f(s['ce_recovered'])} | {s['kl_with_sae']:.3f} | "
                     f"{s['dead_fraction']:.1%} | {_pct(s.get('dense_fraction'))} |")
    allt = m["transcoders"]["all_layers"]
    lines += [
        "",
        "## Transcoders (`demo`)",
        "",
        f"One per layer, reading `hook_resid_mid` and writing `hook_mlp_out`, {cfg['d_dict']:,} features, "
        "trained the same way on the MLP's input/output pairs and saved in circuit-tracer's per-layer "
        "format (`W_enc`, `W_dec`, `b_enc`, `b_dec`, `activation_function.threshold`: JumpReLU), so "
        "`load_relu_transcoder` and a `TranscoderSet` load them. FVE is of `hook_mlp_out`; CE "
        "replaces `hook_mlp_out` with the transcoder's output (non-BOS positions).",
        "",
        "| layer | L0 | FVE | CE clean | CE spliced | CE increase | CE recovered | dead | dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for layer, t in m["transcoders"]["per_layer"].items():
        lines.append(f"| {layer} | {t['l0']:.1f} | {t['fve']:.3f} | {t['ce_clean']:.3f} | "
                     f"{t['ce_spliced']:.3f} | "
                     f"{t['ce_increase']:.3f} | {_f(t['ce_recovered'])} | {t['dead_fraction']:.1%} | "
                     f"{_pct(t.get('dense_fraction'))} |")
    lines.append(f"| all | | | {allt['ce_clean']:.3f} | {allt['ce_spliced']:.3f} | "
                 f"{allt['ce_increase']:.3f} | "
                 f"{_f(allt['ce_recovered'])} | | |")
    kinds = m["explanations"]["kinds"]
    lines += [
        "",
        "## Feature explanations",
        "",
        f"Every feature of every SAE and transcoder has an explanation (`explanations/res.json`, "
        f"`explanations/demo.json`), generated from its top {TOP_N} activations on "
        f"{m['explanations']['sample_tokens']:,} corpus tokens and from its top logits (decoder direction "
        "through the final LayerNorm's weight and the unembedding); no language model is involved. "
        "An explanation names what the top examples share: the token, the token before it, a small set "
        "of tokens, or a token class; `mixed` when none covers most of them.",
        "",
        "| set | " + " | ".join(sorted({k for v in kinds.values() for k in v})) + " |",
        "|---|" + "---|" * len({k for v in kinds.values() for k in v}),
    ]
    all_kinds = sorted({k for v in kinds.values() for k in v})
    for set_id, counts in kinds.items():
        lines.append(f"| {set_id} | " + " | ".join(str(counts.get(k, 0)) for k in all_kinds) + " |")
    if "dense" in m["explanations"]:
        dense = m["explanations"]["dense"]
        lines += ["", "Dense features (firing on at least 10% of the sample's tokens; their explanations say "
                  "so, and describe only their strongest activations): "
                  + ", ".join(f"{dense.get(s, 0)} of {sum(kinds[s].values())} in `{s}`"
                              for s in kinds) + ". Each feature's density over the sample is in "
                  "`stats/<set>.json`; the app hides dense features by it."]
    if "readability" in m:
        r = m["readability"]
        lines += [
            "",
            "## Readability",
            "",
            f"For each of {len(r['sentences'])} held-out documentation sentences (the first prose "
            "sentence of each held-out document, in corpus order), every non-BOS token's top-10 active "
            "features per layer, by activation, as the highlighter lists them; the share of those slots "
            "held by features that are not dense (density ≤ 10% in `stats/<set>.json`). Goal ≥ 80%.",
            "",
            "| set | slots | not dense | " + " | ".join(f"layer {L}" for L in next(
                v for v in r.values() if isinstance(v, dict))["per_layer"]) + " |",
            "|---|---|---|" + "---|" * len(next(v for v in r.values() if isinstance(v, dict))["per_layer"]),
        ]
        for set_id, v in r.items():
            if isinstance(v, dict):
                lines.append(f"| {set_id} | {v['slots']:,} | {v['non_dense_share']:.1%} | "
                             + " | ".join(f"{x:.1%}" for x in v["per_layer"].values()) + " |")
        lines += ["", "The sentences: " + "; ".join(_code(t) for t in r["sentences"][:20]) + "."]
    n_show = len(m["showcase"])
    lines += [
        "",
        f"## {n_show} features to check by eye",
        "",
        "Open them in the app (model `demo`, the set and layer given) or type text containing the "
        "described tokens into the highlighter. *precision*: share of the top examples the explanation "
        "describes; *coverage*: share of all the feature's firings in the sample that it describes; "
        "*recall*: for a single-token explanation, share of that token's occurrences in the sample on "
        "which the feature fires. Candidates fire on at most 5% of tokens and at least 40 times in "
        "the sample. "
        "In the examples the activating token is in [[ ]].",
        "",
    ]
    for i, f in enumerate(m["showcase"], 1):
        where = (f"SAE `res` layer {f['layer']}" if f["set"] == "res"
                 else f"transcoder `demo` layer {f['layer']}")
        recall = "" if f["recall"] is None else f", recall {f['recall']:.2f}"
        coverage = f", coverage {f['coverage']:.2f}" if "coverage" in f else ""
        lines += [f"{i}. **{where}, feature {f['index']}**: {_code(f['explanation'])} "
                  f"(precision {f['precision']:.2f}{coverage}{recall}; "
                  f"fires on {f['density']:.2%} of tokens)"]
        for ex in f["examples"]:
            lines.append(f"   - {ex['activation']:.2f}: {_code(ex['text'])}")
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        "make demo                              # or: python -m backend.demo build",
        "python -m backend.demo build --smoke --out /tmp/smoke-pack   # the same pipeline, tiny, ~1 minute",
        "python -m backend.demo corpus          # regenerate corpus.txt.gz from Debian's package",
        "```",
        "",
        f"Seed {cfg['seed']}; stage times (s): "
        + ", ".join(f"{k} {v}" for k, v in m["build"]["stages_s"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def render_sources(m: dict[str, Any]) -> str:
    src = m["corpus"]["source"]
    return "\n".join([
        "# Sources of the demo pack",
        "",
        "## Corpus: `corpus.txt.gz`",
        "",
        f"- What: the Python 3.11 documentation (the reStructuredText sources that Sphinx ships beside "
        f"the HTML), from the Debian package `{src['package']}` version `{src['version']}` "
        f"({src['distribution']}); `.deb` sha256 `{src['deb_sha256']}`.",
        f"- Licence: {src['licence']}. The documentation's own licence page (`{src['licence_file']}` in "
        "the package, \"History and License\") says: \"Python software and documentation are licensed "
        "under the PSF License Agreement\", and, from Python 3.8.6 on, examples, recipes and other code "
        "in the documentation are dual licensed under the PSF License Agreement and the Zero-Clause BSD "
        "license. The PSF License Agreement allows reproducing, distributing and preparing derivative "
        "works, provided PSF's copyright notice is retained: Copyright © 2001-2023 Python Software "
        "Foundation; All Rights Reserved. Debian's copy of the licence: "
        "`/usr/share/doc/python3.11-doc/copyright`.",
        "- What was changed: each file was split into sections (long ones at paragraph boundaries), "
        "reStructuredText markup was removed (roles, heading adornments, index entries, comments, link "
        "targets), whitespace was collapsed so that each document is one line; the text was not "
        "otherwise edited. Files: every `*.rst.txt` under "
        f"`{src['sources_dir']}` in sorted order, except `{', '.join(corpus_mod.EXCLUDE)}`.",
        f"- Size: {m['corpus']['documents']:,} documents, {m['corpus']['characters']:,} characters; "
        f"sha256 of the uncompressed text `{m['corpus']['sha256']}`.",
        "- Recipe (exact): `python -m backend.demo corpus` runs `apt-get download "
        f"{src['package']}={src['version']}`, checks the sha256 above, unpacks it and rewrites "
        "`corpus.txt.gz` with the code in `backend/demo/corpus.py` (gzip with a fixed header, so the "
        "bytes are the same). `--deb FILE` uses a `.deb` you already have.",
        "",
        "## Everything else",
        "",
        "The tokenizer, model weights, SAEs, transcoders and explanations were produced from that corpus "
        "by `python -m backend.demo build` (backend/demo/); no other data and no pretrained weights "
        "were used.",
        "",
    ])
