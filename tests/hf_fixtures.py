"""A local Hugging Face cache laid out with tiny models under the real repo names.

With HF_HUB_OFFLINE=1 and HF_HOME pointing at the cache, the real loaders run unchanged:
`HookedTransformer.from_pretrained("gpt2")` finds a tiny 12-layer GPT-2 under repo `gpt2`, and
`SAE.from_pretrained("gpt2-small-res-jb", "blocks.L.hook_resid_pre")` finds tiny SAEs under
`jbloom/GPT2-Small-SAEs-Reformatted`, in the pre-6.0 config format those files really use.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

TINY_GPT2 = {"n_layer": 12, "n_embd": 32, "n_head": 2, "n_positions": 256, "vocab": 400}
TINY_SAE_D = 96
RES_JB_REPO = "jbloom/GPT2-Small-SAEs-Reformatted"


def _snapshot(hub_dir: Path, repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in a hub cache (created with refs/main)."""
    folder = hub_dir / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def add_files(hub_dir: Path, repo_id: str, files: dict[str, Path | bytes | str]) -> Path:
    snap = _snapshot(hub_dir, repo_id)
    for rel, content in files.items():
        dest = snap / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, dest)
        elif isinstance(content, bytes):
            dest.write_bytes(content)
        else:
            dest.write_text(content)
    return snap


def build_tiny_gpt2(hub_dir: Path, seed: int = 0) -> Path:
    """A randomly initialised GPT-2 (12 layers, d_model 32) with a trained BPE tokenizer, as `gpt2`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from backend.demo.tiny import _tokenizer_text, save_tokenizer, train_bpe

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = train_bpe(_tokenizer_text(), TINY_GPT2["vocab"])
        save_tokenizer(tok, tmp)
        cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=TINY_GPT2["n_positions"],
                         n_embd=TINY_GPT2["n_embd"], n_layer=TINY_GPT2["n_layer"], n_head=TINY_GPT2["n_head"],
                         n_ctx=TINY_GPT2["n_positions"], bos_token_id=0, eos_token_id=0)
        GPT2LMHeadModel(cfg).save_pretrained(tmp, safe_serialization=True)
        files = {p.name: p for p in tmp.iterdir() if p.is_file()}
        return add_files(hub_dir, "gpt2", files)


def build_res_jb_saes(hub_dir: Path, layers: range = range(12), seed: int = 1) -> Path:
    """Tiny ReLU SAEs on blocks.L.hook_resid_pre, in res-jb's pre-6.0 cfg.json format."""
    import torch
    from safetensors.torch import save_file

    d_in, d_sae = TINY_GPT2["n_embd"], TINY_SAE_D
    gen = torch.Generator().manual_seed(seed)
    files: dict[str, Path | bytes | str] = {}
    tmp = Path(tempfile.mkdtemp(prefix="res-jb-"))
    for layer in layers:
        hook = f"blocks.{layer}.hook_resid_pre"
        w_dec = torch.randn(d_sae, d_in, generator=gen)
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
        weights = {
            "W_enc": (w_dec.T * 2.0).contiguous(),
            "W_dec": w_dec.contiguous(),
            "b_enc": (torch.randn(d_sae, generator=gen) * 0.1 - 0.05).contiguous(),
            "b_dec": (torch.randn(d_in, generator=gen) * 0.05).contiguous(),
        }
        save_file(weights, str(tmp / f"{layer}.safetensors"))
        save_file({"sparsity": torch.full((d_sae,), -2.0)}, str(tmp / f"{layer}.sparsity.safetensors"))
        cfg = {
            "model_name": "gpt2-small", "hook_point": hook, "hook_point_layer": layer,
            "hook_point_head_index": None, "d_in": d_in, "d_sae": d_sae, "dtype": "torch.float32",
            "device": "cpu", "context_size": 128, "prepend_bos": True, "activation_fn_str": "relu",
            "apply_b_dec_to_input": True, "finetuning_scaling_factor": False, "normalize_activations": "none",
            "dataset_path": "Skylion007/openwebtext", "expansion_factor": d_sae // d_in,
        }
        files[f"{hook}/cfg.json"] = json.dumps(cfg)
        files[f"{hook}/sae_weights.safetensors"] = tmp / f"{layer}.safetensors"
        files[f"{hook}/sparsity.safetensors"] = tmp / f"{layer}.sparsity.safetensors"
    snap = add_files(hub_dir, RES_JB_REPO, files)
    shutil.rmtree(tmp, ignore_errors=True)
    return snap


def write_topk_checkpoint(path: Path, d_model: int, n_lat: int, seed: int = 2) -> dict:
    """A checkpoint in the Modal design's format: {'ema_sae': {W_dec, W_enc, b_pre}}."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_model, n_lat, generator=gen) / d_model**0.5
    state = {"W_dec": w_dec, "W_enc": w_dec.t().clone() + 0.01 * torch.randn(n_lat, d_model, generator=gen),
             "b_pre": 0.01 * torch.randn(d_model, generator=gen)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ema_sae": state, "step": torch.tensor(1000)}, path)
    return state
