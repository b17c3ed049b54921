"""Attribution graphs kept on disk under `<data_dir>/graphs`, so a request seen before costs nothing.

Two kinds of entries, both written to a temporary file and renamed when complete:

- `results/<key>.json.gz`: a finished `GraphResult` (graph JSON included), keyed by everything that
  decides its content (model weights, transcoders, dtype, device, prompt, logit and node budgets,
  thresholds). Batch size and offloading only change speed, the slug only the name: not in the key.
- `raw/<key>.safetensors`: circuit-tracer's unpruned `Graph` (adjacency matrix and feature tables as
  tensors, the rest as JSON in the safetensors header), keyed without the thresholds, so pruning
  the same graph differently never re-runs attribution. Written off the request's critical path.

Nothing is pickled: `Graph.to_pt` / `from_pt` would unpickle, so the raw format is our own.
Disk use is bounded (`Settings.graph_cache_gb`): the least recently used entries go first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from backend.atomic_files import atomic_write, folder_lock

log = logging.getLogger(__name__)


def cache_key(fields: dict[str, Any]) -> str:
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write(path, data)  # unique temporary name, renamed under the folder's inter-process lock


def _result_problem(data: Any) -> str | None:
    """Why a decoded result entry is not a graph answer (None: it is one). Checked on every read, so
    a well-formed entry of the wrong shape is dropped and recomputed, never served."""
    from pydantic import ValidationError

    from backend.schemas.graph import GraphResult

    try:
        result = GraphResult.model_validate(data)
    except ValidationError as exc:
        return f"not a GraphResult ({exc.error_count()} errors)"
    graph = result.graph
    if not isinstance(graph, dict):
        return "it holds no graph"
    if not isinstance(graph.get("nodes"), list) or not isinstance(graph.get("links"), list):
        return "its graph has no nodes and links lists"
    if not isinstance(graph.get("metadata"), dict):
        return "its graph has no metadata"
    return None


def graph_to_tensors(graph: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """A circuit-tracer Graph as safetensors tensors + header metadata (no pickling).

    Only the rows that can hold edges are stored: feature rows and logit rows (error and token
    nodes have no inputs)."""
    n_features = len(graph.selected_features)
    n_logits = len(graph.logit_targets)
    adj = graph.adjacency_matrix
    tensors = {
        "feature_rows": adj[:n_features].contiguous(),
        "logit_rows": adj[adj.shape[0] - n_logits:].contiguous(),
        "active_features": graph.active_features.contiguous(),
        "activation_values": graph.activation_values.contiguous(),
        "selected_features": graph.selected_features.contiguous(),
        "input_tokens": graph.input_tokens.contiguous(),
        "logit_probabilities": graph.logit_probabilities.contiguous(),
    }
    cfg = {k: (str(v) if k == "dtype" else v) for k, v in graph.cfg.to_dict().items()}
    meta = {
        "input_string": graph.input_string,
        "logit_targets": [[t.token_str, int(t.vocab_idx)] for t in graph.logit_targets],
        "vocab_size": int(graph.vocab_size),
        "cfg": cfg,
        "scan": graph.scan,
        "n_nodes": int(adj.shape[0]),
    }
    return {k: v.detach().cpu() for k, v in tensors.items()}, {"featurescope_graph": json.dumps(meta)}


def graph_from_file(path: Path) -> Any:
    import torch
    from circuit_tracer import Graph
    from circuit_tracer.attribution.targets import LogitTarget
    from circuit_tracer.utils.tl_nnsight_mapping import UnifiedConfig
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = json.loads(f.metadata()["featurescope_graph"])
        t = {k: f.get_tensor(k) for k in f.keys()}
    n = int(meta["n_nodes"])
    adj = torch.zeros(n, n, dtype=t["feature_rows"].dtype)
    adj[: t["feature_rows"].shape[0]] = t["feature_rows"]
    adj[n - t["logit_rows"].shape[0]:] = t["logit_rows"]
    cfg = {f.name: meta["cfg"].get(f.name) for f in dataclasses.fields(UnifiedConfig) if f.name != "dtype"}
    return Graph(
        input_string=meta["input_string"], input_tokens=t["input_tokens"],
        active_features=t["active_features"], adjacency_matrix=adj, cfg=UnifiedConfig.from_dict(cfg),
        selected_features=t["selected_features"], activation_values=t["activation_values"],
        logit_targets=[LogitTarget(s, int(i)) for s, i in meta["logit_targets"]],
        logit_probabilities=t["logit_probabilities"], scan=meta["scan"], vocab_size=meta["vocab_size"],
    )


class GraphCache:
    def __init__(self, root: Path, budget_bytes: int) -> None:
        self.root = Path(root)
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}  # raw graphs being written: key -> Graph
        self._writers: list[threading.Thread] = []

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def _result_path(self, key: str) -> Path:
        return self.root / "results" / f"{key}.json.gz"

    def _raw_path(self, key: str) -> Path:
        return self.root / "raw" / f"{key}.safetensors"

    # ------------------------------------------------------------------ results
    def get_result(self, key: str) -> dict[str, Any] | None:
        path = self._result_path(key)
        if not self.enabled or not path.exists():
            return None
        try:
            data = json.loads(gzip.decompress(path.read_bytes()))
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # a damaged entry is rebuilt
            return None
        problem = _result_problem(data)
        if problem is not None:  # well-formed but of the wrong shape: rebuilt too
            log.warning("Dropping cached graph result %s: %s", path.name, problem)
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):  # another process may have evicted it meanwhile
            os.utime(path)
        return data

    def put_result(self, key: str, payload: dict[str, Any]) -> None:
        if not self.enabled:
            return
        data = gzip.compress(json.dumps(payload, separators=(",", ":")).encode(), compresslevel=3)
        _atomic_write(self._result_path(key), data)
        self._evict()

    # ------------------------------------------------------------------ raw graphs
    def get_raw(self, key: str) -> Any | None:
        with self._lock:
            if key in self._pending:
                return self._pending[key]
        path = self._raw_path(key)
        if not self.enabled or not path.exists():
            return None
        try:
            graph = graph_from_file(path)
        except Exception as exc:  # a damaged or foreign file: drop it and recompute
            log.warning("Dropping unreadable cached graph %s: %s", path, exc)
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return graph

    def put_raw(self, key: str, graph: Any, *, background: bool = True) -> None:
        """Store an unpruned graph; in a background thread unless asked not to."""
        if not self.enabled:
            return
        with self._lock:
            self._pending[key] = graph
        if not background:
            self._write_raw(key, graph)
            return
        thread = threading.Thread(target=self._write_raw, args=(key, graph), name=f"graph-cache-{key[:8]}",
                                  daemon=True)
        with self._lock:
            self._writers = [w for w in self._writers if w.is_alive()] + [thread]
        thread.start()

    def _write_raw(self, key: str, graph: Any) -> None:
        from safetensors.torch import save

        try:
            tensors, meta = graph_to_tensors(graph)
            _atomic_write(self._raw_path(key), save(tensors, metadata=meta))
            self._evict()
        except OSError as exc:
            log.warning("Could not cache graph %s: %s", key, exc)
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def flush(self) -> None:
        """Wait for background writes (tests and benchmarks)."""
        with self._lock:
            writers = list(self._writers)
        for w in writers:
            w.join()

    # ------------------------------------------------------------------ size
    def _evict(self) -> None:
        with self._lock, folder_lock(self.root):
            files = [p for sub in ("results", "raw") for p in (self.root / sub).glob("*") if p.is_file()
                     and not p.name.startswith(".")]
            stats = []
            for p in files:
                try:
                    st = p.stat()
                except OSError:
                    continue
                stats.append((st.st_mtime, st.st_size, p))
            total = sum(size for _, size, _ in stats)
            for _, size, p in sorted(stats):
                if total <= self.budget_bytes:
                    break
                p.unlink(missing_ok=True)
                total -= size

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for sub in ("results", "raw") for p in (self.root / sub).glob("*")
                   if p.is_file())
