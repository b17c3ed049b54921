"""Analysis cost vs the bare forward pass, measured side by side.

For a 512-token text at every SAE layer: the time of `model(tokens)` (logits, no hooks) and of the
whole highlighter analysis (one forward with every SAE hooked in, top-k on the device, results as
plain data). Goal: analysis <= 1.3x the bare forward on the same device.

    python bench/analyze.py                 # the demo model (offline), on this machine's device
    python bench/analyze.py --gpt2-shape    # GPT-2 small shapes, random weights, 12 x 24,576-wide SAEs

Last line: `analysis_over_forward: <ratio>`.
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


def demo_pair(n_tokens: int):
    """(bare forward, full analysis) callables on the demo model through LocalBackend."""
    import torch

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
    tokens = loaded.model.to_tokens(text)

    def bare():
        with torch.inference_mode():
            loaded.model(tokens)

    return bare, lambda: be.analyze(req), be.device, tokens.shape[1], f"demo ({loaded.label or 'trained pack'})"


def gpt2_shape_pair(n_tokens: int, device: str):
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from backend.local import analysis
    from backend.local.dictionaries import SaeLensDictionary

    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LN", device=device)
    model = HookedTransformer(cfg).eval()
    dicts = []
    for layer in range(12):
        hook = f"blocks.{layer}.hook_resid_pre"
        sae = StandardSAE(StandardSAEConfig(d_in=768, d_sae=24576, device=device,
                                            metadata=SAEMetadata(hook_name=hook))).eval()
        dicts.append(SaeLensDictionary(sae=sae, hook_name=hook, layer=layer))
    tokens = torch.randint(0, 50257, (1, n_tokens), device=device)
    tok = analysis.Tokenized(ids=tokens, n_tokens=n_tokens, tokens=[], window=None)

    def bare():
        with torch.inference_mode():
            model(tokens)

    def full():
        captured = analysis.run_dictionaries(model, dicts, tok, 10, {})
        analysis.to_results(captured, dicts, {}, {}, {})

    full()
    return bare, full, device, n_tokens, "GPT-2 small shape, random weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--gpt2-shape", action="store_true")
    args = parser.parse_args()
    import torch

    from backend.compute import resolve_device

    device = resolve_device("auto")
    if args.gpt2_shape:
        bare, full, device, n, name = gpt2_shape_pair(args.tokens, device)
    else:
        bare, full, device, n, name = demo_pair(args.tokens)
    bare()
    t_bare = median_seconds(bare, args.repeats, device)
    t_full = median_seconds(full, args.repeats, device)
    print(f"model: {name}; device: {device}; threads: {torch.get_num_threads()}; tokens: {n}")
    print(f"bare_forward_ms: {t_bare * 1000:.1f}")
    print(f"full_analysis_ms: {t_full * 1000:.1f}")
    print(f"analysis_over_forward: {t_full / t_bare:.2f}")


if __name__ == "__main__":
    main()
