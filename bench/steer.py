"""Generation speed steered vs unsteered, measured side by side on the same model.

Both runs use the playground's own generation loop (`backend.local.generation.generate`, KV
cache, greedy); the steered one adds a delta to one SAE feature on every prompt position and every
generated token (the costliest case: one SAE encode per step). Goal: steered >= 0.8x unsteered.

    python bench/steer.py                 # the demo model (offline), on this machine's device
    python bench/steer.py --gpt2-shape    # GPT-2 small shapes, random weights, a 24,576-wide SAE

Last line: `steered_over_unsteered_tokens_per_s: <ratio>`.
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


def demo_setup(layer: int | None):
    from backend.local import LocalBackend

    be = LocalBackend()
    loaded = be.load("demo")
    entry = be.model_entry("demo")
    sae_set = entry.sae_set("res")
    layer = sae_set.layers[-1] if layer is None else layer
    (d,) = be.models.dictionaries(loaded, sae_set, [layer])
    return loaded.model, d, f"demo ({loaded.label or 'trained pack'})"


def gpt2_shape_setup(device: str):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    from backend.local.dictionaries import SaeLensDictionary

    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LN", device=device)
    model = HookedTransformer(cfg).eval()
    # Generation with a KV cache needs a tokenizer (TransformerLens builds the attention mask from its pad
    # token); the demo pack's serves, the token ids being random anyway.
    from backend.local import LocalBackend

    model.tokenizer = AutoTokenizer.from_pretrained(str(LocalBackend().pack().tokenizer_dir()))
    hook = "blocks.6.hook_resid_pre"
    sae = StandardSAE(StandardSAEConfig(d_in=768, d_sae=24576, device=device,
                                        metadata=SAEMetadata(hook_name=hook))).eval()
    return model, SaeLensDictionary(sae=sae, hook_name=hook, layer=6), "GPT-2 small shape, random weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpt2-shape", action="store_true")
    args = parser.parse_args()
    import torch

    from backend.compute import resolve_device
    from backend.local.generation import generate
    from backend.local.interventions import Edit, SteeringHooks

    device = resolve_device("auto")
    model, d, name = gpt2_shape_setup(device) if args.gpt2_shape else demo_setup(None)
    vocab = model.cfg.d_vocab
    prompt = torch.randint(1, vocab, (1, args.prompt_tokens), device=model.cfg.device,
                           generator=torch.Generator(device=model.cfg.device).manual_seed(0))
    edit = Edit(d, 3, "delta", amount=8.0, prompt_mask=torch.ones(args.prompt_tokens, dtype=torch.bool,
                                                                   device=model.cfg.device), generated=True)
    hooks = SteeringHooks([edit])
    kwargs = dict(n_tokens=args.new_tokens, temperature=0.0, freq_penalty=0.0, seed=0, top_k=5, stop_at_eos=False)

    def unsteered():
        return generate(model, prompt, **kwargs)

    def steered():
        return generate(model, prompt, prompt_hooks=hooks.prompt_hooks(), step_hooks=hooks.step_hooks(), **kwargs)

    def seconds(fn) -> float:
        return timed(fn, device)[0]

    unsteered(), steered()  # warm up
    t_plain, t_steer = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        t_plain.append(seconds(unsteered))
        t_steer.append(seconds(steered))
    plain = args.new_tokens / statistics.median(t_plain)
    steer = args.new_tokens / statistics.median(t_steer)
    print(f"model: {name}; device: {device}; threads: {torch.get_num_threads()}; prompt {args.prompt_tokens} "
          f"tokens, {args.new_tokens} generated; steering {d.hook_name} ({d.d_sae} features) on every token")
    print(f"unsteered_tokens_per_s: {plain:.1f}")
    print(f"steered_tokens_per_s: {steer:.1f}")
    print(f"steered_over_unsteered_tokens_per_s: {steer / plain:.2f}")


if __name__ == "__main__":
    main()
