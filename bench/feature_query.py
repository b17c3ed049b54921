"""Top examples of a feature: through the store's feature-major index vs a scan in the seed's style.

Builds a synthetic store (random token ids; each token's k distinct features with TopK-like
values) with the real writer and merge, then, for random features, reads the top-n entries
through the index, and finds the same top-n with a vectorised chunked scan of z_idx/z_val (the
seed's `get_feature_activations_chunk`, without its per-token Python loop). Both answers are
checked to be equal. Goal (issue 4): p50 <= 20 ms through the index at 10M tokens, >= 1000x
faster than the scan.

    python bench/feature_query.py                      # 500k tokens (under a minute)
    python bench/feature_query.py --tokens 10000000    # the issue's 10M figure (a few GB of disk)

Last line: `index_speedup_over_scan: <ratio>`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.corpus import layout as L  # noqa: E402
from backend.corpus import query  # noqa: E402
from backend.corpus.merge import merge_stores  # noqa: E402
from backend.corpus.store import CorpusStore  # noqa: E402
from backend.corpus.writer import LayerSpec, StoreWriter  # noqa: E402

LAYER = 8


def synthetic_shard(path: Path, n_tokens: int, d_sae: int, k: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    perm = np.random.default_rng(0).permutation(d_sae)  # the same feature ids in every shard
    w = StoreWriter(path, attrs={"kind": "shard", "model": "synthetic", "sae_set": "topk", "shard": seed},
                    layers=[LayerSpec(LAYER, d_sae, k, f"blocks.{LAYER}.hook_resid_pre")])
    lengths = rng.integers(50, 400, size=n_tokens // 50 + 1)
    lengths = lengths[np.cumsum(lengths) <= n_tokens]
    lengths = np.append(lengths, n_tokens - lengths.sum()) if lengths.sum() < n_tokens else lengths
    ids = np.split(rng.integers(0, 50257, n_tokens, dtype=np.int64), np.cumsum(lengths)[:-1])
    w.add_documents(ids, [{"n": int(i)} for i in range(len(ids))])
    for a in range(0, n_tokens, 1 << 17):
        n = min(1 << 17, n_tokens - a)
        steps = rng.integers(1, d_sae // k + 1, size=(n, k))
        z_idx = perm[(rng.integers(0, d_sae, size=(n, 1)) + np.cumsum(steps, axis=1)) % d_sae]
        z_val = -np.sort(-rng.exponential(1.0, size=(n, k)).astype(np.float32), axis=1)
        w.add_activations(LAYER, z_idx, z_val)
    return w.finish()


def build(path: Path, n_tokens: int, d_sae: int, k: int, shard_tokens: int) -> float:
    t0 = time.perf_counter()
    parts = Path(tempfile.mkdtemp(prefix="fq-parts-", dir=path.parent))
    shards = [synthetic_shard(parts / f"shard-{i:05d}.h5", min(shard_tokens, n_tokens - a), d_sae, k, i)
              for i, a in enumerate(range(0, n_tokens, shard_tokens))]
    merge_stores(shards, path)
    shutil.rmtree(parts)
    return time.perf_counter() - t0


def scan_top(store: CorpusStore, feature: int, n: int, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """The seed's chunked scan, vectorised: every row of z_idx/z_val is read."""
    z_idx, z_val = store.f[f"layers/{LAYER}/{L.Z_IDX}"], store.f[f"layers/{LAYER}/{L.Z_VAL}"]
    best_t, best_v = np.zeros(0, np.int64), np.zeros(0, np.float32)
    for a in range(0, store.n_tokens, chunk):
        idx, val = z_idx[a:a + chunk], z_val[a:a + chunk]
        acts = np.where(idx == feature, val, 0).sum(axis=1)
        hit = np.flatnonzero(acts > 0)
        best_t = np.concatenate([best_t, hit + a])
        best_v = np.concatenate([best_v, acts[hit]])
        if len(best_t) > n:
            order = np.lexsort((best_t, -best_v))[:n]
            best_t, best_v = best_t[order], best_v[order]
    order = np.lexsort((best_t, -best_v))[:n]
    return best_t[order], best_v[order]


def ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=500_000)
    parser.add_argument("--features", type=int, default=24_576)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--top", type=int, default=50)
    parser.add_argument("--queries", type=int, default=100, help="features queried through the index")
    parser.add_argument("--scans", type=int, default=5, help="features found by scanning (each reads everything)")
    parser.add_argument("--shard-tokens", type=int, default=1 << 19)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the synthetic store")
    args = parser.parse_args()

    path = args.dir / f"featurescope-bench-{args.tokens}-{args.features}-{args.k}.h5"
    built = None
    if not (args.keep and path.exists()):
        built = build(path, args.tokens, args.features, args.k, args.shard_tokens)
    store = CorpusStore(path)
    view = store.layer(LAYER)
    rng = np.random.default_rng(1)
    features = rng.choice(np.flatnonzero(view.count > 0), args.queries + args.scans, replace=False)

    index_ms = [ms(lambda f=f: view.entries(int(f), 0, args.top)) for f in features[:args.queries]]
    decode = lambda ids: [str(i) for i in ids]  # noqa: E731
    context_ms = [ms(lambda f=f: query.top_examples(store, view, int(f), args.top, 16, decode))
                  for f in features[:args.queries]]
    scan_ms, same = [], True
    for f in features[args.queries:]:
        t0 = time.perf_counter()
        tokens, values = scan_top(store, int(f), args.top)
        scan_ms.append((time.perf_counter() - t0) * 1000)
        got_t, got_v = view.entries(int(f), 0, args.top)
        same &= np.array_equal(tokens, got_t) and np.array_equal(values, got_v)
    p50_index, p50_scan = statistics.median(index_ms), statistics.median(scan_ms)
    size = path.stat().st_size
    store.close()
    if not args.keep:
        path.unlink()
    print(f"store: {args.tokens:,} tokens, {args.features:,} features, k={args.k}, {size / 2**30:.2f} GiB"
          + (f", built in {built:.1f} s" if built is not None else " (reused)"))
    print(f"top-{args.top} through the index: p50 {p50_index:.3f} ms, p90 {np.percentile(index_ms, 90):.3f} ms "
          f"over {len(index_ms)} features")
    print(f"top-{args.top} examples with 16 tokens of context each: p50 {statistics.median(context_ms):.2f} ms")
    print(f"top-{args.top} by chunked scan: p50 {p50_scan:.1f} ms over {len(scan_ms)} features")
    print(f"answers identical: {'yes' if same else 'NO'}")
    print(f"index_p50_ms: {p50_index:.3f}")
    print(f"scan_p50_ms: {p50_scan:.1f}")
    print(f"index_speedup_over_scan: {p50_scan / p50_index:.0f}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
