"""Feature interventions as TransformerLens hooks: read a feature, change it, write the difference.

An `Edit` is one resolved intervention: a feature of one dictionary (SAE or per-layer transcoder),
an operation, and where it applies (a mask of prompt positions, and/or every generated token).
At the dictionary's read hook the current activation `a` of the feature is encoded from the
activations passing through (the dictionary's own `encode`, so every SAELens architecture and
circuit-tracer's transcoders behave as in their libraries); the operation gives the new value `v`;
at the dictionary's write hook (`out_hook_name`: the same hook for an SAE, `hook_mlp_out` for a
transcoder) the activations change by `(v - a) * w_dec[feature]`. Where no edit applies, `v == a`
exactly and the activations pass through bit for bit.

Hooks are plain closures returned as lists; the caller adds them with `model.hooks(...)` inside
the model's lock, so none outlives a call. `prompt_hooks` apply to a forward over the prompt (or
a batch of passages); `step_hooks` to the one-token forwards of generation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from backend.local.dictionaries import FeatureDictionary

Hook = tuple[str, Callable]


@dataclass
class Edit:
    dictionary: FeatureDictionary
    index: int
    operation: str  # ablate | delta | set_value | alpha
    amount: float | None = None
    prompt_mask: torch.Tensor | None = None  # bool [seq] or [batch, seq]; None: no prompt position
    generated: bool = False
    target: float | None = None  # a fixed new value (set_value; delta from token_active_position)

    def new_value(self, a: torch.Tensor) -> torch.Tensor:
        if self.operation == "ablate":
            return torch.zeros_like(a)
        if self.target is not None:
            return torch.full_like(a, self.target)
        if self.operation == "delta":
            return a + float(self.amount or 0.0)
        if self.operation == "alpha":
            return a * float(self.amount if self.amount is not None else 1.0)
        raise ValueError(f"{self.operation} needs a target value")


@dataclass
class _Group:
    """The edits on one dictionary, sharing one encode per forward."""

    dictionary: FeatureDictionary
    edits: list[Edit]
    features: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.features = list(dict.fromkeys(e.index for e in self.edits))
        self.column = {f: i for i, f in enumerate(self.features)}
        d = self.dictionary
        device = d.w_dec.device
        self.feature_idx = torch.tensor(self.features, device=device)
        self.w = d.w_dec.index_select(0, self.feature_idx).detach()  # [F, d_in]
        self.scaled = bool(getattr(d, "normalizes_input", False))

    def delta(self, x: torch.Tensor, prompt: bool) -> torch.Tensor | None:
        """The change to the write hook's activations for input `x` at the read hook."""
        edits = [e for e in self.edits if (e.prompt_mask is not None if prompt else e.generated)]
        if not edits:
            return None
        z = self.dictionary.encode(x)
        a = z.index_select(-1, self.feature_idx)  # [..., F]
        v = a.clone()
        for e in edits:
            col = self.column[e.index]
            new = e.new_value(a[..., col])
            v[..., col] = torch.where(e.prompt_mask.to(new.device), new, v[..., col]) if prompt else new
        out = (v - a) @ self.w.to(a.dtype)
        if self.scaled:  # a TopK checkpoint decodes in the normalised space: back to the residual's scale
            centred = x.to(out.dtype) - x.to(out.dtype).mean(-1, keepdim=True)
            out = out * centred.norm(dim=-1, keepdim=True)
        return out.to(x.dtype)


def _groups(edits: Sequence[Edit]) -> list[_Group]:
    by_dict: dict[int, list[Edit]] = {}
    dicts: dict[int, FeatureDictionary] = {}
    for e in edits:
        by_dict.setdefault(id(e.dictionary), []).append(e)
        dicts[id(e.dictionary)] = e.dictionary
    return [_Group(dicts[k], v) for k, v in by_dict.items()]


def _group_hooks(group: _Group, prompt: bool) -> list[Hook]:
    d = group.dictionary
    if d.hook_name == d.out_hook_name:

        def edit_hook(act: torch.Tensor, hook) -> torch.Tensor | None:
            delta = group.delta(act, prompt)
            return None if delta is None else act + delta

        return [(d.hook_name, edit_hook)]

    pending: list[torch.Tensor | None] = [None]

    def read_hook(act: torch.Tensor, hook) -> None:
        pending[0] = group.delta(act, prompt)

    def write_hook(act: torch.Tensor, hook) -> torch.Tensor | None:
        delta, pending[0] = pending[0], None
        return None if delta is None else act + delta

    return [(d.hook_name, read_hook), (d.out_hook_name, write_hook)]


class SteeringHooks:
    """The hooks that apply `edits`, and optionally freeze attention patterns on the prompt pass."""

    def __init__(self, edits: Sequence[Edit], frozen_patterns: dict[str, torch.Tensor] | None = None) -> None:
        self.groups = _groups(edits)
        self.frozen = frozen_patterns or {}

    def prompt_hooks(self) -> list[Hook]:
        hooks: list[Hook] = []
        for name, pattern in self.frozen.items():
            hooks.append((name, lambda act, hook, p=pattern: p))
        for g in self.groups:
            if any(e.prompt_mask is not None for e in g.edits):
                hooks += _group_hooks(g, prompt=True)
        return hooks

    def step_hooks(self) -> list[Hook]:
        hooks: list[Hook] = []
        for g in self.groups:
            if any(e.generated for e in g.edits):
                hooks += _group_hooks(g, prompt=False)
        return hooks


class FeatureCapture:
    """Hooks that record features' activations (and optionally attention patterns) unchanged."""

    def __init__(
        self, features: dict[int, tuple[FeatureDictionary, list[int]]], patterns: Sequence[str] = ()
    ) -> None:
        """`features`: id(dictionary) -> (dictionary, feature indices to record)."""
        self.features = features
        self.pattern_names = list(patterns)
        self.values: dict[int, torch.Tensor] = {}  # id(dictionary) -> [..., F] activations
        self.patterns: dict[str, torch.Tensor] = {}

    def hooks(self) -> list[Hook]:
        hooks: list[Hook] = []
        for key, (d, indices) in self.features.items():
            idx = torch.tensor(indices, device=d.w_dec.device)

            def capture(act: torch.Tensor, hook, key=key, d=d, idx=idx) -> None:
                self.values[key] = d.encode(act).index_select(-1, idx).float()

            hooks.append((d.hook_name, capture))
        for name in self.pattern_names:

            def keep(act: torch.Tensor, hook, name=name) -> None:
                self.patterns[name] = act.detach().clone()

            hooks.append((name, keep))
        return hooks

    def activations(self, d: FeatureDictionary, index: int) -> torch.Tensor:
        """[..., seq] activations of one recorded feature."""
        return self.values[id(d)][..., self.features[id(d)][1].index(index)]


def pattern_hook_names(n_layers: int) -> list[str]:
    return [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
