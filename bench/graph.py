"""Our whole graph request vs circuit-tracer's `attribute` alone, measured side by side.

For a 64-token prompt at the graph server's defaults (max_feature_nodes 5000, batch_size 48,
node_threshold 0.8, edge_threshold 0.85): the time of circuit-tracer's `attribute` on the loaded
ReplacementModel, and of `Backend.attribute` (limits, estimate, attribution with progress,
`prune_graph`, graph JSON, caching; the result cache is emptied before each run so nothing is
served from it). Runs alternate and the best of each is compared (the median and CPU time are
printed too, for a shared machine). Goal: our overhead <= 10%.
Also the size of the graph JSON, plain and gzipped.

    python bench/graph.py                  # the demo pack (tiny fallback until the trained one lands)
    python bench/graph.py --gemma-shape    # Gemma-2-2B shapes, random weights and transcoders (GPU)
    python bench/graph.py --gemma-shape --layers 2 --width 512 --vocab 4096 --tokens 16 \
        --max-feature-nodes 100     # a small smoke test of that path, on a CPU

Last line: `graph_request_over_attribute: <ratio>`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(tempfile.mkdtemp(prefix="featurescope-bench-graph-"))
os.environ["FEATURESCOPE_DATA_DIR"] = str(DATA)  # a fresh cache: nothing from earlier runs

from bench.timing import timed  # noqa: E402


def gemma_shape_catalog(layers: int, width: int, vocab: int) -> Path:
    """A catalog entry with Gemma-2-2B's published shapes (bench only)."""
    path = DATA / "bench-catalog.yaml"
    per_layer = (2_614_341_888 - 256000 * 2304) / 26
    n_params = int(per_layer * layers + vocab * 2304)
    path.write_text(
        "models:\n  gemma-shape:\n    display_name: Gemma-2-2B shape, random weights\n"
        "    source: transformer_lens\n    tl_name: gemma-shape-random\n"
        f"    n_params: {n_params}\n    n_layers: {layers}\n    d_model: 2304\n    n_heads: 8\n"
        f"    n_kv_heads: 4\n    d_head: 256\n    d_mlp: 9216\n    d_vocab: {vocab}\n    n_ctx: 8192\n"
        "    dtype: bfloat16\n    transcoder_sets:\n      random:\n        display_name: Random transcoders\n"
        f"        circuit_tracer: random\n        kind: per_layer\n        d_transcoder: {width}\n")
    return path


def gemma_shape_model(layers: int, width: int, vocab: int, device: str, tokenizer, l0: int):
    import torch
    from circuit_tracer import ReplacementModel
    from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet
    from transformer_lens import HookedTransformerConfig

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = HookedTransformerConfig(n_layers=layers, d_model=2304, n_heads=8, n_key_value_heads=4, d_head=256,
                                  d_mlp=9216, d_vocab=vocab, n_ctx=2048, act_fn="gelu_pytorch_tanh",
                                  normalization_type="RMS", positional_embedding_type="rotary",
                                  gated_mlp=True, device=device, dtype=dtype, model_name="gemma-shape")
    gen = torch.Generator().manual_seed(0)
    tcs = {}
    for layer in range(layers):
        t = SingleLayerTranscoder(2304, width, torch.nn.functional.relu, layer)
        with torch.no_grad():
            t.W_enc.copy_(torch.randn(width, 2304, generator=gen) / 2304**0.5)
            t.W_dec.copy_(torch.randn(width, 2304, generator=gen) / width**0.5)
            t.b_enc.copy_(torch.randn(width, generator=gen) * 0.1)  # shifted by `calibrate`
            t.b_dec.zero_()
        tcs[layer] = t
    transcoders = TranscoderSet(tcs, feature_input_hook="hook_resid_mid", feature_output_hook="hook_mlp_out",
                                scan="random")
    try:  # built on the device directly: a 2B model built on the CPU first takes longer than its graphs
        with torch.device(device):
            model = ReplacementModel.from_config(cfg, transcoders, tokenizer=tokenizer).eval()
    except (RuntimeError, TypeError):
        model = ReplacementModel.from_config(cfg, transcoders, tokenizer=tokenizer).eval()
    return model, calibrate(model, tcs, vocab, device, l0)


def calibrate(model, tcs: dict, vocab: int, device: str, l0: int) -> float:
    """Shift each random transcoder's encoder bias so that about `l0` features fire per token (a random
    one fires on half of them, which no trained transcoder does); return the measured L0."""
    import torch

    from bench.shapes import level_for, random_tokens

    hooks = [f"blocks.{layer}.hook_resid_mid" for layer in tcs]
    sample = random_tokens(2, 64, vocab, device, seed=1)
    with torch.inference_mode():
        _, cache = model.run_with_cache(sample, names_filter=hooks)
        fired = []
        for layer, t in tcs.items():
            x = cache[f"blocks.{layer}.hook_resid_mid"].reshape(-1, t.W_enc.shape[1])
            pre = torch.nn.functional.linear(x.to(t.W_enc.dtype), t.W_enc, t.b_enc)
            t.b_enc.sub_(level_for(pre, l0))
            fired.append(float((t.encode(x) > 0).sum(-1).float().mean()))
    return sum(fired) / len(fired)


def prompt_of(tokenizer, n_tokens: int) -> str:
    """Text of exactly `n_tokens` tokens with the BOS token circuit-tracer prepends."""
    words = (Path(__file__).read_text() * 8).split()
    ids = tokenizer(" ".join(words), add_special_tokens=False).input_ids
    for cut in range(n_tokens - 1, 0, -1):  # decoding and re-encoding must give the same length
        text = tokenizer.decode(ids[:cut])
        if len(tokenizer(text, add_special_tokens=False).input_ids) == n_tokens - 1:
            return text
    raise SystemExit("could not build a prompt of that length")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--max-feature-nodes", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one warm-up run (ours) instead of two")
    parser.add_argument("--gemma-shape", action="store_true")
    parser.add_argument("--layers", type=int, default=26, help="with --gemma-shape")
    parser.add_argument("--width", type=int, default=16384, help="transcoder width, with --gemma-shape")
    parser.add_argument("--vocab", type=int, default=256000, help="vocabulary, with --gemma-shape")
    parser.add_argument("--l0", type=int, default=96, help="features firing per token, with --gemma-shape")
    args = parser.parse_args()
    import torch
    from circuit_tracer import attribute

    from backend.graphfile import graph_bytes
    from backend.local import LocalBackend
    from backend.local.graph_models import prompt_ids, replacement_key
    from backend.schemas import GraphRequest
    from backend.settings import Settings

    if args.gemma_shape:
        be = LocalBackend(Settings(catalog_path=gemma_shape_catalog(args.layers, args.width, args.vocab)))
        entry = be.model_entry("gemma-shape")
        tc = entry.transcoder_set("random")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(be.pack().tokenizer_dir()))
        model, l0 = gemma_shape_model(args.layers, args.width, args.vocab, be.device, tokenizer, args.l0)
        loaded = be.models.get(entry, be.dtype_for(entry), key=replacement_key(entry, tc),
                               loader=lambda: model, estimate_bytes=0)
        name = (f"Gemma-2-2B shape ({args.layers} layers, {args.width:,} features/layer), random weights, "
                f"transcoders calibrated to measured L0 {l0:.0f}")
    else:
        be = LocalBackend()
        entry = be.model_entry("demo")
        tc = entry.transcoder_set("demo")
        loaded = be.graphs.replacement_model(entry, tc)
        name = f"demo ({be.pack().label or 'trained pack'})"
    text = prompt_of(loaded.model.tokenizer, args.tokens)
    ids = prompt_ids(loaded.model.tokenizer, text)
    req = GraphRequest(prompt=text, model=entry.id, transcoder_set=tc.id, batch_size=args.batch_size,
                       max_feature_nodes=args.max_feature_nodes)
    tokens = torch.tensor(ids, device=loaded.model.cfg.device)

    def alone() -> None:
        with loaded.use(600) as model:
            attribute(tokens, model, max_n_logits=req.max_n_logits, desired_logit_prob=req.desired_logit_prob,
                      batch_size=req.batch_size, max_feature_nodes=req.max_feature_nodes)

    results = []

    def ours() -> None:
        results.append(be.attribute(req))

    def fresh_cache() -> None:
        """Wait for the background cache write, then empty the cache (untimed): never served from it."""
        be.graphs.cache.flush()
        shutil.rmtree(be.graphs.cache.root, ignore_errors=True)

    def seconds(fn) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process)."""
        return timed(fn, be.device)

    import resource

    if not args.quick:
        alone()  # warm up both paths (with --quick, `ours` warms the kernels both share)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is in KiB)
    ours()
    peak_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - rss0
    fresh_cache()
    t_alone, t_ours = [], []
    for _ in range(args.repeats):  # alternate, so a busy spell on a shared machine hits both
        t_alone.append(seconds(alone))
        t_ours.append(seconds(ours))
        fresh_cache()
    # best of the runs: the least disturbed (as timeit does); medians printed too
    a, o = min(w for w, _ in t_alone), min(w for w, _ in t_ours)
    a_cpu, o_cpu = min(c for _, c in t_alone), min(c for _, c in t_ours)
    last = results[-1]
    plain, gz = graph_bytes(last.graph), graph_bytes(last.graph, compress=True)
    timings = last.timings_ms
    print(f"model: {name}; device: {be.device}; threads: {torch.get_num_threads()}; tokens: {len(ids)}; "
          f"max_feature_nodes: {req.max_feature_nodes}; batch_size: {req.batch_size}")
    print(f"active features: {last.n_active_features:,}; attributed: {last.n_feature_nodes:,}; pruned graph: "
          f"{last.n_nodes:,} nodes, {last.n_edges:,} edges")
    for label, runs, best in (("attribute alone", t_alone, a), ("whole request  ", t_ours, o)):
        walls = ", ".join(f"{w * 1000:.0f}" for w, _ in runs)
        median = statistics.median(w for w, _ in runs)
        print(f"{label}: best {best * 1000:.0f} ms, median {median * 1000:.0f} ms (runs {walls}); "
              f"CPU {min(c for _, c in runs) * 1000:.0f} ms")
    prune, json_ms = timings.get("prune", 0.0), timings.get("json", 0.0)
    print(f"  of which prune_graph {prune:.0f} ms and graph JSON {json_ms:.0f} ms; the rest of our code "
          f"{(o - a) * 1000 - prune - json_ms:+.0f} ms")
    print(f"CPU-time ratio: {o_cpu / a_cpu:.3f}; without prune_graph: {(o - prune / 1000) / a:.3f}")
    est = last.estimate
    print(f"estimate before running: {est.seconds:.1f} s ({est.seconds_basis}); memory "
          f"{est.device_gb:.3f} GB on {est.device} + {est.host_gb:.3f} GB host (peak RSS grew by "
          f"{max(peak_growth, 0):.3f} GB "
          "during the first request, beyond attribute alone)")
    print(f"graph JSON: {len(plain) / 1e6:.3f} MB plain, {len(gz) / 1e6:.3f} MB gzipped")
    print(f"graph_json_bytes: {len(plain)}")
    if args.gemma_shape:
        print(f"measured_l0: {l0:.1f}")
    print(f"attribute_alone_ms: {a * 1000:.0f}")
    print(f"whole_request_ms: {o * 1000:.0f}")
    print(f"graph_request_over_attribute: {o / a:.3f}")
    shutil.rmtree(DATA, ignore_errors=True)


if __name__ == "__main__":
    main()
