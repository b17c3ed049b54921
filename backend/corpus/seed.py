"""`import-seed`: the Modal design's files -> a store, with its feature-major index.

The seed keeps, per token row of `*_sae_features_*.h5`, `z_idx` and `z_val` (the TopK SAE's k
active features, with their sign) and `rev_idx` (the review the row belongs to); its metadata
`.npz` has `review_ids`, `texts`, `stars`, `useful`, `user_ids` and `business_ids`. It ran each
review in 64-token windows, the last one padded, so a review owns a run of rows: either exactly
its tokens, or its tokens followed by the last window's padding (dropped here, so padding never
shows up as an example). Token ids are not in the seed file: each review's text is tokenised
again with the model's tokenizer and must give exactly the run's number of real tokens.

Document offsets replace the seed's `review_token_positions.pkl`; nothing is unpickled (the
`.npz` object arrays are read by `npy_objects`). Rows stream in chunks, so the 9 GB file never
sits in memory; shards of `shard_tokens` tokens are written and merged by the usual merge.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from backend.corpus.build import parts_dir
from backend.corpus.merge import merge_stores
from backend.corpus.npy_objects import NpzReader
from backend.corpus.store import refuse_links
from backend.corpus.writer import LayerSpec, StoreWriter
from backend.errors import InvalidRequest
from backend.protocol import Progress, no_progress

META_FIELDS = {"review_ids": "review_id", "stars": "stars", "useful": "useful", "user_ids": "user_id",
               "business_ids": "business_id"}
CHUNK_ROWS = 1 << 18


def _key(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _scalar(x: Any) -> Any:
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, bytes):
        x = x.decode("utf-8", "replace")
    if isinstance(x, float) and x != x:
        return None
    return x if x is None or isinstance(x, (str, int, float, bool)) else str(x)


def load_metadata(npz: Path) -> tuple[dict[str, int], np.ndarray, dict[str, np.ndarray]]:
    """(review id -> row, texts, other per-review columns) from the seed's metadata archive."""
    reader = NpzReader(npz)
    try:
        for need in ("review_ids", "texts"):
            if need not in reader.names:
                raise InvalidRequest(f"{npz} lacks '{need}'; the seed's metadata has review_ids, texts, stars, "
                                     f"useful, user_ids and business_ids (it has {reader.names}).")
        ids = reader.get("review_ids")
        texts = reader.get("texts")
        columns = {}
        for name in reader.names:
            if name in ("review_ids", "texts"):
                continue
            arr = reader.get(name)
            if arr.shape == ids.shape:
                columns[META_FIELDS.get(name, name)] = arr
    finally:
        reader.close()
    if texts.shape != ids.shape:
        raise InvalidRequest(f"{npz}: {len(ids)} review ids but {len(texts)} texts.")
    lookup = {_key(r): i for i, r in enumerate(ids.tolist())}
    return lookup, texts, columns


def import_seed(h5_path: Path, npz_path: Path, out: Path, *, model: str, sae_set: str, layer: int, d_sae: int,
                tokenizer: Any, window: int = 64, hook_name: str = "", shard_tokens: int = 1 << 22,
                progress: Progress | None = None) -> Path:
    progress = progress or no_progress
    out = Path(out).expanduser().resolve()
    lookup, texts, columns = load_metadata(Path(npz_path))
    try:
        f = h5py.File(h5_path, "r")
    except OSError as exc:
        raise InvalidRequest(f"{h5_path} is not a readable HDF5 file ({str(exc).splitlines()[0]}).") from exc
    work = parts_dir(out)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        refuse_links(f, Path(h5_path))
        for name in ("z_idx", "z_val", "rev_idx"):
            if name not in f:
                raise InvalidRequest(f"{h5_path} has no '{name}'; a seed store has z_idx, z_val and rev_idx.")
        z_idx, z_val, rev = f["z_idx"], f["z_val"], f["rev_idx"]
        n, k = z_idx.shape
        if z_val.shape != (n, k) or rev.shape[:1] != (n,):
            raise InvalidRequest(f"{h5_path}: z_idx {z_idx.shape}, z_val {z_val.shape} and rev_idx {rev.shape} "
                                 "do not agree.")
        attrs = {"kind": "shard", "model": model, "sae_set": sae_set, "dictionary_kind": "sae", "layers": [layer],
                 "k": k, "seq_len": window, "prepend_bos": False}
        spec = LayerSpec(layer, d_sae, k, hook_name)
        shards: list[Path] = []
        writer: StoreWriter | None = None
        seen: set[str] = set()
        stats = {"docs": 0, "padding_rows": 0}

        def new_writer() -> StoreWriter:
            path = work / f"shard-{len(shards):05d}.h5"
            shards.append(path)
            return StoreWriter(path, attrs={**attrs, "shard": len(shards) - 1}, layers=[spec])

        start = 0
        while start < n:
            stop = min(n, start + CHUNK_ROWS)
            r = np.array([_key(x) for x in rev[start:stop]], dtype=object)
            change = np.flatnonzero(r[1:] != r[:-1]) + 1
            runs = np.concatenate([[0], change, [len(r)]])
            if stop < n:
                if len(runs) == 2:  # one review longer than the chunk: no complete run yet
                    raise InvalidRequest(f"Review {r[0]} spans over {CHUNK_ROWS:,} rows; is rev_idx sorted by review?")
                runs = runs[:-1]  # the last run may continue in the next chunk
            zi, zv = z_idx[start:start + runs[-1]], z_val[start:start + runs[-1]]
            pending: list[tuple[np.ndarray, dict[str, Any], np.ndarray]] = []
            pending_tokens = [0]

            def flush() -> None:
                nonlocal writer
                if not pending:
                    return
                if writer is None:
                    writer = new_writer()
                rows = np.concatenate([p[2] for p in pending])
                writer.add_documents([p[0] for p in pending], [p[1] for p in pending])
                writer.add_activations(layer, zi[rows], zv[rows].astype(np.float32))
                pending.clear()
                pending_tokens[0] = 0
                if writer.n_tokens >= shard_tokens:
                    writer.finish()
                    writer = None

            for a, b in zip(runs[:-1], runs[1:]):
                rid = r[a]
                if rid in seen:
                    raise InvalidRequest(f"Review {rid} appears in two separate runs of rev_idx; the seed writes "
                                         "each review's rows together.")
                seen.add(rid)
                if rid not in lookup:
                    raise InvalidRequest(f"Review {rid} of {h5_path} is not in {npz_path}.")
                row = lookup[rid]
                ids = tokenizer(str(texts[row]), add_special_tokens=False)["input_ids"]
                rows = int(b - a)
                padded = -(-len(ids) // window) * window
                if rows not in (len(ids), padded):
                    raise InvalidRequest(
                        f"Review {rid} has {rows} rows in {h5_path} but its text gives {len(ids)} tokens "
                        f"({padded} with {window}-token windows padded): use the model's own tokenizer "
                        "(--tokenizer) and --window as the seed ran them.")
                stats["padding_rows"] += rows - len(ids)
                stats["docs"] += 1
                meta = {"review_id": rid, **{c: _scalar(v[row]) for c, v in columns.items()}}
                pending.append((np.asarray(ids, np.int64), meta, np.arange(a, a + len(ids))))
                pending_tokens[0] += len(ids)
                if (writer.n_tokens if writer is not None else 0) + pending_tokens[0] >= shard_tokens:
                    flush()
            flush()
            start += int(runs[-1])
            progress(start / n, f"Importing the seed store: {start:,}/{n:,} rows, {stats['docs']:,} reviews")
        if writer is not None:
            writer.finish()
        if not shards:
            raise InvalidRequest(f"{h5_path} holds no rows.")
        merge_stores(shards, out, progress=progress, attrs={
            "imported_from": {"h5": str(h5_path), "metadata": str(npz_path)}, "window": window,
            "docs_total": len(lookup), "docs_used": stats["docs"], "padding_rows_dropped": stats["padding_rows"]})
    finally:
        f.close()
        shutil.rmtree(work, ignore_errors=True)
    return out
