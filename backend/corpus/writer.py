"""Writing one store file: documents and token-major activations appended in batches, then the
feature-major index and the statistics, then `complete`, then the rename.

A shard is a store of a slice of the corpus (its token positions start at 0); the merge turns
shards into the final store. The seed import and the benchmark's synthetic store use the same
writer, so every store goes through the same code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from backend.corpus import layout as L
from backend.errors import InvalidRequest


@dataclass(frozen=True)
class LayerSpec:
    layer: int
    d_sae: int
    k: int
    hook_name: str
    probe: np.ndarray | None = None


class LayerStats:
    """Per-feature accumulators over every firing (> 0) activation: count, sum, max, histogram."""

    def __init__(self, d_sae: int) -> None:
        self.count = np.zeros(d_sae, np.int64)
        self.total = np.zeros(d_sae, np.float64)
        self.peak = np.zeros(d_sae, np.float32)
        self.hist = np.zeros((d_sae, L.N_BINS), np.int64)

    def add(self, count: np.ndarray, total: np.ndarray, peak: np.ndarray, hist: np.ndarray) -> None:
        self.count += count
        self.total += total
        np.maximum(self.peak, peak, out=self.peak)
        self.hist += hist

    def add_entries(self, feature: np.ndarray, value: np.ndarray) -> None:
        """Accumulate from sparse (feature, value) entries; only values > 0 count."""
        d = len(self.count)
        keep = value > 0
        f, v = feature[keep].astype(np.int64), value[keep].astype(np.float32)
        if not len(f):
            return
        peak = np.zeros(d, np.float32)
        np.maximum.at(peak, f, v)
        hist = np.bincount(f * L.N_BINS + L.bins_of(v), minlength=d * L.N_BINS).reshape(d, L.N_BINS)
        self.add(np.bincount(f, minlength=d), np.bincount(f, weights=v.astype(np.float64), minlength=d),
                 peak, hist)


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def write_index(group: h5py.Group, d_sae: int, z_idx: np.ndarray, z_val: np.ndarray, n_tokens: int) -> None:
    """The feature-major index of one layer from its token-major rows (held in memory: one shard)."""
    flat = np.flatnonzero(z_val.reshape(-1) > 0)
    k = z_val.shape[1] if z_val.ndim == 2 else 1
    feature = z_idx.reshape(-1)[flat].astype(np.int64)
    value = z_val.reshape(-1)[flat]
    if len(feature) and int(feature.max()) >= d_sae:
        raise InvalidRequest(f"Feature id {int(feature.max())} is out of range for a dictionary of {d_sae}.")
    order = L.sort_entries(feature, value)
    offsets = np.zeros(d_sae + 1, np.int64)
    np.cumsum(np.bincount(feature, minlength=d_sae), out=offsets[1:])
    L.create(group, L.INDEX_OFFSETS, shape=offsets.shape, dtype=np.int64, data=offsets)
    tokens = (flat[order] // k).astype(L.position_dtype(n_tokens))
    L.create(group, L.INDEX_TOKEN, shape=tokens.shape, dtype=tokens.dtype, data=tokens)
    L.create(group, L.INDEX_VALUE, shape=(len(order),), dtype=np.float32, data=value[order])


def write_stats(group: h5py.Group, stats: LayerStats) -> None:
    for name, arr in ((L.STAT_COUNT, stats.count), (L.STAT_SUM, stats.total), (L.STAT_MAX, stats.peak)):
        L.create(group, name, shape=arr.shape, dtype=arr.dtype, data=arr)
    L.create(group, L.STAT_HIST, shape=stats.hist.shape, dtype=np.int64, data=stats.hist, compress=True)


def set_attrs(obj: h5py.File | h5py.Group, attrs: dict[str, Any]) -> None:
    """Scalars as HDF5 attributes, lists and dicts as JSON text; None is left out."""
    for key, value in attrs.items():
        if value is not None:
            obj.attrs[key] = L.dumps(value) if isinstance(value, (dict, list, tuple)) else value


def write_header(f: h5py.File, attrs: dict[str, Any], model_probe: np.ndarray | None) -> None:
    f.attrs["format"] = L.FORMAT
    f.attrs["version"] = L.VERSION
    f.attrs["complete"] = False
    set_attrs(f, attrs)
    L.create(f, L.HIST_EDGES, shape=L.EDGES.shape, dtype=np.float32, data=L.EDGES)
    if model_probe is not None:
        L.create(f, L.MODEL_PROBE, shape=model_probe.shape, dtype=np.float32, data=model_probe)


def write_layer_header(g: h5py.Group, spec: LayerSpec) -> None:
    g.attrs["layer"] = spec.layer
    g.attrs["d_sae"] = spec.d_sae
    g.attrs["k"] = spec.k
    g.attrs["hook_name"] = spec.hook_name
    if spec.probe is not None:
        L.create(g, L.PROBE, shape=spec.probe.shape, dtype=np.float32, data=spec.probe)


def finish_file(f: h5py.File, tmp: Path, path: Path) -> Path:
    f.attrs["complete"] = True
    f.flush()
    f.close()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


class StoreWriter:
    """Writes `path` (via a `.partial` file beside it) from batches of documents and activations."""

    def __init__(self, path: Path, *, attrs: dict[str, Any], layers: Sequence[LayerSpec],
                 model_probe: np.ndarray | None = None) -> None:
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self.tmp.unlink(missing_ok=True)
        self.layers = {spec.layer: spec for spec in layers}
        self.f = h5py.File(self.tmp, "w")
        write_header(self.f, attrs, model_probe)
        L.create(self.f, L.TOKENS, shape=(0,), dtype=np.uint32, resizable=True)
        L.create(self.f, L.DOC_OFFSETS, shape=(1,), dtype=np.int64, resizable=True, data=np.zeros(1, np.int64))
        L.create(self.f, L.DOC_META, shape=(0,), dtype=np.uint8, resizable=True)
        L.create(self.f, L.DOC_META_OFFSETS, shape=(1,), dtype=np.int64, resizable=True,
                 data=np.zeros(1, np.int64))
        self.stats = {}
        for spec in layers:
            g = self.f.create_group(L.layer_path(spec.layer))
            write_layer_header(g, spec)
            L.create(g, L.Z_IDX, shape=(0, spec.k), dtype=L.idx_dtype(spec.d_sae), resizable=True)
            L.create(g, L.Z_VAL, shape=(0, spec.k), dtype=np.float32, resizable=True)
            self.stats[spec.layer] = LayerStats(spec.d_sae)
        self.n_tokens = 0
        self.n_meta_bytes = 0

    def add_documents(self, ids: Sequence[np.ndarray], metas: Sequence[dict[str, Any]]) -> None:
        if not ids:
            return
        lengths = np.array([len(x) for x in ids], np.int64)
        L.append(self.f[L.TOKENS], np.concatenate(ids).astype(np.uint32))
        L.append(self.f[L.DOC_OFFSETS], self.n_tokens + np.cumsum(lengths))
        encoded = [L.dumps(m).encode("utf-8") for m in metas]
        L.append(self.f[L.DOC_META], np.frombuffer(b"".join(encoded), np.uint8))
        L.append(self.f[L.DOC_META_OFFSETS], self.n_meta_bytes + np.cumsum([len(e) for e in encoded]))
        self.n_tokens += int(lengths.sum())
        self.n_meta_bytes += sum(len(e) for e in encoded)

    def add_activations(self, layer: int, z_idx: np.ndarray, z_val: np.ndarray,
                        stats: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        """Rows of token-major top-k activations; `stats` (count, sum, max, hist) when they were
        computed from the dense activations, else they are computed from these entries."""
        g = self.f[L.layer_path(layer)]
        L.append(g[L.Z_IDX], z_idx.astype(L.idx_dtype(self.layers[layer].d_sae)))
        L.append(g[L.Z_VAL], z_val.astype(np.float32))
        if stats is None:
            self.stats[layer].add_entries(z_idx.reshape(-1), z_val.reshape(-1))
        else:
            self.stats[layer].add(*stats)

    def finish(self, **attrs: Any) -> Path:
        for layer, spec in self.layers.items():
            g = self.f[L.layer_path(layer)]
            if g[L.Z_IDX].shape[0] != self.n_tokens:
                raise InvalidRequest(f"Layer {layer} has {g[L.Z_IDX].shape[0]} activation rows for "
                                     f"{self.n_tokens} tokens.")
            write_index(g, spec.d_sae, g[L.Z_IDX][:], g[L.Z_VAL][:], self.n_tokens)
            write_stats(g, self.stats[layer])
        self.f.attrs["n_tokens"] = self.n_tokens
        self.f.attrs["n_docs"] = self.f[L.DOC_OFFSETS].shape[0] - 1
        set_attrs(self.f, attrs)
        return finish_file(self.f, self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            self.tmp.unlink(missing_ok=True)
