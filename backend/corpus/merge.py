"""Shards -> one store. The same code runs whichever executor built the shards.

Token-major data (tokens, documents, z_idx/z_val) is copied shard after shard in bounded chunks.
The feature-major index is merged by groups of features: each shard's index is already sorted by
feature, so a group's entries are one contiguous slice per shard; the slices are re-sorted by
value (ties in token order) and written at the group's place in the final index. Memory stays
under `budget_entries` entries whatever the corpus size. Statistics are sums (counts, sums,
histograms) and maxima.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from backend.corpus import faults
from backend.corpus import layout as L
from backend.corpus.store import CorpusStore
from backend.corpus.writer import finish_file, partial_path, write_header, write_layer_header
from backend.errors import StoreError
from backend.protocol import Progress, no_progress

COPY_ROWS = 1 << 18
SHARD_ONLY_ATTRS = {"kind", "shard", "doc_start", "n_tokens", "n_docs", "complete", "format", "version"}


def _same_weights(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None) == (b is None) and (a is None or L.probes_match(a, b))


def _check_compatible(parts: list[CorpusStore]) -> None:
    first = parts[0]
    for p in parts[1:]:
        if not _same_weights(first.model_probe, p.model_probe) or any(
                not _same_weights(first.layer(x).probe, p.layer(x).probe) for x in first.layer_ids
                if x in p.layer_ids):
            raise StoreError(f"Shard {p.path.name} was encoded with other weights than {first.path.name}. "
                             "Deploy the same model and SAE files to every worker, delete the parts folder and "
                             "build again.")
        if p.layer_ids != first.layer_ids:
            raise StoreError(f"Shard {p.path.name} has layers {p.layer_ids}, {first.path.name} has "
                             f"{first.layer_ids}: these shards come from different builds.")
        for layer in first.layer_ids:
            a, b = first.layer(layer), p.layer(layer)
            if (a.d_sae, a.k, a.hook_name) != (b.d_sae, b.k, b.hook_name):
                raise StoreError(f"Shard {p.path.name} layer {layer} differs from {first.path.name} "
                                 "(width, k or hook): these shards come from different builds.")


def _copy_rows(src: h5py.Dataset, dst: h5py.Dataset, start: int, transform=None) -> None:
    n = src.shape[0]
    for a in range(0, n, COPY_ROWS):
        rows = src[a:a + COPY_ROWS]
        dst[start + a:start + a + len(rows)] = rows if transform is None else transform(rows)


def _copy_offsets(src: h5py.Dataset, dst: h5py.Dataset, start: int, shift: int) -> None:
    """Append offsets [1:] of a part, shifted, after `start` entries of the merged offsets."""
    for a in range(1, src.shape[0], COPY_ROWS):
        rows = src[a:a + COPY_ROWS] + shift
        dst[start + a:start + a + len(rows)] = rows


def _feature_groups(offsets: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive feature ranges [a, b) holding at most `budget` entries (at least one feature)."""
    groups, a, d = [], 0, len(offsets) - 1
    while a < d:
        b = int(np.searchsorted(offsets, offsets[a] + budget, side="right")) - 1
        b = min(max(b, a + 1), d)
        groups.append((a, b))
        a = b
    return groups


def _merge_layer(out: h5py.File, parts: list[CorpusStore], bases: np.ndarray, layer: int, n_tokens: int,
                 budget: int, progress: Progress) -> None:
    views = [p.layer(layer) for p in parts]
    spec = views[0]
    g = out.create_group(L.layer_path(layer))
    write_layer_header(g, spec.spec())
    z_idx = L.create(g, L.Z_IDX, shape=(n_tokens, spec.k), dtype=L.idx_dtype(spec.d_sae))
    z_val = L.create(g, L.Z_VAL, shape=(n_tokens, spec.k), dtype=np.float32)
    for v, base in zip(views, bases):
        _copy_rows(v.ds(L.Z_IDX), z_idx, int(base))
        _copy_rows(v.ds(L.Z_VAL), z_val, int(base))

    d = spec.d_sae
    count, total = np.zeros(d, np.int64), np.zeros(d, np.float64)
    peak = np.zeros(d, np.float32)
    for v in views:
        count += v.count
        total += v.ds(L.STAT_SUM)[:]
        np.maximum(peak, v.peak, out=peak)
    for name, arr in ((L.STAT_COUNT, count), (L.STAT_SUM, total), (L.STAT_MAX, peak)):
        L.create(g, name, shape=arr.shape, dtype=arr.dtype, data=arr)
    hist = L.create(g, L.STAT_HIST, shape=(d, L.N_BINS), dtype=np.int64, compress=True)
    for a in range(0, d, 4096):
        hist[a:a + 4096] = sum(v.ds(L.STAT_HIST)[a:a + 4096] for v in views)

    part_offsets = [v.offsets for v in views]
    offsets = np.sum(part_offsets, axis=0)
    L.create(g, L.INDEX_OFFSETS, shape=offsets.shape, dtype=np.int64, data=offsets)
    tok_ds = L.create(g, L.INDEX_TOKEN, shape=(int(offsets[-1]),), dtype=L.position_dtype(n_tokens))
    val_ds = L.create(g, L.INDEX_VALUE, shape=(int(offsets[-1]),), dtype=np.float32)
    groups = _feature_groups(offsets, budget)
    for gi, (a, b) in enumerate(groups):
        feats, toks, vals = [], [], []
        for v, off, base in zip(views, part_offsets, bases):
            lo, hi = int(off[a]), int(off[b])
            if hi == lo:
                continue
            feats.append(np.repeat(np.arange(a, b, dtype=np.int64), np.diff(off[a:b + 1])))
            toks.append(v.ds(L.INDEX_TOKEN)[lo:hi].astype(np.uint64) + np.uint64(base))
            vals.append(v.ds(L.INDEX_VALUE)[lo:hi])
        if feats:
            feature, token, value = np.concatenate(feats), np.concatenate(toks), np.concatenate(vals)
            order = L.sort_entries(feature, value)
            tok_ds[offsets[a]:offsets[b]] = token[order]
            val_ds[offsets[a]:offsets[b]] = value[order]
        progress((gi + 1) / len(groups), f"Merging layer {layer}: features {b:,}/{d:,}")
        faults.checkpoint("merge-group", layer, gi)


def merge_stores(shards: Sequence[Path], out_path: Path, *, attrs: dict[str, Any] | None = None,
                 budget_entries: int = 1 << 24, progress: Progress | None = None) -> Path:
    """Merge complete shard stores (in corpus order) into `out_path`, atomically."""
    progress = progress or no_progress
    if not shards:
        raise StoreError("There are no shards to merge.")
    parts = [CorpusStore(p) for p in shards]
    try:
        _check_compatible(parts)
        sizes = np.array([p.n_tokens for p in parts], np.int64)
        bases = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        n_tokens, n_docs = int(sizes.sum()), sum(p.n_docs for p in parts)
        out_path = Path(out_path)
        tmp = partial_path(out_path)
        tmp.unlink(missing_ok=True)
        header = {k: v for k, v in parts[0].raw_attrs().items() if k not in SHARD_ONLY_ATTRS}
        header.update(attrs or {})
        header["kind"] = "store"
        out = h5py.File(tmp, "w")
        try:
            write_header(out, header, parts[0].model_probe)
            progress(None, f"Merging {len(parts)} shard(s): tokens and documents…")
            tokens = L.create(out, L.TOKENS, shape=(n_tokens,), dtype=np.uint32)
            doc_off = L.create(out, L.DOC_OFFSETS, shape=(n_docs + 1,), dtype=np.int64)
            n_meta = sum(p.ds(L.DOC_META).shape[0] for p in parts)
            meta = L.create(out, L.DOC_META, shape=(n_meta,), dtype=np.uint8)
            meta_off = L.create(out, L.DOC_META_OFFSETS, shape=(n_docs + 1,), dtype=np.int64)
            doc_off[0] = meta_off[0] = 0
            doc_base = meta_base = 0
            for p, base in zip(parts, bases):
                _copy_rows(p.ds(L.TOKENS), tokens, int(base))
                _copy_offsets(p.ds(L.DOC_OFFSETS), doc_off, doc_base, int(base))
                _copy_offsets(p.ds(L.DOC_META_OFFSETS), meta_off, doc_base, meta_base)
                _copy_rows(p.ds(L.DOC_META), meta, meta_base)
                doc_base += p.n_docs
                meta_base += p.ds(L.DOC_META).shape[0]
            for layer in parts[0].layer_ids:
                _merge_layer(out, parts, bases, layer, n_tokens, budget_entries, progress)
            out.attrs["n_tokens"] = n_tokens
            out.attrs["n_docs"] = n_docs
            return finish_file(out, tmp, out_path)
        except BaseException:
            if out.id.valid:
                out.close()
            tmp.unlink(missing_ok=True)
            raise
    finally:
        for p in parts:
            p.close()
