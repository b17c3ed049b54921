"""`python -m backend.corpus build | import-seed | info`: corpus stores from a terminal.

Progress (tokens/s and ETA) is a bar on stderr; the result is JSON on stdout (the store's summary).
A `BackendError` prints `{"error", "message"}` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from backend.cli import run_guarded
from backend.errors import InvalidRequest


class BarProgress:
    """The protocol's progress callback as a tqdm bar on stderr."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1000, file=sys.stderr, bar_format="{percentage:3.0f}%|{bar:24}| {desc}",
                        mininterval=0.5)

    def __call__(self, fraction: float | None, message: str) -> None:
        self.bar.set_description_str(message, refresh=False)
        if fraction is not None:
            self.bar.n = int(round(min(max(fraction, 0.0), 1.0) * 1000))
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend.corpus", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="run a corpus through a model and its SAE (or transcoder) layers")
    b.add_argument("--model", default="demo", help="catalog model id (default: demo)")
    b.add_argument("--sae-set", help="SAE set or per-layer transcoder set (default: the model's first SAE set)")
    b.add_argument("--source", help=".txt/.jsonl/.csv/.parquet file, a folder of .txt files, a save_to_disk "
                                    "folder or a Hugging Face dataset name (default for demo: the pack's corpus)")
    b.add_argument("--out", type=Path, help="store path (default: <data dir>/stores/<model>--<set>.h5)")
    b.add_argument("--layers", type=int, nargs="+", help="layers to store (default: all of the set)")
    b.add_argument("--text-column", default="text")
    b.add_argument("--split", default="train", help="dataset split")
    b.add_argument("--config", help="dataset configuration name")
    b.add_argument("--per-file", action="store_true", help="a .txt file is one document (default: one per line)")
    b.add_argument("--max-docs", type=int, help="use only the first N documents")
    b.add_argument("--max-tokens", type=int, help="stop adding documents after N tokens")
    b.add_argument("--k", type=int, help="features kept per token (default: the TopK SAE's k, else 32)")
    b.add_argument("--seq-len", type=int, default=128, help="window length in tokens (a set's own window wins)")
    b.add_argument("--batch-tokens", type=int, default=8192, help="tokens per forward pass")
    b.add_argument("--shard-tokens", type=int, default=1 << 18, help="tokens per shard (the unit of resume)")
    b.add_argument("--shards", type=int, help="cut the corpus into N equal shards instead")
    b.add_argument("--executor", choices=["local", "modal"], default="local",
                   help="run shards here, or in parallel on Modal GPU containers (Function.map)")
    b.add_argument("--keep-shards", action="store_true", help="keep <store>.parts/ after merging")
    b.add_argument("--force", action="store_true",
                   help="rebuild even when the store was already built from the same inputs (a rerun is a no-op)")

    s = sub.add_parser("import-seed", help="convert the Modal design's HDF5 + metadata .npz into a store")
    s.add_argument("--h5", type=Path, required=True, help="*_sae_features_*.h5 with z_idx, z_val, rev_idx")
    s.add_argument("--metadata", type=Path, required=True, help="metadata .npz (review_ids, texts, stars, ...)")
    s.add_argument("--model", default="gpt2-small")
    s.add_argument("--sae-set", required=True, help="the catalog's SAE set for the seed's SAE (topk_checkpoint)")
    s.add_argument("--layer", type=int, default=8)
    s.add_argument("--d-sae", type=int, help="number of features (default: the catalog's d_sae)")
    s.add_argument("--window", type=int, help="window the seed ran reviews in (default: the set's, else 64)")
    s.add_argument("--tokenizer", help="tokenizer name or path (default: the model's)")
    s.add_argument("--out", type=Path, help="store path (default: <data dir>/stores/<model>--<set>.h5)")
    s.add_argument("--shard-tokens", type=int, default=1 << 22)

    i = sub.add_parser("info", help="check a store and summarise it")
    i.add_argument("path", type=Path)
    return parser


def _backend() -> Any:
    """The runtime (catalog, models, pack) with the settings of the environment as it is now."""
    from backend.local.runtime import Runtime
    from backend.settings import Settings

    return Runtime(Settings())


def _build(args: argparse.Namespace, progress: Any) -> dict[str, Any]:
    from backend.corpus.build import BuildOptions, build_store, default_store_path, summary
    from backend.corpus.sources import SourceSpec

    backend = _backend()
    entry = backend.model_entry(args.model)
    sae_set = args.sae_set or next(iter(entry.sae_sets), None)
    if sae_set is None:
        raise InvalidRequest(f"{entry.id} has no SAE set; pass --sae-set (a transcoder set works too).")
    source = args.source
    if source is None:
        corpus = backend.pack().corpus_path() if entry.source == "demo" else None
        if corpus is None:
            raise InvalidRequest("Pass --source: a corpus file, folder or dataset name.")
        source = str(corpus)
    out = args.out or default_store_path(backend.settings.store_dir(), entry.id, sae_set)
    opts = BuildOptions(
        model=entry.id, sae_set=sae_set, out=out, layers=args.layers, k=args.k, seq_len=args.seq_len,
        source=SourceSpec(source=source, text_column=args.text_column, split=args.split, config=args.config,
                          per_file=args.per_file),
        batch_tokens=args.batch_tokens, shard_tokens=args.shard_tokens, shards=args.shards,
        executor=args.executor, max_docs=args.max_docs, max_tokens=args.max_tokens, keep_shards=args.keep_shards,
        force=args.force)
    return summary(build_store(opts, backend=backend, progress=progress))


def _import_seed(args: argparse.Namespace, progress: Any) -> dict[str, Any]:
    from backend.corpus.build import default_store_path, summary
    from backend.corpus.seed import import_seed

    backend = _backend()
    entry = backend.model_entry(args.model)
    sae = entry.sae_set(args.sae_set)
    if args.layer not in (sae.layers or ()):
        raise InvalidRequest(f"{sae.display_name} has no layer {args.layer}; its layers are {list(sae.layers or ())}.")
    d_sae = args.d_sae or sae.d_sae
    if not d_sae:
        raise InvalidRequest("Pass --d-sae: the catalog does not say how many features the SAE has.")
    from transformers import AutoTokenizer

    name = args.tokenizer or (str(backend.pack().tokenizer_dir()) if entry.source == "demo"
                              else entry.hf_repo or entry.tl_name)
    tokenizer = AutoTokenizer.from_pretrained(name)
    out = args.out or default_store_path(backend.settings.store_dir(), entry.id, sae.id)
    path = import_seed(args.h5, args.metadata, out, model=entry.id, sae_set=sae.id, layer=args.layer, d_sae=d_sae,
                       tokenizer=tokenizer, window=args.window or sae.window or 64, hook_name=sae.hook_for(args.layer),
                       shard_tokens=args.shard_tokens, progress=progress)
    return summary(path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> dict:
        if args.command == "info":
            from backend.corpus.build import summary

            return summary(args.path)
        progress = BarProgress()
        try:
            return (_build if args.command == "build" else _import_seed)(args, progress)
        finally:
            progress.close()

    result, status = run_guarded(work)
    if result is not None:
        print(json.dumps(result, indent=2))
    return status
