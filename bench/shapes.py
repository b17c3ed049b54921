"""Random-weight models and dictionaries at real shapes, for the benchmarks.

GPT-2 small (12 layers, d_model 768, 24,576-wide SAEs, as res-jb) and Gemma-2-2B (26 layers,
d_model 2304, bfloat16 on a GPU, 16,384-wide JumpReLU SAEs, as Gemma Scope). Random weights are
enough to time the work, but a random dictionary fires on about half its features, where a
trained one fires on about a hundred per token: `calibrate` sets each dictionary's threshold (or
encoder bias) from a sample of the model's own activations so that about `l0` features fire per
token, and `measured_l0` reports what they really do on the benchmark's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

GPT2 = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024,
            act_fn="gelu_new", normalization_type="LN")
GPT2_SAE_WIDTH = 24576
GEMMA_SAE_WIDTH = 16384
GEMMA_VOCAB = 256000
DEFAULT_L0 = 96  # the middle of the 64-128 that trained dictionaries fire on


def gemma_config(n_layers: int = 26, vocab: int = GEMMA_VOCAB) -> dict:
    return dict(n_layers=n_layers, d_model=2304, n_heads=8, n_key_value_heads=4, d_head=256, d_mlp=9216,
                d_vocab=vocab, n_ctx=2048, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
                positional_embedding_type="rotary", gated_mlp=True, model_name="gemma-shape")


@dataclass
class Shape:
    name: str
    model: object  # HookedTransformer
    dicts: list  # FeatureDictionary per hooked layer
    l0_target: int


def build_model(cfg: dict, device: str, dtype):
    """A HookedTransformer with random weights, built directly on `device` (a 2B model on the CPU first
    would take longer than the benchmark)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    config = HookedTransformerConfig(**cfg, device=device, dtype=dtype, seed=0)
    try:
        with torch.device(device):
            return HookedTransformer(config).eval()
    except (RuntimeError, TypeError):  # a TransformerLens that builds on the CPU regardless
        return HookedTransformer(config).eval()


def random_tokens(n_rows: int, n_tokens: int, vocab: int, device: str, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n_rows, n_tokens), generator=gen).to(device)


def activations(model, hooks: list[str], tokens) -> dict:
    """hook -> [n_tokens, d_model] activations of `tokens` (no logits computed)."""
    import torch

    from backend.local.analysis import stop_layer

    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=hooks, stop_at_layer=stop_layer(hooks),
                                        return_type=None)
    return {h: cache[h].reshape(-1, cache[h].shape[-1]) for h in hooks}


def level_for(pre, l0: int) -> float:
    """The value that about `l0` of each token's pre-activations exceed (one level for all features)."""
    flat = pre.float().flatten()
    k = flat.numel() - l0 * pre.shape[0]
    return float(flat.kthvalue(max(k, 1)).values)


def standard_saes(model, layers: list[int], width: int, sample, l0: int, hook: str = "hook_resid_pre") -> list:
    """SAELens StandardSAEs (ReLU), encoder bias shifted so that about `l0` features fire per token."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from backend.local.dictionaries import SaeLensDictionary

    device, d_model = model.cfg.device, model.cfg.d_model
    hooks = [f"blocks.{layer}.{hook}" for layer in layers]
    acts = activations(model, hooks, sample)
    out = []
    for layer, name in zip(layers, hooks):
        torch.manual_seed(layer)
        sae = StandardSAE(StandardSAEConfig(d_in=d_model, d_sae=width, device=str(device),
                                            metadata=SAEMetadata(hook_name=name))).eval()
        with torch.inference_mode():
            x = acts[name].to(sae.W_enc.dtype)
            pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
            sae.b_enc.sub_(level_for(pre, l0))
        out.append(SaeLensDictionary(sae=sae, hook_name=name, layer=layer))
    return out


def jumprelu_saes(model, layers: list[int], width: int, sample, l0: int, hook: str = "hook_resid_post") -> list:
    """SAELens JumpReLU SAEs (float32, as Gemma Scope loads), one threshold for every feature chosen so
    that about `l0` features fire per token."""
    import torch
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from backend.local.dictionaries import SaeLensDictionary

    device, d_model = model.cfg.device, model.cfg.d_model
    hooks = [f"blocks.{layer}.{hook}" for layer in layers]
    acts = activations(model, hooks, sample)
    out = []
    for layer, name in zip(layers, hooks):
        torch.manual_seed(layer)
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_model, d_sae=width, device=str(device),
                                            metadata=SAEMetadata(hook_name=name))).eval()
        with torch.inference_mode():
            sae.W_enc.copy_(torch.randn_like(sae.W_enc) / d_model**0.5)
            sae.W_dec.copy_(sae.W_enc.T.contiguous())
            x = acts[name].to(sae.W_enc.dtype)
            pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
            sae.threshold.fill_(level_for(pre, l0))
        out.append(SaeLensDictionary(sae=sae, hook_name=name, layer=layer))
    return out


def measured_l0(dicts: list, acts: dict) -> float:
    """Mean number of features firing per token over every dictionary, on the activations given."""
    import torch

    with torch.inference_mode():
        per = [float((d.encode(acts[d.hook_name]) > 0).sum(-1).float().mean()) for d in dicts]
    return sum(per) / len(per)


def gpt2_shape(device: str, *, layers: list[int] | None = None, l0: int = DEFAULT_L0) -> Shape:
    import torch

    model = build_model(GPT2, device, torch.float32)
    layers = list(range(12)) if layers is None else layers
    sample = random_tokens(2, 128, GPT2["d_vocab"], device, seed=1)
    dicts = standard_saes(model, layers, GPT2_SAE_WIDTH, sample, l0)
    return Shape(f"GPT-2 small shape, {len(layers)} x {GPT2_SAE_WIDTH:,} SAEs", model, dicts, l0)


def gemma_shape(device: str, *, layers: list[int] | None = None, l0: int = DEFAULT_L0,
                n_layers: int = 26, vocab: int = GEMMA_VOCAB) -> Shape:
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build_model(gemma_config(n_layers, vocab), device, dtype)
    layers = list(range(n_layers)) if layers is None else layers
    sample = random_tokens(2, 128, vocab, device, seed=1)
    dicts = jumprelu_saes(model, layers, GEMMA_SAE_WIDTH, sample, l0)
    label = "bf16" if dtype == torch.bfloat16 else "float32"
    return Shape(f"Gemma-2-2B shape ({label}), {len(layers)} x {GEMMA_SAE_WIDTH:,} JumpReLU", model, dicts, l0)
