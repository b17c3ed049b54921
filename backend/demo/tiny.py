"""A tiny random demo pack, built in about a second when the trained pack is not installed.

Its weights are random, so its features mean nothing; every result from it carries
`pack.TINY_LABEL` so nobody mistakes it for the trained demo. It exists so that a fresh clone
opens on a working app before `make demo` has been run, and it uses exactly the pack format.
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

# HookedTransformerConfig fields a pack stores (the rest take TransformerLens defaults).
CONFIG_FIELDS = (
    "n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_mlp", "d_vocab", "d_vocab_out",
    "act_fn", "normalization_type", "positional_embedding_type", "attn_only", "n_key_value_heads",
    "default_prepend_bos", "tokenizer_prepends_bos", "original_architecture", "model_name",
    "final_rms", "gated_mlp", "rotary_dim", "rotary_base", "eps", "parallel_attn_mlp",
    "attn_scale", "use_attn_scale", "tie_word_embeddings",
)

TINY_SHAPE = {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_head": 16, "d_mlp": 256, "n_ctx": 512}
TINY_D_SAE = 256
TINY_D_TRANSCODER = 128
TINY_VOCAB = 512
SPECIAL = "<|endoftext|>"


def config_to_json(cfg: Any) -> dict[str, Any]:
    """The JSON-safe subset of a HookedTransformerConfig that rebuilds it."""
    out = {}
    for name in CONFIG_FIELDS:
        value = getattr(cfg, name, None)
        if value is not None:
            out[name] = value
    return out


def _tokenizer_text() -> list[str]:
    """Deterministic English-ish text with no download: the docstrings of stdlib modules."""
    import collections
    import json as json_mod
    import pathlib
    import textwrap

    docs = []
    for mod in (collections, json_mod, pathlib, textwrap, inspect, shutil, tempfile):
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc:
                docs.append(doc)
    return docs


def save_tokenizer(tokenizer_obj: Any, out_dir: Path) -> None:
    """Save a `tokenizers.Tokenizer` as a Hugging Face fast tokenizer with GPT-2-style specials."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_obj,
        bos_token=SPECIAL,
        eos_token=SPECIAL,
        unk_token=SPECIAL,
        pad_token=SPECIAL,
    )
    fast.save_pretrained(str(out_dir))


def train_bpe(texts: list[str], vocab_size: int, show_progress: bool = False) -> Any:
    """Byte-level BPE (GPT-2 style pre-tokenisation) with one special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def build_tiny_pack(out_dir: Path, header: dict[str, Any], seed: int = 0) -> Path:
    """Write a complete tiny pack to `out_dir` (atomically: built aside, then renamed).

    `header` is the manifest's format, version and label, handed over by `pack.py` (the format's
    owner), so this builder does not import the module that calls it."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from safetensors.torch import save_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-demo-", dir=out_dir.parent))
    try:
        docs = _tokenizer_text()
        tok = train_bpe(docs, TINY_VOCAB)
        # The corpus its activation store is built from: one document per line.
        (tmp / "corpus.txt").write_text("\n".join(" ".join(d.split()) for d in docs) + "\n")
        save_tokenizer(tok, tmp / "tokenizer")

        cfg = HookedTransformerConfig(
            **TINY_SHAPE,
            d_vocab=tok.get_vocab_size(),
            act_fn="gelu_new",
            normalization_type="LN",
            model_name="featurescope-tiny",
            default_prepend_bos=True,
            seed=seed,
            device="cpu",
        )
        model = HookedTransformer(cfg)
        (tmp / "model").mkdir()
        (tmp / "model" / "config.json").write_text(json.dumps(config_to_json(cfg), indent=1))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "model" / "model.safetensors"))

        hook = "blocks.{layer}.hook_resid_post"
        torch.manual_seed(seed)
        for layer in range(cfg.n_layers):
            sae_cfg = StandardSAEConfig(
                d_in=cfg.d_model,
                d_sae=TINY_D_SAE,
                metadata=SAEMetadata(hook_name=hook.format(layer=layer), model_name="featurescope-tiny",
                                     prepend_bos=True, context_size=cfg.n_ctx),
            )
            StandardSAE(sae_cfg).save_model(tmp / "saes" / "res" / f"layer_{layer}")

        # Per-layer ReLU transcoders (resid_mid -> mlp_out) in circuit-tracer's safetensors format.
        gen = torch.Generator().manual_seed(seed + 1)
        d, t = cfg.d_model, TINY_D_TRANSCODER
        (tmp / "transcoders" / "demo").mkdir(parents=True)
        for layer in range(cfg.n_layers):
            w_enc = torch.randn(t, d, generator=gen) / d**0.5
            save_file({
                "W_enc": w_enc.contiguous(),
                "W_dec": (torch.randn(t, d, generator=gen) / t**0.5).contiguous(),
                "b_enc": (torch.randn(t, generator=gen) * 0.1).contiguous(),
                "b_dec": torch.zeros(d),
            }, str(tmp / "transcoders" / "demo" / f"layer_{layer}.safetensors"))

        manifest = {
            **header,
            "name": "featurescope-tiny",
            "sae_sets": {
                "res": {"hook": hook, "layers": list(range(cfg.n_layers)), "d_sae": TINY_D_SAE,
                        "dir": "saes/res", "explanations": None},
            },
            "corpus": "corpus.txt",
            "transcoder_sets": {
                "demo": {"dir": "transcoders/demo", "layers": list(range(cfg.n_layers)),
                         "d_transcoder": TINY_D_TRANSCODER, "kind": "per_layer",
                         "feature_input_hook": "hook_resid_mid", "feature_output_hook": "hook_mlp_out"},
            },
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
