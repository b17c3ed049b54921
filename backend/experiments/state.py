"""What an experiment has added up so far, and its checkpoint (one safetensors file, replaced
atomically after every batch, so an interrupted run resumes after the last finished batch)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from backend.local.steer_metrics import Sums
from backend.schemas import ExperimentFeature, ExperimentRequest

CHECKPOINT = "checkpoint.safetensors"
_FORMAT = "featurescope-experiment-1"


def unit_key(layer: int, index: int, alpha: float) -> str:
    return f"{layer}:{index}:{alpha!r}"


def feature_key(layer: int, index: int) -> str:
    return f"{layer}:{index}"


def fingerprint(req: ExperimentRequest, texts: list[str]) -> str:
    """What must match for a checkpoint to be resumed: every setting but the batch size, and the
    passages themselves."""
    settings = req.model_dump(exclude={"batch_size"})
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()


@dataclass
class Stats:
    """A feature's activations in the default run, over non-special tokens."""

    n_tokens: int = 0
    n_fire: int = 0
    act_sum: float = 0.0
    act_max: float = 0.0

    def add(self, other: Stats) -> None:
        self.n_tokens += other.n_tokens
        self.n_fire += other.n_fire
        self.act_sum += other.act_sum
        self.act_max = max(self.act_max, other.act_max)


@dataclass
class State:
    fingerprint: str
    batch_size: int
    features: list[ExperimentFeature] = field(default_factory=list)
    n_done: int = 0
    sums: dict[str, Sums] = field(default_factory=dict)
    stats: dict[str, Stats] = field(default_factory=dict)
    snippets: dict[str, list[list]] = field(default_factory=dict)  # feature key -> [kl, passage, pos, d, s]
    notes: list[str] = field(default_factory=list)

    def merge(
        self, sums: dict[str, Sums], stats: dict[str, Stats], snippets: dict[str, list[list]], keep: int
    ) -> None:
        for k, s in sums.items():
            self.sums.setdefault(k, Sums()).add(s)
        for k, s in stats.items():
            self.stats.setdefault(k, Stats()).add(s)
        for k, rows in snippets.items():
            merged = self.snippets.get(k, []) + rows
            self.snippets[k] = sorted(merged, key=lambda r: -r[0])[:keep]

    # ---------------------------------------------------------------- checkpoint
    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: s.logit_delta.contiguous() for k, s in self.sums.items() if s.logit_delta is not None}
        meta = {
            "format": _FORMAT,
            "fingerprint": self.fingerprint,
            "batch_size": self.batch_size,
            "n_done": self.n_done,
            "features": [f.model_dump() for f in self.features],
            "sums": {
                k: [s.ce_default, s.ce_steered, s.n_predicted, s.kl, s.n_positions]
                for k, s in self.sums.items()
            },
            "stats": {k: [s.n_tokens, s.n_fire, s.act_sum, s.act_max] for k, s in self.stats.items()},
            "snippets": self.snippets,
            "notes": self.notes,
        }
        tmp = directory / (CHECKPOINT + ".tmp")
        save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)})
        os.replace(tmp, directory / CHECKPOINT)

    @classmethod
    def load(cls, directory: Path, fp: str) -> State | None:
        """The checkpoint in `directory` if it is of the same experiment, else None."""
        from safetensors import safe_open

        path = directory / CHECKPOINT
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads(f.metadata()["state"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, KeyError, ValueError):
            return None
        if meta.get("format") != _FORMAT or meta.get("fingerprint") != fp:
            return None
        state = cls(
            fingerprint=fp,
            batch_size=int(meta["batch_size"]),
            n_done=int(meta["n_done"]),
            features=[ExperimentFeature(**f) for f in meta["features"]],
            snippets=meta["snippets"],
            notes=list(meta["notes"]),
        )
        for k, (ce_d, ce_s, n_pred, kl, n_pos) in meta["sums"].items():
            state.sums[k] = Sums(ce_d, ce_s, int(n_pred), kl, int(n_pos), tensors.get(k))
        for k, (n, fire, total, top) in meta["stats"].items():
            state.stats[k] = Stats(int(n), int(fire), total, top)
        return state

    @staticmethod
    def clear(directory: Path) -> None:
        (directory / CHECKPOINT).unlink(missing_ok=True)
