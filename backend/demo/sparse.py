"""Sparse dictionaries for the demo pack: residual SAEs and per-layer transcoders.

Both are trained the same way, as BatchTopK dictionaries (Bussmann et al., 2024) that become
JumpReLU dictionaries for inference:

- encoder `pre = (x - b_dec·[sae]) @ W_enc + b_enc`, `acts = relu(pre)`; in training the batch's
  threshold keeps the `k · rows` largest activations of a sub-batch (so L0 averages `k`), and
  every activation above it passes, which is exactly a JumpReLU with that threshold;
- decoder `out = acts @ W_dec + b_dec`, rows of W_dec kept at unit norm;
- loss: squared error summed over dimensions, plus the AuxK loss (Gao et al., 2024) that lets
  latents dead for `dead_after_tokens` reconstruct the residual;
- activations are scaled by one constant per site so E‖x‖² = d (and the same for the target);
  the scale is folded into the exported weights;
- dense features are held back (the routing bias of Wang et al., 2024, "auxiliary-loss-free load
  balancing"): each feature carries a bias <= 0 that is added to its pre-activation only when the
  batch picks which activations pass, never to the values that pass. After every step the bias of a
  feature that fired on more than `density_cap` of the batch's tokens is lowered by a small step, and
  raised back towards 0 otherwise, so no feature keeps firing on a large share of all tokens (such
  features say little about any token and crowd every top-10 list). The exported JumpReLU threshold of
  feature f is `theta - bias_f`, which is exactly the training rule;
- BOS positions are never seen: training, calibration and the statistics use non-BOS tokens only
  (the model writes an attention-sink vector there that no dictionary should spend features on);
- after training the threshold is calibrated on fresh activations so the mean L0 is `k`.

An SAE reads and writes `blocks.L.hook_resid_post`; a transcoder reads `blocks.L.hook_resid_mid`
and writes `blocks.L.hook_mlp_out`. Export: SAEs as SAELens `JumpReLUSAE` (`save_model`, loaded by
`SAE.load_from_disk`), transcoders in circuit-tracer's per-layer safetensors (`W_enc`, `W_dec`
[d_transcoder, d_model], `b_enc`, `b_dec`, `activation_function.threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Site:
    """Where a dictionary reads and writes (an SAE reads and writes the same hook)."""

    kind: str  # "sae" | "transcoder"
    layer: int
    in_hook: str
    out_hook: str

    @property
    def name(self) -> str:
        return f"{self.kind}{self.layer}"


def sites(n_layers: int) -> list[Site]:
    out = [Site("sae", L, f"blocks.{L}.hook_resid_post", f"blocks.{L}.hook_resid_post")
           for L in range(n_layers)]
    out += [Site("transcoder", L, f"blocks.{L}.hook_resid_mid", f"blocks.{L}.hook_mlp_out")
            for L in range(n_layers)]
    return out


CUT_ROWS = 512  # the batch's first rows, whose top k·rows activations set the BatchTopK cut


class BatchTopKDictionary(nn.Module):
    def __init__(self, d_in: int, d_out: int, d_dict: int, k: int, subtract_b_dec: bool,
                 gen: torch.Generator) -> None:
        super().__init__()
        self.k, self.subtract_b_dec = k, subtract_b_dec
        w_dec = torch.randn(d_dict, d_out, generator=gen)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        if d_in == d_out:
            w_enc = w_dec.T.clone()
        else:
            w_enc = torch.randn(d_in, d_dict, generator=gen)
            w_enc = w_enc / w_enc.norm(dim=0, keepdim=True)
        self.W_enc = nn.Parameter(w_enc)
        self.b_enc = nn.Parameter(torch.zeros(d_dict))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("route_bias", torch.zeros(d_dict))  # <= 0; see the module docstring
        self.register_buffer("last_fired", torch.zeros(d_dict, dtype=torch.long))

    def preacts(self, x: torch.Tensor) -> torch.Tensor:
        if self.subtract_b_dec:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def scores(self, pre: torch.Tensor) -> torch.Tensor:
        """What the batch ranks: the pre-activation plus the routing bias where it is positive."""
        return torch.where(pre > 0, pre.detach() + self.route_bias, torch.full((), -torch.inf, dtype=pre.dtype))

    def batch_threshold(self, scores: torch.Tensor, sub_rows: int = CUT_ROWS) -> torch.Tensor:
        """The BatchTopK cut: the (k·m)-th largest score of the first m rows."""
        sub = scores[:sub_rows].detach().flatten()
        n = min(sub.numel(), self.k * min(sub_rows, scores.shape[0]))
        return _finite_cut(sub.topk(n, sorted=False).values.min(), sub)

    def feature_thresholds(self) -> torch.Tensor:
        """Per-feature JumpReLU thresholds: pre > theta - bias_f  <=>  pre + bias_f > theta."""
        return (self.threshold - self.route_bias).detach().clone()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


@dataclass
class DictionarySpec:
    d_dict: int
    k: int
    tokens: int
    batch_tokens: int
    lr: float
    transcoder_lr: float | None = None  # the transcoders' own rate (None: `lr`); see BuildConfig
    aux_coef: float = 1 / 32
    dead_after_tokens: int = 200_000
    density_cap: float = 0.05  # share of a batch's tokens above which a feature is held back
    balance_rate: float = 0.02  # bias step per training step, as a fraction of the batch threshold
    density_limit: float = 1.0  # after calibration, no feature fires on more than this share (1.0: off)


def _finite_cut(cut: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The cut itself, unless fewer than k·m pre-activations were positive: then the top-(k·m) reaches
    into the -inf of the non-positive ones, and an infinite cut would poison the routing-bias step
    (balance_rate · theta) and the exported thresholds. Every positive score passes instead: the cut
    goes just under the smallest finite score (or to 0 when there is none)."""
    if bool(torch.isfinite(cut)):
        return cut
    finite = scores[torch.isfinite(scores)]
    if not finite.numel():
        return torch.zeros((), dtype=scores.dtype)
    low = finite.min()
    return low - low.abs().clamp_min(1e-6) * 1e-6


def _mean_sq_norm(x: torch.Tensor) -> float:
    return float(x.pow(2).sum(-1).mean())


@torch.no_grad()
def collect(model: Any, rows: torch.Tensor, hooks: list[str], bos: int) -> dict[str, torch.Tensor]:
    """Activations at `hooks` for every non-BOS position of `rows`, as [n_tokens, d] each."""
    stop = max(int(h.split(".")[1]) for h in hooks) + 1
    _, cache = model.run_with_cache(rows, names_filter=lambda n: n in hooks, stop_at_layer=stop)
    keep = rows != bos
    return {h: cache[h][keep].float() for h in hooks}


class Trainer:
    """Trains one dictionary per site in lockstep, one model forward pass per step."""

    def __init__(self, model: Any, site_list: list[Site], spec: DictionarySpec, bos: int, seed: int) -> None:
        self.model, self.sites, self.spec, self.bos = model, site_list, spec, bos
        self.gen = torch.Generator().manual_seed(seed)
        self.hooks = sorted({s.in_hook for s in site_list} | {s.out_hook for s in site_list})
        d = model.cfg.d_model
        self.dicts = {s.name: BatchTopKDictionary(d, d, spec.d_dict, spec.k, s.kind == "sae", self.gen)
                      for s in site_list}
        self.scales: dict[str, float] = {}

    def lr(self, site: Site) -> float:
        spec = self.spec
        return spec.transcoder_lr if site.kind == "transcoder" and spec.transcoder_lr is not None else spec.lr

    def _batches(self, rows: torch.Tensor, n_rows: int):
        while True:
            order = torch.randperm(rows.shape[0], generator=self.gen)
            for start in range(0, len(order) - n_rows + 1, n_rows):
                yield collect(self.model, rows[order[start:start + n_rows]], self.hooks, self.bos)

    def train(self, rows: torch.Tensor) -> dict[str, list[tuple[int, float]]]:
        spec, n_ctx = self.spec, rows.shape[1]
        n_rows = max(1, spec.batch_tokens // n_ctx)
        steps = max(1, spec.tokens // (n_rows * n_ctx))
        batches = self._batches(rows, n_rows)
        first = next(batches)
        # One scale per hook so that E||x||^2 = d; b_dec starts at the mean of what it rebuilds.
        d = self.model.cfg.d_model
        self.scales = {h: (d / _mean_sq_norm(first[h])) ** 0.5 for h in self.hooks}
        opts = {}
        for s in self.sites:
            dic = self.dicts[s.name]
            with torch.no_grad():
                dic.b_dec.copy_((first[s.out_hook] * self.scales[s.out_hook]).mean(0))
            opts[s.name] = torch.optim.Adam(dic.parameters(), lr=self.lr(s), betas=(0.9, 0.999))
        warmup, decay_from = max(1, steps // 20), int(steps * 0.8)
        curves: dict[str, list[tuple[int, float]]] = {s.name: [] for s in self.sites}
        seen = 0
        acts = first
        for step in tqdm(range(steps), desc="training SAEs and transcoders", unit="step"):
            if step > 0:
                acts = next(batches)
            lr_scale = min(1.0, (step + 1) / warmup)
            if step >= decay_from:
                lr_scale *= max(0.0, (steps - step) / max(1, steps - decay_from))
            n_tok = next(iter(acts.values())).shape[0]
            seen += n_tok
            for s in self.sites:
                x = acts[s.in_hook] * self.scales[s.in_hook]
                y = acts[s.out_hook] * self.scales[s.out_hook]
                loss, fvu = self._step(self.dicts[s.name], opts[s.name], x, y, seen, self.lr(s) * lr_scale)
                if step % 10 == 0 or step == steps - 1:
                    curves[s.name].append((step, round(fvu, 4)))
        return curves

    def _step(self, dic: BatchTopKDictionary, opt: torch.optim.Optimizer, x: torch.Tensor,
              y: torch.Tensor, seen: int, lr: float) -> tuple[float, float]:
        """One optimiser step. Only the sub-batch that sets the cut is scored in full; the rest is
        compared with the cut directly, which selects exactly the same activations as scoring every
        row (`pre + bias > theta` with theta > 0 already implies pre > 0, since bias <= 0 and float
        addition is monotonic). The AuxK latents are ranked among the dead features only."""
        spec = self.spec
        for group in opt.param_groups:
            group["lr"] = lr
        pre = dic.preacts(x)
        with torch.no_grad():
            p = pre.detach()
            theta = dic.batch_threshold(dic.scores(p[:CUT_ROWS]))
            passed = p + dic.route_bias > theta
            if float(theta) <= 0:
                passed &= p > 0
        z = torch.where(passed, pre, torch.zeros((), dtype=pre.dtype))  # pre > 0 wherever it passed
        out = dic.decode(z)
        err = (out - y).pow(2).sum(-1).mean()
        loss = err
        with torch.no_grad():
            dic.last_fired[passed.any(0)] = seen
            dead = (seen - dic.last_fired) > spec.dead_after_tokens
            over = passed.float().mean(0) > spec.density_cap
            # the step is a size: theta itself while positive, else (theta <= 0, too few positive
            # pre-activations) the mean positive pre-activation, so the bias neither flips direction
            # nor feeds on itself
            if float(theta) > 0:
                scale = float(theta)
            else:
                positive = p[p > 0]
                scale = float(positive.mean()) if positive.numel() else 0.0
            step_size = spec.balance_rate * scale
            dic.route_bias.add_(torch.where(over, -step_size, step_size)).clamp_(max=0.0)
        dead_idx = dead.nonzero().flatten()
        if dead_idx.numel():
            k_aux = min(x.shape[1] // 2, dead_idx.numel())
            top = pre.index_select(1, dead_idx).topk(k_aux, dim=-1)
            aux_z = torch.zeros_like(pre).scatter(-1, dead_idx[top.indices], top.values.relu())
            residual = (y - out).detach()
            aux = (aux_z @ dic.W_dec - residual).pow(2).sum(-1).mean()
            loss = loss + spec.aux_coef * min(1.0, dead_idx.numel() / k_aux) * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dic.normalise_decoder()
        with torch.no_grad():
            var = (y - y.mean(0)).pow(2).sum(-1).mean()
            fvu = float(err / var)
        return float(loss.detach()), fvu

    @torch.no_grad()
    def calibrate(self, rows: torch.Tensor) -> None:
        """Set each dictionary's theta so that the mean L0 over `rows` (non-BOS) is k, with no feature
        firing on more than `density_limit` of them: theta and the limit are set in turn (three
        rounds; the limit last, so it holds exactly and the L0 ends at or a little under k)."""
        acts = collect(self.model, rows, self.hooks, self.bos)
        for s in self.sites:
            dic = self.dicts[s.name]
            x = acts[s.in_hook] * self.scales[s.in_hook]
            for _ in range(3 if self.spec.density_limit < 1.0 else 1):
                scores = dic.scores(dic.preacts(x)).flatten()
                n = min(scores.numel(), dic.k * x.shape[0])
                dic.threshold.fill_(float(_finite_cut(scores.topk(n, sorted=False).values.min(), scores)))
                self._limit_density(dic, x)

    def _limit_density(self, dic: BatchTopKDictionary, x: torch.Tensor) -> None:
        """Raise the threshold of each feature that still fires on more than `density_limit` of the
        calibration tokens to the value it exceeds on exactly that share (its routing bias moves by
        the difference), so no exported feature is dense on text like the calibration sample."""
        limit = self.spec.density_limit
        if limit >= 1.0:
            return
        pre = dic.preacts(x)
        over = ((pre > dic.feature_thresholds()).float().mean(0) > limit).nonzero().flatten()
        if not len(over):
            return
        keep = max(1, int(limit * pre.shape[0]))  # tokens each such feature may still fire on
        cut = pre[:, over].topk(keep + 1, dim=0).values[-1]  # the (keep+1)-th largest: fire above it
        dic.route_bias[over] = torch.minimum(dic.route_bias[over], dic.threshold - cut)

    def folded(self, site: Site) -> dict[str, torch.Tensor]:
        """Weights in the units of the model's activations (the training scales folded in).

        With s_in, s_out the scales: pre = (s_in·x − b_dec·[sae]) W_enc + b_enc and
        out = (z W_dec + b_dec)/s_out.
        For an SAE s_in = s_out = s and pre = (x − b_dec/s)(s·W_enc) + b_enc; so W_enc' = s_in·W_enc,
        W_dec' = W_dec/s_out, b_dec' = b_dec/s_out; b_enc and the threshold are unchanged.
        """
        dic = self.dicts[site.name]
        s_in, s_out = self.scales[site.in_hook], self.scales[site.out_hook]
        return {"W_enc": (dic.W_enc * s_in).detach().clone(), "b_enc": dic.b_enc.detach().clone(),
                "W_dec": (dic.W_dec / s_out).detach().clone(), "b_dec": (dic.b_dec / s_out).detach().clone(),
                "threshold": dic.feature_thresholds()}


def save_sae(weights: dict[str, torch.Tensor], out_dir: Path, hook: str, model_name: str, n_ctx: int) -> None:
    """Write a SAELens JumpReLU SAE (cfg.json + sae_weights.safetensors) with SAELens' own classes."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in, d_sae = weights["W_enc"].shape
    cfg = JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu",
                            apply_b_dec_to_input=True, normalize_activations="none",
                            metadata=SAEMetadata(hook_name=hook, model_name=model_name, prepend_bos=True,
                                                 context_size=n_ctx))
    sae = JumpReLUSAE(cfg)
    sae.load_state_dict({k: v.contiguous() for k, v in weights.items()}, strict=True)
    sae.save_model(out_dir)


def save_transcoder(weights: dict[str, torch.Tensor], path: Path) -> None:
    """Write circuit-tracer's per-layer transcoder file (what `load_relu_transcoder` reads)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"W_enc": weights["W_enc"].T.contiguous(), "W_dec": weights["W_dec"].contiguous(),
               "b_enc": weights["b_enc"].contiguous(), "b_dec": weights["b_dec"].contiguous(),
               "activation_function.threshold": weights["threshold"].contiguous()}, str(path))
