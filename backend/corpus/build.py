"""Building a store: plan shards, run them (here or on Modal), merge, rename; resume after a crash.

1. Count: the source is read once and tokenised, keeping only each document's token count, so
   progress has a total (tokens/s, ETA) and `--shards N` can cut N equal shards.
2. Plan: consecutive documents are grouped into shards of about `shard_tokens` tokens. The plan
   and everything that decides the result (model, set, layers, k, windows, source fingerprint)
   are written to `<store>.parts/plan.json`.
3. Shards: each shard is built from its spec into `<store>.parts/shard-NNNNN.h5` (a `.partial`
   file renamed when complete). A rerun with the same arguments keeps the complete shards and
   builds the rest; any other arguments are refused until the parts folder is removed.
4. Merge (`merge.py`, the same whichever executor ran the shards) into `<store>.partial`,
   renamed to `<store>` when complete; then the parts folder is removed.

Since every step is deterministic and the merge only reads complete shards, a build killed at
any point and run again gives the same bytes as one that never stopped.

5. A finished build records its inputs beside the store (`<store>.inputs.json`: everything in the
   plan's recipe that is known before counting, plus the store's size and modification time). A
   rerun with the same inputs finds the store as it left it and does nothing (it says so);
   `force=True` (`--force`) rebuilds, e.g. after the model's or the dictionary's weights changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from backend.corpus import sets
from backend.corpus.merge import merge_stores
from backend.corpus.shards import SPEC_FORMAT, SPEC_VERSION, build_shard
from backend.corpus.sources import SourceSpec, documents, fingerprint
from backend.corpus.store import CorpusStore, default_store_path  # noqa: F401 (re-exported)
from backend.corpus.writer import partial_path
from backend.errors import Busy, InvalidRequest, StoreError
from backend.protocol import Progress, no_progress

DEFAULT_K = 32
TOKENIZE_BATCH = 256


@dataclass(frozen=True)
class BuildOptions:
    model: str
    sae_set: str
    source: SourceSpec
    out: Path
    layers: list[int] | None = None
    k: int | None = None
    seq_len: int = 128
    batch_tokens: int = 8192
    shard_tokens: int = 1 << 18
    shards: int | None = None
    executor: Literal["local", "modal"] = "local"
    max_docs: int | None = None
    max_tokens: int | None = None
    keep_shards: bool = False
    force: bool = False  # rebuild even when the store was built from the same inputs
    extra: dict[str, Any] = field(default_factory=dict)


def inputs_path(out: Path) -> Path:
    return out.with_name(out.name + ".inputs.json")


def _store_stamp(out: Path) -> list[int]:
    st = out.stat()
    return [st.st_size, st.st_mtime_ns]


def already_built(out: Path, inputs: dict[str, Any]) -> bool:
    """Whether `out` is the finished store of a build with these inputs, untouched since."""
    try:
        recorded = json.loads(inputs_path(out).read_text())
        return recorded.get("inputs") == json.loads(json.dumps(inputs)) and recorded.get("store") == _store_stamp(out)
    except (OSError, ValueError, AttributeError):
        return False


def record_inputs(out: Path, inputs: dict[str, Any]) -> None:
    tmp = inputs_path(out).with_suffix(".partial")
    tmp.write_text(json.dumps({"inputs": inputs, "store": _store_stamp(out)}, indent=1))
    os.replace(tmp, inputs_path(out))


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


class Monitor:
    """Progress in tokens with rate and ETA, for the UI (`progress`) and the CLI."""

    def __init__(self, progress: Progress, total: int, done: int) -> None:
        self.progress, self.total, self.done = progress, max(total, 1), done
        self.start_done, self.started = done, time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?"
        self.progress(min(self.done / self.total, 1.0),
                      f"Encoding the corpus: {self.done:,}/{self.total:,} tokens · {rate:,.0f} tokens/s · "
                      f"ETA {eta_text}")


def _tokenizer(backend: Any, entry: Any, executor: str) -> Any:
    if executor == "local" or entry.source == "demo":
        if entry.source == "demo":
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(backend.pack().tokenizer_dir()))
        return backend.load(entry.id).model.tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(entry.hf_repo or entry.tl_name)


def _tokenize(tok: Any, texts: list[str]) -> list[list[int]]:
    return tok(texts, add_special_tokens=False)["input_ids"] if texts else []


def _batched(it: Iterator[Any], n: int) -> Iterator[list[Any]]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def count_tokens(source: SourceSpec, tok: Any, max_docs: int | None, max_tokens: int | None,
                 progress: Progress) -> tuple[np.ndarray, int]:
    """(token count of each document used, number of documents in the source)."""
    counts: list[int] = []
    total_docs, used_tokens, full, shown = 0, 0, False, 0.0
    for batch in _batched(documents(source), TOKENIZE_BATCH):
        total_docs += len(batch)
        if full:
            continue
        for ids in _tokenize(tok, [text for text, _ in batch]):
            if (max_docs is not None and len(counts) >= max_docs) or \
                    (max_tokens is not None and used_tokens + len(ids) > max_tokens and counts):
                full = True
                break
            counts.append(len(ids))
            used_tokens += len(ids)
        if time.monotonic() - shown > 0.5:
            shown = time.monotonic()
            progress(None, f"Counting tokens: {len(counts):,} documents, {used_tokens:,} tokens…")
    if not counts:
        raise InvalidRequest(f"The source {source.source} holds no documents with text.")
    return np.array(counts, np.int64), total_docs


def plan_shards(counts: np.ndarray, shard_tokens: int, shards: int | None) -> list[tuple[int, int]]:
    """Consecutive document ranges [a, b) of about `shard_tokens` tokens (or `shards` equal ones)."""
    total = int(counts.sum())
    target = -(-total // shards) if shards else shard_tokens
    bounds, a, acc = [], 0, 0
    for i, c in enumerate(counts):
        acc += int(c)
        if acc >= target:
            bounds.append((a, i + 1))
            a, acc = i + 1, 0
    if a < len(counts):
        bounds.append((a, len(counts)))
    return bounds


def _specs(opts: BuildOptions, tok: Any, plan: list[tuple[int, int]], todo: set[int], common: dict[str, Any]
           ) -> Iterator[dict[str, Any]]:
    """Specs of the shards in `todo`, in order, reading the source once (skipping done shards)."""
    docs = documents(opts.source)
    for shard, (a, b) in enumerate(plan):
        texts, metas = [], []
        for _ in range(b - a):
            try:
                text, meta = next(docs)
            except StopIteration:
                raise StoreError(f"{opts.source.source} ended before document {b:,}: it changed during "
                                 "the build. Delete the parts folder and build again.") from None
            if shard in todo:
                texts.append(text)
                metas.append(meta)
        if shard in todo:
            ids = _tokenize(tok, texts)
            yield {**common, "shard": shard, "doc_start": a,
                   "docs": [{"ids": list(i), "meta": m} for i, m in zip(ids, metas)]}


def _complete_shard(path: Path, shard: int, n_docs: int) -> bool:
    if not path.exists():
        return False
    try:
        with CorpusStore(path) as s:
            return s.attr("shard") == shard and s.n_docs == n_docs
    except StoreError:
        return False


@contextlib.contextmanager
def build_lock(out: Path) -> Iterator[None]:
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.with_name(out.name + ".lock")
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"Another build of {out} is running. Wait for it to finish.") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_modal(specs: Iterator[dict[str, Any]], write: Callable[[int, bytes], None]) -> None:
    try:
        import modal
    except ImportError:
        raise InvalidRequest(
            "--executor modal needs the `modal` package and a deployed app: `pip install modal`, "
            "`modal token new`, then `modal deploy deploy/modal_app.py`. Or use --executor local.") from None
    fn = modal.Function.from_name("featurescope", "corpus_shard")
    order: list[int] = []

    def tracked() -> Iterator[dict[str, Any]]:
        for spec in specs:
            order.append(spec["shard"])
            yield spec

    for i, data in enumerate(fn.map(tracked())):
        write(order[i], data)


def build_store(opts: BuildOptions, *, backend: Any, progress: Progress | None = None) -> Path:
    """Build (or finish building) the store `opts.out`; returns its path."""
    progress = progress or no_progress
    out = Path(opts.out).expanduser().resolve()
    entry = backend.model_entry(opts.model)
    dset = sets.resolve(entry, opts.sae_set)
    layers = list(dict.fromkeys(opts.layers)) if opts.layers else list(dset.layers)
    for layer in layers:
        dset.check_layer(layer)
    if not layers:
        raise InvalidRequest(f"{dset.display_name} has no layers to store.")
    seq_len = dset.window or opts.seq_len
    if entry.n_ctx:
        seq_len = min(seq_len, entry.n_ctx)
    prepend_bos = dset.prepend_bos if dset.prepend_bos is not None else not dset.window
    k = opts.k or dset.k or DEFAULT_K
    with build_lock(out):
        inputs = {"common": {"model": entry.id, "sae_set": dset.id, "layers": layers, "k": k, "seq_len": seq_len,
                             "prepend_bos": prepend_bos, "batch_tokens": opts.batch_tokens},
                  "source": fingerprint(opts.source), "max_docs": opts.max_docs, "max_tokens": opts.max_tokens,
                  "shard_tokens": opts.shard_tokens, "shards": opts.shards, "extra": opts.extra}
        if not opts.force and out.exists() and already_built(out, inputs):
            progress(1.0, f"{out.name} is already built from these inputs: nothing to do (--force rebuilds it).")
            return out
        inputs_path(out).unlink(missing_ok=True)
        tok = _tokenizer(backend, entry, opts.executor)
        counts, docs_total = count_tokens(opts.source, tok, opts.max_docs, opts.max_tokens, progress)
        plan = plan_shards(counts, opts.shard_tokens, opts.shards)
        common = {"format": SPEC_FORMAT, "version": SPEC_VERSION, "model": entry.id, "sae_set": dset.id,
                  "layers": layers, "k": k, "seq_len": seq_len, "prepend_bos": prepend_bos,
                  "batch_rows": max(1, opts.batch_tokens // seq_len)}
        recipe = {"common": common, "plan": plan, "source": fingerprint(opts.source),
                  "max_docs": opts.max_docs, "max_tokens": opts.max_tokens}
        work = parts_dir(out)
        plan_file = work / "plan.json"
        if plan_file.exists() and json.loads(plan_file.read_text()) != json.loads(json.dumps(recipe)):
            raise StoreError(f"{work} holds the parts of a different build (other arguments or a changed "
                             "source). Run the same command as before, or delete that folder to start over.")
        work.mkdir(parents=True, exist_ok=True)
        plan_file.write_text(json.dumps(recipe, indent=1))
        paths = [work / f"shard-{i:05d}.h5" for i in range(len(plan))]
        todo = {i for i, (a, b) in enumerate(plan) if not _complete_shard(paths[i], i, b - a)}
        done_tokens = sum(int(counts[a:b].sum()) for i, (a, b) in enumerate(plan) if i not in todo)
        monitor = Monitor(progress, int(counts.sum()), done_tokens)
        if done_tokens:
            progress(done_tokens / monitor.total, f"Resuming: {len(plan) - len(todo)} of {len(plan)} shards "
                                                  "were already built.")
        specs = _specs(opts, tok, plan, todo, common)
        if opts.executor == "local":
            for spec in specs:
                build_shard(spec, paths[spec["shard"]], backend=backend, progress=progress, on_tokens=monitor.add)
        else:
            def write(shard: int, data: bytes) -> None:
                tmp = partial_path(paths[shard])
                tmp.write_bytes(data)
                with CorpusStore(tmp) as s:
                    if s.attr("shard") != shard or s.n_docs != plan[shard][1] - plan[shard][0]:
                        raise StoreError(f"Modal returned shard {s.attr('shard')} ({s.n_docs} documents) "
                                         f"where shard {shard} was expected. Redeploy deploy/modal_app.py.")
                os.replace(tmp, paths[shard])
                monitor.add(int(counts[plan[shard][0]:plan[shard][1]].sum()))

            run_modal(specs, write)
        attrs = {"source": opts.source.to_dict(), "docs_total": docs_total, "docs_used": len(counts),
                 "executor": opts.executor, "n_shards": len(plan), "max_tokens": opts.max_tokens,
                 "max_docs": opts.max_docs, **opts.extra}
        merge_stores(paths, out, attrs=attrs, progress=progress)
        if not opts.keep_shards:
            shutil.rmtree(work, ignore_errors=True)
        record_inputs(out, inputs)
    progress(1.0, f"Built {out.name}: {int(counts.sum()):,} tokens, {len(counts):,} documents.")
    return out


def summary(path: Path) -> dict[str, Any]:
    """What `python -m backend.corpus info` prints."""
    with CorpusStore(path) as s:
        attrs = s.raw_attrs()
        layers = {}
        for layer in s.layer_ids:
            v = s.layer(layer)
            firing = int((v.count > 0).sum())
            layers[str(layer)] = {"d_sae": v.d_sae, "k": v.k, "hook_name": v.hook_name,
                                  "indexed_entries": int(v.offsets[-1]), "activations": int(v.count.sum()),
                                  "features_that_fire": firing}
        return {"path": str(path), "bytes": Path(path).stat().st_size, "attrs": attrs, "layers": layers}


