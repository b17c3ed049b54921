"""Generation speed steered vs unsteered, measured side by side on the same model.

Both runs use the playground's own generation loop (`backend.local.generation.generate`, KV
cache, greedy); the steered one adds a delta to one SAE feature on every prompt position and every
generated token (the costliest case: one SAE encode per step). Goal: steered >= 0.8x unsteered.

    python bench/steer.py                 # the demo model (offline), on this machine's device
    python bench/steer.py --shape gpt2    # GPT-2 small shapes, random weights, a 24,576-wide SAE
    python bench/steer.py --shape gemma   # Gemma-2-2B shapes (bf16 on a GPU), a 16,384-wide JumpReLU SAE

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


def shape_setup(shape: str, device: str, gemma_layers: int = 26, vocab: int = 256000):
    """A random-weight model at real shapes with one calibrated SAE at about half depth."""
    from transformers import AutoTokenizer

    from backend.local import LocalBackend
    from bench import shapes

    if shape == "gpt2":
        s = shapes.gpt2_shape(device, layers=[6])
    else:
        s = shapes.gemma_shape(device, layers=[gemma_layers // 2], n_layers=gemma_layers, vocab=vocab)
    # Generation with a KV cache needs a tokenizer (TransformerLens builds the attention mask from its pad
    # token); the demo pack's serves, the token ids being random anyway.
    s.model.tokenizer = AutoTokenizer.from_pretrained(str(LocalBackend().pack().tokenizer_dir()))
    sample = shapes.random_tokens(1, 128, s.model.cfg.d_vocab, device, seed=2)
    l0 = shapes.measured_l0(s.dicts, shapes.activations(s.model, [s.dicts[0].hook_name], sample))
    print(f"measured_l0: {l0:.1f}")
    return s.model, s.dicts[0], f"{s.name}, random weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shape", choices=["demo", "gpt2", "gemma"], default="demo")
    parser.add_argument("--gpt2-shape", action="store_true", help="the same as --shape gpt2")
    parser.add_argument("--gemma-layers", type=int, default=26, help="with --shape gemma (fewer: a smoke test)")
    parser.add_argument("--vocab", type=int, default=256000, help="with --shape gemma (smaller: a smoke test)")
    args = parser.parse_args()
    import torch

    from backend.compute import resolve_device
    from backend.local.generation import generate
    from backend.local.interventions import Edit, SteeringHooks

    device = resolve_device("auto")
    shape = "gpt2" if args.gpt2_shape else args.shape
    model, d, name = demo_setup(None) if shape == "demo" else shape_setup(shape, device, args.gemma_layers, args.vocab)
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
