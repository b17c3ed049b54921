"""The store's HDF5 layout: names, dtypes, chunking, the histogram bins and weight probes.

Every writer (shards, the merge, the seed import, the benchmark's synthetic store) creates its
datasets through `create`, so every large dataset is chunked with a Fletcher-32 checksum: a
flipped byte in a chunk makes the read fail (and the reader says so) instead of answering wrong.
Nothing records a time, so the same inputs give byte-identical files.
"""

from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np

FORMAT = "featurescope-corpus-store"
VERSION = 1

# Root datasets
TOKENS = "tokens"  # uint32 [n_tokens] token ids, documents back to back
DOC_OFFSETS = "doc_offsets"  # int64 [n_docs + 1]; document d is tokens[off[d]:off[d+1]]
DOC_META = "doc_meta"  # uint8: the documents' metadata, one utf-8 JSON object each, back to back
DOC_META_OFFSETS = "doc_meta_offsets"  # int64 [n_docs + 1] byte offsets into doc_meta
HIST_EDGES = "hist_edges"  # float32 [N_BINS + 1], shared by every feature
MODEL_PROBE = "model_probe"  # float32 sample of the unembedding, to recognise the weights

# Per layer, under layers/<L>/
Z_IDX = "z_idx"  # [n_tokens, k] feature ids of each token's top-k (seed layout)
Z_VAL = "z_val"  # float32 [n_tokens, k] their activations (<= 0: not firing)
INDEX_OFFSETS = "index/offsets"  # int64 [d_sae + 1]; feature f's entries are [off[f], off[f+1])
INDEX_TOKEN = "index/token"  # global token position of each entry
INDEX_VALUE = "index/value"  # float32, descending within a feature (ties: token order)
STAT_COUNT = "stats/count"  # int64 [d_sae] tokens where the feature fires (> 0)
STAT_SUM = "stats/sum"  # float64 [d_sae] sum of its activations where it fires
STAT_MAX = "stats/max"  # float32 [d_sae]
STAT_HIST = "stats/hist"  # int64 [d_sae, N_BINS] counts of firing activations per bin
PROBE = "probe"  # float32 sample of the decoder, to recognise the dictionary

# Histogram: one underflow bin (0, 1e-4), 20 log-spaced bins per decade up to 1e4, one overflow.
HIST_LOW_EXP, HIST_HIGH_EXP, HIST_PER_DECADE = -4, 4, 20
_INNER = np.power(10.0, np.linspace(HIST_LOW_EXP, HIST_HIGH_EXP,
                                    (HIST_HIGH_EXP - HIST_LOW_EXP) * HIST_PER_DECADE + 1)).astype(np.float32)
HIST_INNER = _INNER  # boundaries between bins
N_BINS = len(_INNER) + 1
EDGES = np.concatenate([[0.0], _INNER, [np.inf]]).astype(np.float32)

N_PROBE = 64

# Chunk rows: small enough that an example's context (a few rows) decodes little, large enough that
# a sequential scan is not dominated by per-chunk overhead.
CHUNK = {TOKENS: 8192, DOC_OFFSETS: 8192, DOC_META: 16384, DOC_META_OFFSETS: 8192, Z_IDX: 512, Z_VAL: 512,
         INDEX_OFFSETS: 8192, INDEX_TOKEN: 8192, INDEX_VALUE: 8192, STAT_COUNT: 8192, STAT_SUM: 8192,
         STAT_MAX: 8192, STAT_HIST: 512}


def layer_path(layer: int) -> str:
    return f"layers/{int(layer)}"


def bins_of(values: np.ndarray) -> np.ndarray:
    """Histogram bin of each (positive, float32) activation."""
    return np.searchsorted(HIST_INNER, np.asarray(values, dtype=np.float32), side="right")


def idx_dtype(d_sae: int) -> np.dtype:
    return np.dtype(np.uint16) if d_sae <= 1 << 16 else np.dtype(np.uint32)


def position_dtype(n_tokens: int) -> np.dtype:
    return np.dtype(np.uint32) if n_tokens < 1 << 32 else np.dtype(np.uint64)


def create(group: h5py.Group, name: str, *, shape: tuple[int, ...], dtype: Any, resizable: bool = False,
           data: np.ndarray | None = None, compress: bool = False) -> h5py.Dataset:
    """A chunked, checksummed dataset (resizable along the first axis if asked)."""
    rows = CHUNK.get(name, 8192)
    first = max(1, rows if resizable else min(rows, shape[0] if shape else 1))
    chunks = (first, *[max(1, s) for s in shape[1:]])
    maxshape = (None, *shape[1:]) if resizable else None
    return group.create_dataset(
        name, shape=shape, dtype=dtype, data=data, chunks=chunks, maxshape=maxshape, fletcher32=True,
        compression="gzip" if compress else None, compression_opts=1 if compress else None, track_times=False,
    )


def append(ds: h5py.Dataset, rows: np.ndarray) -> None:
    n = ds.shape[0]
    if len(rows) == 0:
        return
    ds.resize(n + len(rows), axis=0)
    ds[n:n + len(rows)] = rows


def probe_positions(numel: int, n: int = N_PROBE) -> np.ndarray:
    """Flat positions sampled from a weight tensor to recognise it later."""
    return np.unique(np.linspace(0, max(numel - 1, 0), n).astype(np.int64))


def probes_match(stored: np.ndarray, current: np.ndarray) -> bool:
    """Same weights, allowing for a different dtype (bf16 on a GPU vs float32 on a CPU)."""
    stored, current = np.asarray(stored, np.float32), np.asarray(current, np.float32)
    if stored.shape != current.shape:
        return False
    scale = float(np.abs(stored).max()) if stored.size else 0.0
    return bool(np.allclose(stored, current, rtol=2e-2, atol=1e-3 * scale + 1e-12))


def sort_entries(feature: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Order of entries by feature, then by value descending; ties keep their given order."""
    bits = np.asarray(value, np.float32).view(np.uint32).astype(np.uint64)  # positive floats: monotone
    key = (np.asarray(feature, np.uint64) << np.uint64(32)) | (np.uint64(0xFFFFFFFF) - bits)
    return np.argsort(key, kind="stable")


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
