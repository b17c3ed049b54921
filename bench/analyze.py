"""Analysis cost vs its floor and vs the bare forward pass, measured side by side.

For a 512-token text at every SAE layer: the time of `model(tokens)` (logits, no hooks), of the
floor (the forward pass up to the deepest hooked layer, no hooks, plus every dictionary's encode
of activations captured beforehand), and of the whole highlighter analysis (one forward with every
SAE hooked in, top-k on the device, results as plain data). Goal: analysis <= 1.15x the floor.

    python bench/analyze.py                   # the demo model (offline), on this machine's device
    python bench/analyze.py --shape gpt2      # GPT-2 small shapes, random weights, 12 x 24,576 SAEs
    python bench/analyze.py --shape gemma     # Gemma-2-2B shapes (bf16 on a GPU), 26 x 16,384 JumpReLU

The random dictionaries are calibrated to fire on about 96 features per token (bench/shapes.py);
the measured L0 is printed. Last line: `analysis_over_floor: <ratio>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.timing import timed  # noqa: E402


def median_seconds(fn, repeats: int, device: str) -> float:
    return statistics.median(timed(fn, device)[0] for _ in range(repeats))


def demo_case(n_tokens: int):
    """(model, dictionaries, tokens, full analysis, name) on the demo model through LocalBackend."""
    from backend.local import LocalBackend
    from backend.schemas import AnalyzeRequest

    be = LocalBackend()
    loaded = be.load("demo")
    n_tokens = min(n_tokens, loaded.model.cfg.n_ctx)  # one pass: no longer than the model's context
    tok = loaded.model.tokenizer
    words = (Path(__file__).read_text() * 20).split()
    text, n = "", 0
    while n < n_tokens - 1:
        text = " ".join(words[: len(text.split()) + 50])
        n = len(tok(text)["input_ids"])
    ids = tok(text)["input_ids"][: n_tokens - 1]
    text = tok.decode(ids)
    req = AnalyzeRequest(model="demo", sae_set="res", text=text, k=10, include_explanations=False)
    be.analyze(req)  # load SAEs, warm up
    entry = be.model_entry("demo")
    sae_set = entry.sae_set("res")
    dicts = be.models.dictionaries(loaded, sae_set, list(sae_set.layers))
    tokens = loaded.model.to_tokens(text)
    return loaded.model, dicts, tokens, lambda: be.analyze(req), f"demo ({loaded.label or 'trained pack'})"


def shape_case(shape: str, n_tokens: int, device: str, gemma_layers: int = 26, vocab: int = 256000):
    """The same for a random-weight model at real shapes, through the analysis functions the backend
    calls (`run_dictionaries`, then `to_results`)."""
    from backend.local import analysis
    from bench import shapes

    s = shapes.gpt2_shape(device) if shape == "gpt2" else shapes.gemma_shape(device, n_layers=gemma_layers,
                                                                                 vocab=vocab)
    tokens = shapes.random_tokens(1, n_tokens, s.model.cfg.d_vocab, device, seed=2)
    tok = analysis.Tokenized(ids=tokens, n_tokens=n_tokens, tokens=[], window=None)

    def full():
        captured = analysis.run_dictionaries(s.model, s.dicts, tok, 10, {})
        analysis.to_results(captured, s.dicts, {}, {}, {})

    full()
    return s.model, s.dicts, tokens, full, f"{s.name}, random weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shape", choices=["demo", "gpt2", "gemma"], default="demo")
    parser.add_argument("--gpt2-shape", action="store_true", help="the same as --shape gpt2")
    parser.add_argument("--gemma-layers", type=int, default=26, help="with --shape gemma (fewer: a smoke test)")
    parser.add_argument("--vocab", type=int, default=256000, help="with --shape gemma (smaller: a smoke test)")
    args = parser.parse_args()
    import torch

    from backend.compute import resolve_device
    from backend.local.analysis import stop_layer
    from bench import shapes

    device = resolve_device("auto")
    shape = "gpt2" if args.gpt2_shape else args.shape
    if shape == "demo":
        model, dicts, tokens, full, name = demo_case(args.tokens)
    else:
        model, dicts, tokens, full, name = shape_case(shape, args.tokens, device, args.gemma_layers, args.vocab)
    hooks = [d.hook_name for d in dicts]
    stop = stop_layer(hooks)
    acts = shapes.activations(model, hooks, tokens)

    def bare():
        with torch.inference_mode():
            model(tokens)

    def forward_to_last():
        with torch.inference_mode():
            model(tokens, return_type=None, stop_at_layer=stop)

    def encodes():
        with torch.inference_mode():
            for d in dicts:
                d.encode(acts[d.hook_name])

    bare(), forward_to_last(), encodes()  # warm up
    t_bare, t_fwd, t_enc, t_full = [], [], [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all alike
        t_bare.append(timed(bare, device)[0])
        t_fwd.append(timed(forward_to_last, device)[0])
        t_enc.append(timed(encodes, device)[0])
        t_full.append(timed(full, device)[0])
    # Ratios from the best run of each (the least disturbed, as timeit does: on a shared machine the
    # medians drift with the neighbours' load); the medians are printed too.
    med = statistics.median
    floor = min(t_fwd) + min(t_enc)
    l0 = shapes.measured_l0(dicts, acts)
    print(f"model: {name}; device: {device}; threads: {torch.get_num_threads()}; tokens: {tokens.shape[-1]}; "
          f"{len(dicts)} dictionaries, layers run: {stop}")
    print(f"measured_l0: {l0:.1f}  (features firing per token, mean over the dictionaries)")
    print(f"median_ms: bare forward {med(t_bare) * 1000:.1f}, forward to the last hooked layer "
          f"{med(t_fwd) * 1000:.1f}, encodes {med(t_enc) * 1000:.1f}, analysis {med(t_full) * 1000:.1f}")
    print(f"bare_forward_ms: {min(t_bare) * 1000:.1f}")
    print(f"forward_to_last_hooked_layer_ms: {min(t_fwd) * 1000:.1f}")
    print(f"encodes_alone_ms: {min(t_enc) * 1000:.1f}")
    print(f"floor_ms: {floor * 1000:.1f}")
    print(f"full_analysis_ms: {min(t_full) * 1000:.1f}")
    print(f"analysis_over_forward: {min(t_full) / min(t_bare):.2f}")
    print(f"analysis_over_floor: {min(t_full) / floor:.2f}")


if __name__ == "__main__":
    main()
