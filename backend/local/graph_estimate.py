"""What an attribution graph will cost, worked out before it runs: time, device and host memory.

The shapes are circuit-tracer's (attribution/attribute.py, attribution/context_transformerlens.py):

- device: the model and transcoders; a forward pass of `batch_size` copies of the prompt whose
  activations stay alive for the backward passes; error vectors (layers x tokens x d_model);
  encoder and decoder vectors of every active feature (a cross-layer transcoder's decoders write to
  every later layer); a row buffer (rows x batch) per backward pass.
- host: the edge matrix ((feature rows + logits) x all nodes, float32), the square adjacency
  matrix of the Graph, and pruning (`prune_graph` normalises, clones and sorts it: ~5 copies).
- time: one backward pass per `batch_size` rows (logit rows, then feature rows), each costing
  about a forward pass of batch x tokens through the model plus contracting the gradients with the
  active features' decoders; then pruning, which is quadratic in the nodes.

How many features are active is not known until the prompt has run, and how fast a device is
differs by a lot, so both start from stated assumptions and are then calibrated from every graph
this installation builds (per device, model and transcoder set, kept in `calibration.json`).
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path

from backend import compute
from backend.catalog import ModelEntry, TranscoderSetEntry
from backend.schemas import GraphEstimate

GB = compute.GB
ASSUMED_ACTIVE_PER_LAYER_TOKEN = 100  # a transcoder's L0 before anything is measured
ASSUMED_FLOPS = {"cpu": 2e10, "mps": 1e12, "cuda": 3e13}  # effective FLOP/s before calibration
ASSUMED_PRUNE_S_PER_CELL = {"cpu": 6e-8, "mps": 5e-9, "cuda": 1e-9}  # prune_graph, per adjacency cell
EMA = 0.5  # weight of the newest run in the calibration


@dataclass(frozen=True)
class GraphShape:
    """The figures an estimate is computed from."""

    n_tokens: int
    n_layers: int
    d_model: int
    d_transcoder: int
    cross_layer: bool
    n_params: int
    d_vocab: int
    dtype_bytes: int
    lazy_decoder: bool


def shape_of(entry: ModelEntry, tc: TranscoderSetEntry, n_tokens: int,
             dtype: str) -> tuple[GraphShape, list[str]]:
    notes = []
    d_model = entry.d_model or 0
    d_tc = tc.d_transcoder
    if d_tc is None:
        d_tc = 8 * d_model
        notes.append(f"The catalog has no width for {tc.display_name}; assumed {d_tc:,} features per layer.")
    return GraphShape(
        n_tokens=n_tokens, n_layers=entry.n_layers or 0, d_model=d_model, d_transcoder=d_tc,
        cross_layer=tc.kind == "cross_layer", n_params=entry.n_params or 0, d_vocab=entry.d_vocab or 0,
        dtype_bytes=compute.DTYPE_BYTES[dtype], lazy_decoder=tc.source != "demo",
    ), notes


def model_bytes(entry: ModelEntry, s: GraphShape) -> int:
    """The model's weights and the transcoders (encoders; decoders too unless loaded lazily)."""
    per_layer = s.d_transcoder * s.d_model * (1 if s.lazy_decoder else 2) + s.d_transcoder
    return (s.n_params + s.n_layers * per_layer) * s.dtype_bytes


def model_bytes_for(entry: ModelEntry, tc: TranscoderSetEntry, dtype: str) -> int:
    return model_bytes(entry, shape_of(entry, tc, 1, dtype)[0])


@dataclass(frozen=True)
class Sizes:
    n_active: int
    feature_rows: int
    logit_rows: int
    backward_passes: int
    n_nodes: int
    workspace: int
    prune: int
    host: int
    flops: float


def sizes(entry: ModelEntry, s: GraphShape, *, batch_size: int, max_feature_nodes: int, max_n_logits: int,
          active_per_layer_token: float) -> Sizes:
    L, T, d, b = s.n_layers, s.n_tokens, s.d_model, s.dtype_bytes
    n_active = int(min(L * T * s.d_transcoder, math.ceil(active_per_layer_token * L * T)))
    f_rows = min(max_feature_nodes, n_active)
    k = max_n_logits
    passes = math.ceil(k / batch_size) + math.ceil(f_rows / batch_size)
    acts = compute.activation_cache_bytes(entry, T, batch_size, b) * 1.25  # kept for the backward passes
    dec_per_feature = (1 + L / 2) if s.cross_layer else 2  # encoder + decoder(s) of an active feature
    ctx = (L * T * d + T * d + n_active * d * dec_per_feature) * b
    row_size = n_active + (L + 1) * T
    buffer = row_size * batch_size * 4
    n_nodes = f_rows + L * T + T + k
    edge_matrix = (f_rows + k) * (row_size + k) * 4
    square = n_nodes * n_nodes * 4
    non_embedding = max(s.n_params - s.d_vocab * d, s.n_params // 10)
    flops = passes * (2 * non_embedding * batch_size * T + 2 * batch_size * n_active * d)
    flops += 2 * s.n_params * batch_size * T + 2 * s.n_params * T  # forward pass and precomputation
    return Sizes(n_active=n_active, feature_rows=f_rows, logit_rows=k, backward_passes=passes,
                 n_nodes=n_nodes, workspace=int(acts + ctx + buffer), prune=5 * square,
                 host=edge_matrix + square, flops=float(flops))


class CostModel:
    """Estimates, calibrated by the graphs actually built (seconds per FLOP, active features)."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, float]] | None = None

    @staticmethod
    def key(device_name: str, entry: ModelEntry, tc: TranscoderSetEntry, dtype: str) -> str:
        return f"{device_name}|{entry.id}|{tc.id}|{dtype}"

    def _load(self) -> dict[str, dict[str, float]]:
        if self._data is None:
            try:
                self._data = json.loads(self._path.read_text())
            except (OSError, ValueError):
                self._data = {}
        return self._data

    def calibration(self, key: str) -> dict[str, float]:
        with self._lock:
            return dict(self._load().get(key, {}))

    def record(self, key: str, *, flops: float, seconds: float, prune_cells: float, prune_seconds: float,
               active_per_layer_token: float) -> None:
        """Fold one measured graph into the calibration."""
        with self._lock:
            data = self._load()
            old = data.get(key)
            new = {"s_per_flop": seconds / max(flops, 1.0),
                   "prune_s_per_cell": prune_seconds / max(prune_cells, 1.0),
                   "active_per_layer_token": active_per_layer_token, "runs": 1}
            if old:
                new = {name: (EMA * new[name] + (1 - EMA) * old.get(name, new[name])) for name in new}
                new["runs"] = old.get("runs", 0) + 1
            data[key] = new
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(self._path)

    def estimate(self, entry: ModelEntry, tc: TranscoderSetEntry, *, n_tokens: int, tokens_exact: bool,
                 dtype: str, device: str, device_name: str, batch_size: int, max_feature_nodes: int,
                 max_n_logits: int, loaded: bool, available_device: float | None,
                 available_host: float | None, measured_active: int | None = None) -> GraphEstimate:
        """The estimate for one request; `available_*` in bytes (None: unknown). `measured_active`:
        the active features counted on this prompt (after its first forward pass), which replaces
        the calibrated or assumed density."""
        s, notes = shape_of(entry, tc, n_tokens, dtype)
        cal = self.calibration(self.key(device_name, entry, tc, dtype))
        active = cal.get("active_per_layer_token")
        if measured_active is not None:
            active = measured_active / max(s.n_layers * n_tokens, 1)
            notes.append(f"Counted {measured_active:,} active features on this prompt after its forward pass.")
        elif active is None:
            active = min(ASSUMED_ACTIVE_PER_LAYER_TOKEN, s.d_transcoder)
            notes.append(f"Assumed {active:g} active features per layer and token until a graph of this "
                         "model has been measured.")
        z = sizes(entry, s, batch_size=batch_size, max_feature_nodes=max_feature_nodes,
                  max_n_logits=max_n_logits, active_per_layer_token=active)
        weights = 0 if loaded else model_bytes(entry, s)
        kind = device if device in ASSUMED_FLOPS else "cpu"
        on_gpu = kind != "cpu"
        device_need = weights + max(z.workspace, z.prune if on_gpu else 0)
        host_need = z.host + (0 if on_gpu else z.prune)
        if "s_per_flop" in cal:
            seconds = z.flops * cal["s_per_flop"] + z.n_nodes ** 2 * cal["prune_s_per_cell"]
            basis = (f"measured: calibrated by {int(cal.get('runs', 1))} earlier graph(s) of this model "
                     f"on {device_name}")
        else:
            seconds = z.flops / ASSUMED_FLOPS[kind] + z.n_nodes ** 2 * ASSUMED_PRUNE_S_PER_CELL[kind]
            basis = (f"rough: assumes {ASSUMED_FLOPS[kind] / 1e12:g} TFLOP/s on {kind}; calibrated after "
                     "the first graph")
        if not tokens_exact:
            notes.append("The tokenizer is not available yet, so the prompt length is an upper bound "
                         "(one token per byte).")
        if on_gpu:
            fits = None if available_device is None else device_need <= available_device
            if fits is not None and available_host is not None:
                fits = fits and host_need <= available_host
        else:
            room = [a for a in (available_device, available_host) if a is not None]
            fits = None if not room else device_need + host_need <= min(room)
        return GraphEstimate(
            n_tokens=n_tokens, tokens_exact=tokens_exact, n_layers=s.n_layers, feature_rows=z.feature_rows,
            logit_rows=z.logit_rows, backward_passes=z.backward_passes, batch_size=batch_size, device=device,
            model_gb=round(weights / GB, 3),
            workspace_gb=round(max(z.workspace, z.prune if on_gpu else 0) / GB, 3),
            device_gb=round(device_need / GB, 3), host_gb=round(host_need / GB, 3),
            available_device_gb=None if available_device is None else round(available_device / GB, 3),
            available_host_gb=None if available_host is None else round(available_host / GB, 3),
            fits=fits, seconds=round(seconds, 2), seconds_basis=basis, notes=notes,
        )


def fitting_batch_size(est: GraphEstimate) -> int | None:
    """The largest batch size below the request's whose forward activations would fit, if any."""
    if est.available_device_gb is None or est.batch_size <= 1:
        return None
    fixed = est.model_gb + (0 if est.device != "cpu" else est.host_gb)
    per_item = est.workspace_gb / est.batch_size
    if per_item <= 0:
        return None
    room = est.available_device_gb - fixed
    fit = int(room / per_item)
    return fit if 1 <= fit < est.batch_size else None
