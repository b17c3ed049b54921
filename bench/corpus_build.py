"""Store build throughput vs the bare model forward on the same tokens, measured side by side.

All run the same windows in the same batches: the bare forward `model(ids)` (logits, no hooks);
the bare forward through the same layers as the build (`stop_at_layer`, no hooks, no logits);
and the build: the shard pipeline of `build_shard` (`encode_documents`: every dictionary hooked
in, top-k and statistics on the device, rows appended to the store) plus indexing and the merge.
Goal (issue 4): build >= 0.7x the bare forward's tokens/s, i.e. SAE encoding and writing are not
the bottleneck. The headline compares with the forward through the same layers, which is the
stricter of the two (the build never computes logits).

    python bench/corpus_build.py                 # the demo model and SAEs (every layer), its corpus
    python bench/corpus_build.py --gpt2-shape    # GPT-2 small shapes, random weights, one 24,576-wide
                                                 # SAE at layer 8 (the seed's setup), random tokens

Last line: `build_over_forward: <build tokens/s / same-layers forward tokens/s>`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.timing import timed  # noqa: E402


def demo_setup(n_tokens: int):
    from backend.corpus import sets
    from backend.corpus.build import _tokenize
    from backend.corpus.sources import SourceSpec, documents
    from backend.local import LocalBackend

    be = LocalBackend()
    loaded = be.load("demo")
    entry = be.model_entry("demo")
    dset = sets.resolve(entry, "res")
    dicts = sets.load(be.models, loaded, dset, list(dset.layers))
    docs, total = [], 0
    for text, _ in documents(SourceSpec(str(be.pack().corpus_path()))):
        (ids,) = _tokenize(loaded.model.tokenizer, [text])
        docs.append(ids[: n_tokens - total])
        total += len(docs[-1])
        if total >= n_tokens:
            break
    return loaded.model, dicts, docs, f"demo ({loaded.label or 'trained pack'}), {len(dicts)} SAE layers"


def gpt2_shape_setup(n_tokens: int, device: str):
    import torch

    from bench import shapes

    s = shapes.gpt2_shape(device, layers=[8])  # the seed's setup: one SAE at layer 8, calibrated L0
    gen = torch.Generator().manual_seed(0)
    docs, total = [], 0
    while total < n_tokens:
        n = min(int(torch.randint(60, 300, (1,), generator=gen)), n_tokens - total)
        docs.append(torch.randint(0, 50257, (n,), generator=gen).tolist())
        total += n
    sample = torch.tensor([docs[0][:128]], device=device)
    l0 = shapes.measured_l0(s.dicts, shapes.activations(s.model, [s.dicts[0].hook_name], sample))
    name = f"GPT-2 small shape, random weights, one SAE of 24,576 at layer 8 (measured L0 {l0:.0f})"
    return s.model, s.dicts, docs, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=None, help="default: 10,000 (demo), 4,096 (--gpt2-shape)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gpt2-shape", action="store_true")
    args = parser.parse_args()
    import numpy as np
    import torch

    from backend.compute import resolve_device
    from backend.corpus.merge import merge_stores
    from backend.corpus.shards import encode_documents, windows
    from backend.corpus.writer import LayerSpec, StoreWriter
    from backend.local.analysis import stop_layer

    device = resolve_device("auto")
    if args.gpt2_shape:
        model, dicts, docs, name = gpt2_shape_setup(args.tokens or 4096, device)
    else:
        model, dicts, docs, name = demo_setup(args.tokens or 10_000)
    n_tokens = sum(len(d) for d in docs)
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else 50256
    pad = 0
    batch_rows = max(1, args.batch_tokens // args.seq_len)
    rows, _ = windows(docs, args.seq_len, bos, pad)

    stop = stop_layer([d.hook_name for d in dicts])

    def bare(stop_at_layer: int | None = None) -> None:
        with torch.inference_mode():
            for a in range(0, len(rows), batch_rows):
                model(torch.as_tensor(rows[a:a + batch_rows], device=device), stop_at_layer=stop_at_layer)

    def build(out: Path) -> None:
        specs = [LayerSpec(d.layer, d.d_sae, min(args.k, d.d_sae), d.hook_name) for d in dicts]
        writer = StoreWriter(out / "shard.h5", attrs={"kind": "shard", "model": "bench", "sae_set": "bench"},
                             layers=specs)
        writer.add_documents([np.asarray(d, np.int64) for d in docs], [{} for _ in docs])
        encode_documents(lambda: contextlib.nullcontext(model), dicts, docs, writer, seq_len=args.seq_len, bos=bos,
                         pad=pad, batch_rows=batch_rows, k=args.k)
        merge_stores([writer.finish()], out / "store.h5")

    bare()  # warm up
    t_bare, t_layers, t_build = [], [], []
    with tempfile.TemporaryDirectory(prefix="corpus-build-bench-") as tmp:
        for i in range(args.repeats):  # alternate, keep the best of each
            t_bare.append(timed(bare, device)[0])
            t_layers.append(timed(lambda: bare(stop), device)[0])
            out = Path(tmp) / str(i)
            out.mkdir()
            t_build.append(timed(lambda: build(out), device)[0])
    fwd, lay, bld = n_tokens / min(t_bare), n_tokens / min(t_layers), n_tokens / min(t_build)
    print(f"model: {name}; device: {device}; threads: {torch.get_num_threads()}; tokens: {n_tokens:,} "
          f"in windows of {args.seq_len}, {batch_rows} per batch; k={args.k}; layers run: {stop}")
    print(f"bare_forward_tokens_per_s: {fwd:,.0f}  (with logits)")
    print(f"forward_same_layers_tokens_per_s: {lay:,.0f}")
    print(f"build_tokens_per_s: {bld:,.0f}")
    print(f"build_over_forward_with_logits: {bld / fwd:.2f}")
    print(f"build_over_forward: {bld / lay:.2f}")


if __name__ == "__main__":
    main()
