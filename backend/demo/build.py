"""Build the trained demo pack: corpus -> tokenizer -> model -> SAEs and transcoders -> report.

`build(out_dir, FULL)` writes assets/demo; `build(out_dir, SMOKE)` runs the same pipeline at tiny
sizes in about a minute (the tests use it). The pack is written aside and renamed into place
once complete, so an interrupted build leaves the old pack intact. Every random choice is
seeded from `BuildConfig.seed`; with the same corpus, library versions and thread count the
weights come out the same (float reductions can differ across CPUs and thread counts).

Stages, each with a progress bar on stderr: tokenizer, tokenising, model training, held-out loss
and generations, SAE/transcoder training, JumpReLU threshold calibration, evaluation, automatic
explanations, CARD.md / SOURCES.md / metrics.json.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from backend.demo import autoexplain, card, corpus, evaluate, lm, sparse
from backend.demo.pack import FORMAT, VERSION, DemoPack
from backend.demo.tiny import SPECIAL, config_to_json, save_tokenizer, train_bpe

SAE_SET, TRANSCODER_SET = "res", "demo"
SAE_HOOK = "blocks.{layer}.hook_resid_post"
CORPUS_FILE = "corpus.txt.gz"
MIN_SHOWCASE_FIRINGS = 40  # a showcased feature has enough examples in the sample to judge it by
BROAD_CLASSES = ("a word after a space", "a word continuation", "whitespace")  # true of most tokens
BOS_HANDLING = "excluded"  # no dictionary saw BOS in training, calibration or statistics
LM_TOKENS = 9_000_000
DICT_TOKENS = 2_000_000
SMOKE_LABEL = "smoke-test pack: tiny sizes, barely trained (built by `python -m backend.demo build --smoke`)"


@dataclass(frozen=True)
class BuildConfig:
    name: str
    vocab: int
    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    n_ctx: int
    lm_tokens: int
    lm_batch_rows: int
    lm_lr: float
    d_dict: int
    k: int
    dict_tokens: int
    dict_batch_tokens: int
    dict_lr: float
    calibration_rows: int
    eval_rows: int
    explain_rows: int
    gen_tokens: int
    max_docs: int | None = None
    label: str | None = None
    seed: int = 0
    lm_bf16: bool = False  # bf16 autocast: 13x slower than float32 on this AMD EPYC (no native bf16)
    density_cap: float = 1.0  # the dictionaries' per-batch firing cap (see sparse); 1.0: none
    balance_rate: float = 0.02  # the routing bias's step (see sparse)
    density_limit: float = 1.0  # no exported feature fires on more of the calibration tokens (see sparse)
    showcase: int = 10
    # The transcoders' own rate (None: dict_lr). At 1.2e-2 three of four transcoders of a full build
    # lost their positive pre-activations and died, while the SAEs reached their best FVE there.
    transcoder_lr: float | None = None


FULL = BuildConfig(
    name="featurescope-demo", vocab=4096, n_layers=4, d_model=128, n_heads=4, d_mlp=512, n_ctx=256,
    lm_tokens=LM_TOKENS, lm_batch_rows=24, lm_lr=4e-3,
    d_dict=2048, k=32, dict_tokens=DICT_TOKENS, dict_batch_tokens=2048, dict_lr=1.2e-2, transcoder_lr=2e-3,
    density_cap=0.05, balance_rate=0.08, density_limit=0.07, calibration_rows=256, eval_rows=128, explain_rows=400,
    gen_tokens=40, showcase=20,
)
SMOKE = BuildConfig(
    name="featurescope-demo-smoke", vocab=1024, n_layers=2, d_model=64, n_heads=2, d_mlp=256, n_ctx=64,
    lm_tokens=30_000, lm_batch_rows=8, lm_lr=3e-3,
    d_dict=256, k=8, dict_tokens=30_000, dict_batch_tokens=1024, dict_lr=2e-3,
    calibration_rows=16, eval_rows=16, explain_rows=32, gen_tokens=8, max_docs=200, label=SMOKE_LABEL,
    density_cap=0.05, balance_rate=0.08, density_limit=0.07, showcase=10,
)


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


class _Stages:
    def __init__(self, names: list[str]) -> None:
        self.names, self.times, self.t0 = names, {}, time.perf_counter()
        self.bar = tqdm(total=len(names), desc="demo pack", unit="stage", position=0)

    def run(self, name: str, fn, *args, **kwargs):
        self.bar.set_postfix_str(name)
        _say(f"[{len(self.times) + 1}/{len(self.names)}] {name}")
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.times[name] = round(time.perf_counter() - start, 1)
        self.bar.update(1)
        return result

    def close(self) -> float:
        self.bar.close()
        return round(time.perf_counter() - self.t0, 1)


def manifest(cfg: BuildConfig, corpus_sha: str) -> dict[str, Any]:
    layers = list(range(cfg.n_layers))
    return {
        "format": FORMAT, "version": VERSION, "name": cfg.name, "label": cfg.label,
        "sae_sets": {SAE_SET: {"hook": SAE_HOOK, "layers": layers, "d_sae": cfg.d_dict,
                               "dir": f"saes/{SAE_SET}", "explanations": f"explanations/{SAE_SET}.json",
                               "stats": f"stats/{SAE_SET}.json", "bos": BOS_HANDLING}},
        "transcoder_sets": {TRANSCODER_SET: {
            "dir": f"transcoders/{TRANSCODER_SET}", "layers": layers, "d_transcoder": cfg.d_dict,
            "kind": "per_layer", "feature_input_hook": "hook_resid_mid",
            "feature_output_hook": "hook_mlp_out",
            "explanations": f"explanations/{TRANSCODER_SET}.json",
            "stats": f"stats/{TRANSCODER_SET}.json", "bos": BOS_HANDLING}},
        "corpus": CORPUS_FILE,
        "corpus_sha256": corpus_sha,
        "metrics": "metrics.json",
        "card": "CARD.md",
    }


def _train_tokenizer(docs: list[str], cfg: BuildConfig, out: Path):
    from transformers import AutoTokenizer

    save_tokenizer(train_bpe(docs, cfg.vocab, show_progress=True), out / "tokenizer")
    return AutoTokenizer.from_pretrained(str(out / "tokenizer"))


def _train_model(cfg: BuildConfig, tokenizer: Any, data: lm.TokenData, out: Path) -> lm.TrainReport:
    from safetensors.torch import save_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tcfg = HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_model // cfg.n_heads,
        d_mlp=cfg.d_mlp, n_ctx=cfg.n_ctx, d_vocab=len(tokenizer), act_fn="gelu_new", normalization_type="LN",
        model_name=cfg.name, default_prepend_bos=True, seed=cfg.seed, device="cpu",
    )
    model = HookedTransformer(tcfg, tokenizer=tokenizer, move_to_device=False)
    report = lm.train_model(model, data.train, tokens=cfg.lm_tokens, batch_rows=cfg.lm_batch_rows,
                            lr=cfg.lm_lr, seed=cfg.seed, bf16=cfg.lm_bf16)
    (out / "model").mkdir()
    (out / "model" / "config.json").write_text(json.dumps(config_to_json(tcfg), indent=1))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(out / "model" / "model.safetensors"))
    return report


def _train_dictionaries(cfg: BuildConfig, model: Any, data: lm.TokenData, bos: int, out: Path
                        ) -> dict[str, Any]:
    spec = sparse.DictionarySpec(d_dict=cfg.d_dict, k=cfg.k, tokens=cfg.dict_tokens,
                                 batch_tokens=cfg.dict_batch_tokens, lr=cfg.dict_lr, transcoder_lr=cfg.transcoder_lr,
                                 density_cap=cfg.density_cap, balance_rate=cfg.balance_rate,
                                 density_limit=cfg.density_limit)
    site_list = sparse.sites(cfg.n_layers)
    trainer = sparse.Trainer(model, site_list, spec, bos=bos, seed=cfg.seed + 1)
    curves = trainer.train(data.train)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    calib = data.train[torch.randperm(data.train.shape[0], generator=gen)[:cfg.calibration_rows]]
    trainer.calibrate(calib)
    for site in site_list:
        weights = trainer.folded(site)
        if site.kind == "sae":
            sparse.save_sae(weights, out / "saes" / SAE_SET / f"layer_{site.layer}", site.in_hook,
                            cfg.name, cfg.n_ctx)
        else:
            path = out / "transcoders" / TRANSCODER_SET / f"layer_{site.layer}.safetensors"
            sparse.save_transcoder(weights, path)
    return {"curves": curves, "scales": trainer.scales,
            "thresholds": {s.name: float(trainer.dicts[s.name].threshold) for s in site_list}}


def _load_dictionaries(pack: DemoPack, n_layers: int):
    from circuit_tracer.transcoder.single_layer_transcoder import load_relu_transcoder
    from sae_lens import SAE

    saes = {L: SAE.load_from_disk(pack.sae_dir(SAE_SET, L), device="cpu").eval() for L in range(n_layers)}
    paths = pack.transcoder_paths(TRANSCODER_SET)
    tcs = {L: load_relu_transcoder(str(paths[L]), L, device=torch.device("cpu"), dtype=torch.float32,
                                   lazy_encoder=False, lazy_decoder=False).eval() for L in range(n_layers)}
    return saes, tcs


def _evaluate(model: Any, saes: dict, tcs: dict, rows: torch.Tensor, bos: int) -> dict[str, Any]:
    sae_metrics = {L: evaluate.evaluate_sae(sae, model, rows, bos)
                   for L, sae in tqdm(saes.items(), desc="evaluating SAEs", leave=False)}
    return {"saes": sae_metrics, "transcoders": evaluate.evaluate_transcoders(tcs, model, rows, bos)}


def _explain(cfg: BuildConfig, model: Any, saes: dict, tcs: dict, data: lm.TokenData, tokenizer: Any,
             bos: int, out: Path) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    rows = data.train[torch.randperm(data.train.shape[0], generator=gen)[:cfg.explain_rows]]
    tokens = rows.flatten()
    token_counts = torch.bincount(tokens[tokens != bos], minlength=len(tokenizer))
    vocab_text = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    decode_one = autoexplain.Vocab(vocab_text)
    # Top logits are drawn from tokens seen in training that decode to whole characters.
    readable = (data.unigram_counts > 0) & torch.tensor(
        ["\ufffd" not in t and i != bos for i, t in enumerate(vocab_text)])
    hooks = [f"blocks.{L}.{h}" for L in range(cfg.n_layers) for h in ("hook_resid_post", "hook_resid_mid")]
    cache: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for start in range(0, rows.shape[0], 32):  # in batches: no logits, bounded memory
            _, part = model.run_with_cache(rows[start:start + 32], names_filter=hooks,
                                           stop_at_layer=cfg.n_layers)
            for h in hooks:
                cache.setdefault(h, []).append(part[h])
    cache = {h: torch.cat(parts) for h, parts in cache.items()}
    keep = (tokens != bos).nonzero().squeeze(1)  # BOS positions are never explained
    jobs = [(SAE_SET, L, saes[L].encode, saes[L].W_dec, f"blocks.{L}.hook_resid_post") for L in saes]
    jobs += [(TRANSCODER_SET, L, tcs[L].encode, tcs[L].W_dec, f"blocks.{L}.hook_resid_mid") for L in tcs]
    texts: dict[str, dict[str, dict[str, str]]] = {SAE_SET: {}, TRANSCODER_SET: {}}
    candidates, kinds, dense = [], {SAE_SET: {}, TRANSCODER_SET: {}}, {}
    density: dict[str, dict[int, list[float]]] = {SAE_SET: {}, TRANSCODER_SET: {}}
    for set_id, layer, encode, w_dec, hook in tqdm(jobs, desc="explaining features", unit="dictionary"):
        pos, feat, val = autoexplain.sparse_activations(encode, cache[hook].reshape(-1, cfg.d_model)[keep])
        pos = keep[pos]
        with torch.no_grad():
            promotes = autoexplain.promoted_tokens(model, w_dec.detach(), readable)
        evidence = autoexplain.gather_evidence(pos, feat, val, tokens, cfg.n_ctx, keep.numel(), cfg.d_dict,
                                               promotes, decode_one)
        texts[set_id][str(layer)] = {}
        density[set_id][layer] = [round(ev.density, 6) for ev in evidence]
        for ev in evidence:
            ex = autoexplain.explain(ev, tokens, cfg.n_ctx, decode_one, token_counts)
            texts[set_id][str(layer)][str(ev.index)] = ex.text
            kinds[set_id][ex.kind] = kinds[set_id].get(ex.kind, 0) + 1
            dense[set_id] = dense.get(set_id, 0) + (ev.density >= autoexplain.DENSE)
            if (ex.kind not in ("dead", "mixed") and ev.firings >= MIN_SHOWCASE_FIRINGS
                    and ev.density <= 0.05 and not ex.text.startswith(BROAD_CLASSES)):
                candidates.append((ex.score, set_id, layer, ev, ex))
    (out / "explanations").mkdir(exist_ok=True)
    for set_id, by_layer in texts.items():
        path = out / "explanations" / f"{set_id}.json"
        path.write_text(json.dumps(by_layer, indent=0, ensure_ascii=False))
    (out / "stats").mkdir(exist_ok=True)
    for set_id, by_layer in density.items():
        (out / "stats" / f"{set_id}.json").write_text(json.dumps(
            {"tokens": int(keep.numel()), "bos": BOS_HANDLING, "dense_above": autoexplain.DENSE,
             "density": {str(L): values for L, values in sorted(by_layer.items())}}))
    showcase = _showcase(candidates, tokens, cfg.n_ctx, decode_one, n=cfg.showcase)
    return {"kinds": kinds, "dense": dense, "showcase": showcase, "sample_tokens": int(keep.numel()),
            "density": density}


def _readability(model: Any, saes: dict, tcs: dict, docs: list[str], density: dict, bos: int
                 ) -> dict[str, Any]:
    sentences = evaluate.heldout_sentences(docs)
    encoders = {SAE_SET: {L: (sae.encode, f"blocks.{L}.hook_resid_post") for L, sae in saes.items()},
                TRANSCODER_SET: {L: (tc.encode, f"blocks.{L}.hook_resid_mid") for L, tc in tcs.items()}}
    return {"sentences": sentences, **evaluate.readability(model, encoders, sentences, density, bos)}


def _example(tokens: torch.Tensor, pos: int, value: float, n_ctx: int, decode_one) -> dict[str, Any]:
    """One top example: its text around the token, and the token ids of its row up to three tokens
    after it (`position` marks the token), which reproduce the activation exactly."""
    row_start = pos - pos % n_ctx
    end = min(row_start + n_ctx, pos + 4)
    return {"activation": round(value, 4), "text": autoexplain.context(tokens, pos, n_ctx, decode_one),
            "ids": tokens[row_start:end].tolist(), "position": pos - row_start}


def _showcase(candidates: list, tokens: torch.Tensor, n_ctx: int, decode_one, n: int = 10
              ) -> list[dict[str, Any]]:
    """`n` features that are easy to check by eye: not dense (≤ 5% of tokens) nor rare (≥ 40 firings
    in the sample), not a class most tokens belong to, explanations that
    describe their top examples and most of their firings (`Explanation.score`), varied kinds, at
    most n/5 per dictionary, at most 2n/5 plain single-token detectors."""
    candidates.sort(key=lambda c: (-c[0], c[1], c[2], c[3].index))
    picked, per_dict, per_kind, seen = [], {}, {}, set()
    for score, set_id, layer, ev, ex in candidates:
        base = ex.text.split(" → ")[0]
        if (base in seen or per_dict.get((set_id, layer), 0) >= max(2, n // 5)
                or (ex.kind == "token" and per_kind.get("token", 0) >= max(4, 2 * n // 5))):
            continue
        seen.add(base)
        per_dict[(set_id, layer)] = per_dict.get((set_id, layer), 0) + 1
        per_kind[ex.kind] = per_kind.get(ex.kind, 0) + 1
        picked.append({
            "set": set_id, "layer": layer, "index": ev.index, "explanation": ex.text, "kind": ex.kind,
            "precision": round(ex.precision, 3), "recall": None if ex.recall is None else round(ex.recall, 3),
            "coverage": round(ex.coverage, 3),
            "density": ev.density, "promotes": ev.promotes,
            "examples": [_example(tokens, p, v, n_ctx, decode_one) for v, p in ev.top[:5]],
        })
        if len(picked) == n:
            break
    return picked


def build(out_dir: Path, cfg: BuildConfig = FULL, corpus_path: Path | None = None, threads: int = 2) -> Path:
    """Build the pack into `out_dir` (replaced atomically once the build has finished).

    Two builds on the same CPU model with the same `threads` give byte-identical files (on another CPU
    model the float kernels differ: a full build on an Intel Xeon matched the AMD EPYC-built pack to
    3-4 decimals, not in bytes; see notes/README.md). With more than one thread some CPU
    kernels (the embedding's backward among them) accumulate in a varying order unless torch's
    deterministic algorithms are on, so they are for the build and restored afterwards."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _build(out_dir, cfg, corpus_path, threads)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _build(out_dir: Path, cfg: BuildConfig, corpus_path: Path | None, threads: int) -> Path:
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir).resolve()
    corpus_path = Path(corpus_path) if corpus_path is not None else out_dir / CORPUS_FILE
    if not corpus_path.exists():
        raise FileNotFoundError(f"No corpus at {corpus_path}. Regenerate it with "
                                "`python -m backend.demo corpus` (downloads Debian's python3.11-doc).")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-build-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the pack is read by whoever runs the app
    stages = _Stages(["corpus", "tokenizer", "tokenising", "model", "held-out loss and generations",
                      "SAEs and transcoders", "evaluation", "explanations", "readability", "card"])
    try:
        docs = stages.run("corpus", corpus.read_corpus, corpus_path)
        if cfg.max_docs is not None:
            docs = docs[:cfg.max_docs]
        corpus_sha = corpus.write_corpus(docs, tmp / CORPUS_FILE)
        tokenizer = stages.run("tokenizer", _train_tokenizer, docs, cfg, tmp)
        bos = tokenizer.convert_tokens_to_ids(SPECIAL)
        data = stages.run("tokenising", lm.tokenize, docs, tokenizer, cfg.n_ctx, bos, len(tokenizer))
        report = stages.run("model", _train_model, cfg, tokenizer, data, tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest(cfg, corpus_sha), indent=1))
        pack = DemoPack(tmp)
        from backend.local.loading import load_demo_model

        model = load_demo_model(pack, "cpu", "float32")  # exactly as the app loads it
        eval_rows = data.heldout[:cfg.eval_rows]

        def lm_report():
            return {"heldout_loss": lm.heldout_loss(model, data.heldout),
                    "unigram_loss": lm.unigram_loss(data.unigram_counts, data.heldout),
                    "generations": lm.sample_generations(model, cfg.seed, cfg.gen_tokens)}

        quality = stages.run("held-out loss and generations", lm_report)
        dict_info = stages.run("SAEs and transcoders", _train_dictionaries, cfg, model, data, bos, tmp)
        saes, tcs = _load_dictionaries(pack, cfg.n_layers)
        scores = stages.run("evaluation", _evaluate, model, saes, tcs, eval_rows, bos)
        explained = stages.run("explanations", _explain, cfg, model, saes, tcs, data, tokenizer, bos, tmp)
        readable = stages.run("readability", _readability, model, saes, tcs, docs, explained["density"], bos)
        metrics = {
            "config": asdict(cfg),
            "corpus": {"file": CORPUS_FILE, "sha256": corpus_sha, "documents": len(docs),
                       "characters": sum(len(d) for d in docs), **data.describe(), "source": corpus.SOURCE},
            "model": {"n_params": sum(p.numel() for p in model.parameters()), "d_vocab": len(tokenizer),
                      "train": {k: v for k, v in asdict(report).items() if k != "curve"},
                      "curve": report.curve, **{k: v for k, v in quality.items() if k != "generations"}},
            "generations": quality["generations"],
            "dictionaries": {"thresholds": dict_info["thresholds"], "scales": dict_info["scales"],
                             "final_train_fvu": {k: v[-1][1] for k, v in dict_info["curves"].items()}},
            "saes": {str(k): v for k, v in scores["saes"].items()},
            "transcoders": {"per_layer": {str(k): v for k, v in scores["transcoders"]["per_layer"].items()},
                            "all_layers": scores["transcoders"]["all_layers"]},
            "explanations": {k: explained[k] for k in ("kinds", "dense", "sample_tokens")},
            "showcase": explained["showcase"],
            "readability": readable,
            "build": {"threads": threads, "torch": torch.__version__, "python": platform.python_version(),
                      "machine": platform.machine(), "stages_s": stages.times},
        }

        def write_card():
            metrics["build"]["wall_s"] = round(time.perf_counter() - stages.t0, 1)
            write_report(tmp, metrics)

        stages.run("card", write_card)
        total = stages.close()
        _say(f"demo pack built in {total:.0f} s: {out_dir}")
        old = out_dir.with_name(f".{out_dir.name}-old")
        if old.exists():
            shutil.rmtree(old)
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def write_report(out: Path, metrics: dict[str, Any]) -> None:
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, ensure_ascii=False))
    (out / "CARD.md").write_text(card.render_card(metrics))
    (out / "SOURCES.md").write_text(card.render_sources(metrics))


def reexplain(out_dir: Path, threads: int = 2) -> None:
    """Regenerate a built pack's explanations, showcase and card from its saved files (no training;
    the same seeds and rows as the build, so unchanged heuristics give unchanged explanations)."""
    from transformers import AutoTokenizer

    from backend.local.loading import load_demo_model

    torch.set_num_threads(threads)
    pack = DemoPack(Path(out_dir))
    metrics = json.loads((pack.root / "metrics.json").read_text())
    cfg = BuildConfig(**metrics["config"])
    tokenizer = AutoTokenizer.from_pretrained(str(pack.tokenizer_dir()))
    bos = tokenizer.convert_tokens_to_ids(SPECIAL)
    data = lm.tokenize(corpus.read_corpus(pack.corpus_path()), tokenizer, cfg.n_ctx, bos, len(tokenizer))
    model = load_demo_model(pack, "cpu", "float32")
    saes, tcs = _load_dictionaries(pack, cfg.n_layers)
    explained = _explain(cfg, model, saes, tcs, data, tokenizer, bos, pack.root)
    metrics["explanations"] = {k: explained[k] for k in ("kinds", "dense", "sample_tokens")}
    metrics["showcase"] = explained["showcase"]
    metrics["readability"] = _readability(model, saes, tcs, corpus.read_corpus(pack.corpus_path()),
                                          explained["density"], bos)
    write_report(pack.root, metrics)


def smoke_config(**overrides: Any) -> BuildConfig:
    return replace(SMOKE, **overrides)
