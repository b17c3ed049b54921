"""The highlighter analysis against independent computations: SAELens' own encode, and a direct
reimplementation of the Modal design's TopK SAE."""

from __future__ import annotations

import threading

import pytest
import torch

from backend.errors import InvalidRequest, LimitExceeded, NotFound
from backend.schemas import AnalyzeRequest, LayerFeature

TEXT = "The tokamak reached H-mode. Plasma confinement improved; 42 shots later, the team celebrated."


def reference_topk(model, sae, hook: str, text: str, k: int):
    """Activations from run_with_cache, SAELens' encode, then torch.topk: the expected answer, computed on
    the model's device (the SAE is moved there), returned on the CPU."""
    tokens = model.to_tokens(text)
    sae = sae.to(model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook)
        z = sae.encode(cache[hook])[0].float().cpu()
    top = torch.topk(z, k, dim=-1)
    return top.values, top.indices, z


def test_gpt2_res_jb_topk_equals_saelens_encode(backend):
    """Selecting GPT-2 small / res-jb runs the real from_pretrained paths (offline, tiny weights)."""
    from sae_lens import SAE

    k = 5
    result = backend.analyze(AnalyzeRequest(model="gpt2-small", sae_set="res-jb", text=TEXT, layers=[3, 8], k=k))
    model = backend.models.get(backend.model_entry("gpt2-small"), "float32").model
    assert [lt.layer for lt in result.layers] == [3, 8]
    assert result.tokens[0].special and result.tokens[0].text == "<|endoftext|>"
    for lt in result.layers:
        hook = f"blocks.{lt.layer}.hook_resid_pre"
        sae = SAE.from_pretrained("gpt2-small-res-jb", hook)
        vals, idx, _ = reference_topk(model, sae, hook, TEXT, k)
        assert len(lt.indices) == len(lt.values) == len(result.tokens) == vals.shape[0]
        n_compared = 0
        for pos in range(len(result.tokens)):
            feats = lt.features_at(pos)
            expected = [(int(i), float(v)) for v, i in zip(vals[pos], idx[pos]) if v > 0]
            assert [f.index for f in feats] == [i for i, _ in expected]
            assert [f.activation for f in feats] == pytest.approx([v for _, v in expected], rel=1e-5, abs=1e-6)
            n_compared += len(feats)
        assert n_compared > 0, "the fixture SAEs should fire on this text"
        assert lt.neuronpedia_id == f"gpt2-small/{lt.layer}-res-jb"


def test_tracked_features_equal_encode_columns(backend):
    from sae_lens import SAE

    track = [LayerFeature(layer=5, index=3), LayerFeature(layer=5, index=40), LayerFeature(layer=2, index=7)]
    result = backend.analyze(AnalyzeRequest(model="gpt2-small", sae_set="res-jb", text=TEXT, layers=[5], k=3,
                                            track=track))
    model = backend.models.get(backend.model_entry("gpt2-small"), "float32").model
    assert [lt.layer for lt in result.layers] == [5], "tracking layer 2 must not add it to the top-k layers"
    got = {(t.layer, t.index): t.values for t in result.tracked}
    assert set(got) == {(5, 3), (5, 40), (2, 7)}
    for f in track:
        hook = f"blocks.{f.layer}.hook_resid_pre"
        _, _, z = reference_topk(model, SAE.from_pretrained("gpt2-small-res-jb", hook), hook, TEXT, 1)
        assert got[(f.layer, f.index)] == pytest.approx(z[:, f.index].tolist(), rel=1e-5, abs=1e-6)


def test_all_layers_take_one_forward_pass(backend):
    loaded = backend.models.get(backend.model_entry("gpt2-small"), "float32")
    calls = []
    handle = loaded.model.hook_embed.register_forward_hook(lambda *a: calls.append(1))
    try:
        result = backend.analyze(AnalyzeRequest(model="gpt2-small", sae_set="res-jb", text=TEXT, k=4))
    finally:
        handle.remove()
    assert [lt.layer for lt in result.layers] == list(range(12))
    assert len(calls) == 1
    assert all(not hp._forward_hooks for hp in loaded.model.hook_dict.values()), "no hook may outlive the call"


class SeedTopKSAE(torch.nn.Module):
    """The Modal design's TopKSAE and its input normalisation, written out independently."""

    def __init__(self, state: dict[str, torch.Tensor], k: int) -> None:
        super().__init__()
        self.W_dec = torch.nn.Parameter(state["W_dec"].clone())
        self.W_enc = torch.nn.Parameter(state["W_enc"].clone())
        self.b_pre = torch.nn.Parameter(state["b_pre"].clone())
        self.k = k

    def forward(self, x):
        h = (x - self.b_pre) @ self.W_enc.t()
        top_idx = torch.topk(h, self.k, dim=-1).indices
        z = torch.zeros_like(h)
        z.scatter_(-1, top_idx, h.gather(-1, top_idx))
        return z @ self.W_dec.t() + self.b_pre, z


def seed_analyze(model, sae: SeedTopKSAE, text: str, window: int = 64) -> torch.Tensor:
    tok = model.tokenizer
    ids = tok(text, add_special_tokens=False).input_ids
    rows = [ids[i:i + window] for i in range(0, len(ids), window)]
    rows[-1] = rows[-1] + [tok.pad_token_id] * (window - len(rows[-1]))
    acts = []

    def save(act, hook):
        flat = act.detach().reshape(-1, act.shape[-1])
        flat = flat - flat.mean(-1, keepdim=True)
        acts.append(flat / flat.norm(dim=-1, keepdim=True))

    device = model.cfg.device
    model.run_with_hooks(torch.tensor(rows, device=device), fwd_hooks=[("blocks.8.hook_resid_pre", save)],
                         return_type=None)
    with torch.no_grad():
        _, z = sae.to(device)(torch.cat(acts))
    return z[: len(ids)].cpu()


def test_topk_checkpoint_matches_seed_reimplementation(backend, test_root):
    text = " ".join([TEXT] * 4)  # long enough for several 64-token windows
    result = backend.analyze(AnalyzeRequest(model="gpt2-small", sae_set="topk-l8", text=text, k=8,
                                            track=[LayerFeature(layer=8, index=11)]))
    assert result.window == 64
    assert not result.tokens[0].special, "the seed's windows have no BOS"
    assert len(result.tokens) > 128
    state = torch.load(test_root / "topk" / "sae_e32_k32-final.pt", weights_only=True)["ema_sae"]
    model = backend.models.get(backend.model_entry("gpt2-small"), "float32").model
    z = seed_analyze(model, SeedTopKSAE(state, k=8), text)
    assert z.shape[0] == len(result.tokens)
    (lt,) = result.layers
    for pos in range(len(result.tokens)):
        feats, nz = lt.features_at(pos), z[pos]
        expected = sorted(((int(i), float(nz[i])) for i in torch.nonzero(nz > 0).flatten()), key=lambda p: -p[1])
        assert [f.index for f in feats] == [i for i, _ in expected]
        assert [f.activation for f in feats] == pytest.approx([v for _, v in expected], rel=1e-4, abs=1e-5)
    assert result.tracked[0].values == pytest.approx(z[:, 11].tolist(), rel=1e-4, abs=1e-5)


class NotATensor:
    """Any non-tensor object: loading it would need the pickle machinery."""


def test_topk_checkpoint_never_unpickles(test_root, tmp_path):
    from backend.local.dictionaries import TopKCheckpoint

    bad = tmp_path / "evil.pt"
    torch.save({"ema_sae": {"W_dec": NotATensor()}}, bad)
    with pytest.raises(InvalidRequest, match="never unpickles"):
        TopKCheckpoint.load(bad, k=4, hook_name="blocks.8.hook_resid_pre", layer=8, device="cpu")


def test_two_threads_with_different_saes_get_their_solo_answers(backend):
    a = AnalyzeRequest(model="gpt2-small", sae_set="res-jb", text=TEXT, layers=[2], k=6)
    b = AnalyzeRequest(model="gpt2-small", sae_set="topk-l8", text=TEXT + " More text.", k=6)
    solo_a, solo_b = backend.analyze(a).layers, backend.analyze(b).layers
    results: dict[str, list] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def run(name: str, req: AnalyzeRequest) -> None:
        try:
            for _ in range(6):
                results[name].append(backend.analyze(req).layers)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("a", a)), threading.Thread(target=run, args=("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(r == solo_a for r in results["a"]) and len(results["a"]) == 6
    assert all(r == solo_b for r in results["b"]) and len(results["b"]) == 6


def test_limits_give_clear_messages(backend):
    lim = backend.limits
    with pytest.raises(LimitExceeded, match=f"the limit is {lim.max_text_chars:,}"):
        backend.analyze(AnalyzeRequest(model="demo", sae_set="res", text="a" * (lim.max_text_chars + 1)))
    with pytest.raises(LimitExceeded, match="k is 101"):
        backend.analyze(AnalyzeRequest(model="demo", sae_set="res", text="hi", k=101))
    long_text = "word " * 2000
    with pytest.raises(LimitExceeded, match="tokens") as err:
        backend.analyze(AnalyzeRequest(model="demo", sae_set="res", text=long_text))
    assert "Shorten" in err.value.message


def test_unknown_names_list_the_valid_ones(backend):
    with pytest.raises(NotFound, match="Valid models: .*gpt2-small"):
        backend.analyze(AnalyzeRequest(model="gpt3", sae_set="x", text="hi"))
    with pytest.raises(NotFound, match="res-jb"):
        backend.analyze(AnalyzeRequest(model="gpt2-small", sae_set="nope", text="hi"))
    with pytest.raises(NotFound, match="layer"):
        backend.analyze(AnalyzeRequest(model="gpt2-small", sae_set="res-jb", text="hi", layers=[40]))
    with pytest.raises(InvalidRequest, match="out of range"):
        backend.analyze(AnalyzeRequest(model="gpt2-small", sae_set="res-jb", text="hi", layers=[1],
                                       track=[LayerFeature(layer=1, index=10_000)]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(7,), (2, 9), (1, 33)])
@pytest.mark.parametrize("b_dec_to_input", [True, False])
def test_jumprelu_fast_encode_is_saelens_encode_bit_for_bit(dtype, shape, b_dec_to_input):
    """`SaeLensDictionary.encode` takes its own path for a plain JumpReLUSAE; its numbers are SAELens'
    `encode`'s exactly (torch.equal), whatever the dtype and leading shape."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    from backend.local.dictionaries import SaeLensDictionary, _plain_jumprelu

    g = torch.Generator().manual_seed(sum(shape) + (7 if b_dec_to_input else 0))
    d_in, d_sae = 24, 96
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, dtype=str(dtype).removeprefix("torch."),
                                        device="cpu", apply_b_dec_to_input=b_dec_to_input))
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.b_dec, sae.threshold):
            p.copy_(torch.randn(p.shape, generator=g).to(dtype) * 0.5)
        sae.threshold.copy_(sae.threshold.abs() * 0.5)
        sae.threshold[:4] = -0.2  # negative thresholds: the ReLU and the mask both matter
    assert _plain_jumprelu(sae)
    d = SaeLensDictionary(sae=sae, hook_name="blocks.0.hook_resid_post", layer=0)
    x = torch.randn(*shape, d_in, generator=g)  # float32 input, cast as SAELens casts it
    with torch.inference_mode():
        ours = d.encode(x)
        theirs = sae.encode(x)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert torch.equal(ours, theirs)
    assert 0 < int((ours > 0).sum()) < ours.numel()
