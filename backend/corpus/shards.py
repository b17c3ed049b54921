"""One shard: its documents' tokens run through the model and the dictionaries, written as a store.

A shard is described by a JSON-able spec (see `backend.corpus` for its fields), so the same spec
runs in this process (`--executor local`) or in a Modal container, where deploy/modal_app.py
calls `build_shard_bytes(spec)` and returns the shard's HDF5 file as bytes.

Documents are cut into windows of `seq_len` tokens (a BOS first when `prepend_bos`), right-padded
to `seq_len` and run `batch_rows` windows at a time, each batch under the model's lock with the
dictionaries hooked in. Each hook keeps, per real token, the top-k features (token-major rows)
and adds the dense activations to the statistics (count, sum, max and histogram of every firing
activation), on the device; only that leaves it.
"""

from __future__ import annotations

import functools
import queue
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ContextManager

import numpy as np
import torch

from backend.corpus import faults, sets
from backend.corpus import layout as L
from backend.corpus.writer import LayerSpec, StoreWriter
from backend.errors import InvalidRequest, StoreError
from backend.local.analysis import stop_layer
from backend.protocol import Progress, no_progress

SPEC_FORMAT = "featurescope-shard-spec"
SPEC_VERSION = 1
STATS_ROWS = 2048  # tokens per step of the statistics (dense activations of one step stay small)
SPEC_FIELDS = ("format", "version", "shard", "model", "sae_set", "layers", "k", "seq_len", "prepend_bos",
               "batch_rows", "doc_start", "docs")


def check_spec(spec: dict[str, Any]) -> None:
    missing = [f for f in SPEC_FIELDS if f not in spec]
    if missing:
        raise InvalidRequest(f"Shard spec lacks {missing}.")
    if spec["format"] != SPEC_FORMAT or int(spec["version"]) != SPEC_VERSION:
        raise InvalidRequest(f"Shard spec is {spec['format']} v{spec['version']}; this version runs "
                             f"{SPEC_FORMAT} v{SPEC_VERSION}. Deploy the same Featurescope version.")
    if int(spec["seq_len"]) < 1 + bool(spec["prepend_bos"]) or int(spec["batch_rows"]) < 1 or int(spec["k"]) < 1:
        raise InvalidRequest("Shard spec: seq_len, batch_rows and k must be positive (seq_len > 1 with BOS).")


def tensor_probe(t: torch.Tensor) -> np.ndarray:
    """A few values of a weight tensor at fixed positions (see layout.probes_match)."""
    flat = torch.as_tensor(L.probe_positions(t.numel()))
    index = torch.unravel_index(flat, t.shape)
    return t.detach()[index].float().cpu().numpy()


def windows(docs: Sequence[Sequence[int]], seq_len: int, bos: int | None, pad: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """(rows [n_windows, seq_len] of token ids, valid [n_windows, seq_len]): each document cut into
    windows, a BOS first if given, padded; `valid` marks the documents' own tokens, in order."""
    body = seq_len - (1 if bos is not None else 0)
    rows, valid = [], []
    for ids in docs:
        for a in range(0, len(ids), body):
            chunk = list(ids[a:a + body])
            row = ([bos] if bos is not None else []) + chunk
            mask = ([False] if bos is not None else []) + [True] * len(chunk)
            rows.append(row + [pad] * (seq_len - len(row)))
            valid.append(mask + [False] * (seq_len - len(mask)))
    return np.array(rows, np.int64).reshape(-1, seq_len), np.array(valid, bool).reshape(-1, seq_len)


def encode_batch(model: Any, dictionaries: Sequence[Any], ids: torch.Tensor, valid: torch.Tensor, k: int
                 ) -> dict[int, tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]]:
    """One forward pass; per layer (z_idx, z_val, (count, sum, max, hist)) over the valid tokens."""
    on_device: dict[int, list[torch.Tensor]] = {}
    inner = torch.as_tensor(L.HIST_INNER, device=ids.device)

    def make_hook(d: Any):
        def hook(act: torch.Tensor, hook: Any) -> None:
            z = d.encode(act)[valid]
            top = torch.topk(z, min(k, d.d_sae), dim=-1)
            dev = z.device
            count = torch.zeros(d.d_sae, dtype=torch.int64, device=dev)
            total = torch.zeros(d.d_sae, dtype=torch.float64, device=dev)
            peak = torch.zeros(d.d_sae, dtype=torch.float32, device=dev)
            hist = torch.zeros(d.d_sae * L.N_BINS, dtype=torch.int64, device=dev)
            for r in range(0, len(z), STATS_ROWS):  # bounded memory, whatever the SAE's density
                part = z[r:r + STATS_ROWS]
                rows, cols = (part > 0).nonzero(as_tuple=True)  # the one dense pass: the rest is sparse
                vals = part[rows, cols].float()
                count += torch.bincount(cols, minlength=d.d_sae)
                if dev.type == "cuda":  # index_add_ of floats uses atomics there: sum densely, in order
                    total += part.clamp(min=0).sum(0, dtype=torch.float64)
                else:
                    total.index_add_(0, cols, vals.double())
                peak.scatter_reduce_(0, cols, vals, reduce="amax")
                bins = torch.bucketize(vals, inner, right=True)
                hist.index_add_(0, cols * L.N_BINS + bins, torch.ones_like(bins))
            on_device[d.layer] = [top.indices, top.values.float(), count, total, peak,
                                  hist.reshape(d.d_sae, L.N_BINS)]

        return hook

    hooks = [(d.hook_name, make_hook(d)) for d in dictionaries]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        model(ids, return_type=None, stop_at_layer=stop_layer([d.hook_name for d in dictionaries]))
    out: dict[int, tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]] = {}
    for layer, parts in on_device.items():  # after the pass: no synchronisation inside the hooks
        z_idx, z_val, count, total, peak, hist = to_host(parts)
        out[layer] = (z_idx, z_val, (count, total, peak, hist))
    return out


def to_host(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """The tensors as numpy arrays (the same numbers). On CUDA each is copied into pinned host memory
    without blocking and the stream is waited on once; on the CPU they are the tensors' own memory."""
    if not tensors or tensors[0].device.type != "cuda":
        return [t.cpu().numpy() for t in tensors]
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
    for h, t in zip(host, tensors):
        h.copy_(t, non_blocking=True)
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return [h.numpy() for h in host]


def rows_that_fit(free_bytes: int, *, seq_len: int, d_model: int, d_sae: int, requested: int,
                  fraction: float = 0.5) -> int:
    """How many windows of one batch fit in `fraction` of `free_bytes` of device memory, at most
    `requested` and at least 1. Per row (float32 bytes per token, the pass's peak): the widest
    dictionary's activations three times over (pre-activation, activation, the firing mask and
    its copy for the statistics) plus about 16 residual-width buffers of the model's pass."""
    per_row = seq_len * 4 * (3 * d_sae + 16 * d_model)
    fit = int(free_bytes * fraction) // max(1, per_row)
    return max(1, min(requested, fit))


def device_batch_rows(device: Any, dictionaries: Sequence[Any], d_model: int, seq_len: int, requested: int) -> int:
    """`requested`, lowered on CUDA to what the device's free memory holds (`rows_that_fit`).
    It changes nothing where the requested batch fits; where it would not, the build runs (smaller
    batches) instead of running out of memory."""
    if torch.device(device).type != "cuda" or not dictionaries:
        return requested
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return rows_that_fit(free, seq_len=seq_len, d_model=d_model, d_sae=max(d.d_sae for d in dictionaries),
                         requested=requested)


@functools.cache
def _container_backend() -> Any:
    """The runtime of a process that only builds shards (a Modal container)."""
    from backend.local.runtime import Runtime

    return Runtime()


def build_shard(spec: dict[str, Any], path: Path, *, backend: Any | None = None,
                progress: Progress | None = None, on_tokens: Any = None) -> Path:
    """Run the spec's documents through the model and write the shard store at `path`."""
    check_spec(spec)
    backend = backend or _container_backend()
    progress = progress or no_progress
    entry = backend.model_entry(spec["model"])
    dset = sets.resolve(entry, spec["sae_set"])
    layers = [int(x) for x in spec["layers"]]
    loaded = backend.load(entry.id, progress)
    dictionaries = sets.load(backend.models, loaded, dset, layers, progress)
    model = loaded.model
    model_probe = tensor_probe(model.W_U)
    probes = {d.layer: tensor_probe(d.w_dec) for d in dictionaries}
    expected = spec.get("expect") or {}
    if expected.get("model_probe") is not None and not L.probes_match(np.array(expected["model_probe"]),
                                                                      model_probe):
        raise StoreError(f"This process's {entry.display_name} has other weights than the build's first "
                         "shards. Deploy the same model and SAE files everywhere.")
    tok = model.tokenizer
    bos = tok.bos_token_id if spec["prepend_bos"] else None
    if spec["prepend_bos"] and bos is None:
        raise InvalidRequest(f"{entry.display_name}'s tokenizer has no BOS token; build with prepend_bos off.")
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    k = int(spec["k"])
    specs = [LayerSpec(d.layer, d.d_sae, min(k, d.d_sae), d.hook_name, probes[d.layer]) for d in dictionaries]
    attrs = {"kind": "shard", "shard": int(spec["shard"]), "doc_start": int(spec["doc_start"]),
             "model": entry.id, "sae_set": dset.id, "dictionary_kind": dset.kind, "layers": layers,
             "seq_len": int(spec["seq_len"]), "prepend_bos": bool(spec["prepend_bos"]), "k": k}
    writer = StoreWriter(path, attrs=attrs, layers=specs, model_probe=model_probe)
    try:
        docs = spec["docs"]
        writer.add_documents([np.asarray(d["ids"], np.int64) for d in docs], [d.get("meta") or {} for d in docs])
        encode_documents(lambda: loaded.use(backend.limits.lock_timeout_s), dictionaries, [d["ids"] for d in docs],
                         writer, seq_len=int(spec["seq_len"]), bos=bos, pad=pad, batch_rows=int(spec["batch_rows"]),
                         k=k, on_tokens=on_tokens, shard=int(spec["shard"]))
        progress(None, f"Indexing shard {spec['shard']}…")
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


class BatchWriter:
    """Appends batches to a `StoreWriter` on a thread of its own, in the order they were put, so that
    the HDF5 writing of one batch overlaps the next batch's forward pass. The queue is bounded
    (`depth` batches waiting), so memory stays bounded when the writing is the slower side. An error
    in the writer is raised again by the next `put` or by `close`."""

    def __init__(self, writer: StoreWriter, depth: int = 2) -> None:
        self.writer = writer
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="featurescope-store-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain, so that a blocked `put` returns
            try:
                for layer, (z_idx, z_val, stats) in item.items():
                    self.writer.add_activations(layer, z_idx, z_val, stats)
            except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
                self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, captured: dict[int, tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]]) -> None:
        self._raise()
        self.queue.put(captured)

    def close(self) -> None:
        """Wait until every batch put is written; raise the writer's error, if any."""
        self.queue.put(None)
        self.thread.join()
        self._raise()


def encode_documents(use: Callable[[], ContextManager[Any]], dictionaries: Sequence[Any],
                     docs: Sequence[Sequence[int]], writer: StoreWriter, *, seq_len: int, bos: int | None, pad: int,
                     batch_rows: int, k: int, on_tokens: Callable[[int], None] | None = None, shard: int = 0) -> None:
    """Every document's windows through the model (`use()` holds it), `batch_rows` at a time (fewer
    where a CUDA device's free memory holds fewer); each batch's rows and statistics appended to
    `writer` in corpus order, by a `BatchWriter` while the next batch runs."""
    rows, valid = windows(docs, seq_len, bos, pad)
    with use() as model:
        batch_rows = device_batch_rows(model.cfg.device, dictionaries, int(model.cfg.d_model), seq_len, batch_rows)
    background = BatchWriter(writer)
    try:
        for b, a in enumerate(range(0, len(rows), batch_rows)):
            with use() as model:
                device = model.cfg.device
                ids_t = torch.as_tensor(rows[a:a + batch_rows], device=device)
                valid_t = torch.as_tensor(valid[a:a + batch_rows], device=device)
                captured = encode_batch(model, dictionaries, ids_t, valid_t, k)
            background.put({d.layer: captured[d.layer] for d in dictionaries})
            if on_tokens is not None:
                on_tokens(int(valid[a:a + batch_rows].sum()))
            faults.checkpoint("shard-batch", shard, b)
    finally:
        background.close()


def build_shard_bytes(spec: dict[str, Any]) -> bytes:
    """What the Modal function `featurescope/corpus_shard` returns: the shard's HDF5 file."""
    with tempfile.TemporaryDirectory(prefix="featurescope-shard-") as tmp:
        path = build_shard(spec, Path(tmp) / f"shard-{int(spec['shard']):05d}.h5")
        return path.read_bytes()
