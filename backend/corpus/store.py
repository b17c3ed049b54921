"""Reading a store, after checking it is whole, safe and consistent.

Opening a store checks, before answering anything: that it is an HDF5 file (a truncated copy is
not), that every link in it is a plain hard link and no dataset keeps its data in another file
(external links, external storage and virtual datasets are refused), that it is a complete store
of this format, and that the shapes and offsets agree. A damaged chunk is caught on read by its
Fletcher-32 checksum. Every failure is a `StoreError` that says what to do.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from backend.corpus import layout as L
from backend.corpus.writer import LayerSpec
from backend.errors import StoreError

DOC_CACHE_LIMIT = 1 << 23  # document offsets kept in memory up to this many documents


def default_store_path(store_dir: Path, model: str, sae_set: str) -> Path:
    """Where the store of (model, set) lives under the store directory."""
    return Path(store_dir) / f"{model}--{sae_set}.h5"


def rebuild_advice(path: Path) -> str:
    return (f"Delete {path} and build it again (python -m backend.corpus build ...); the demo model's "
            "store is rebuilt on next use.")


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn a low-level read failure (bad checksum, missing object) into a StoreError."""
    try:
        yield
    except StoreError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"The corpus store {path} is damaged ({first}). {rebuild_advice(path)}",
                         path=str(path)) from exc


def refuse_links(f: h5py.File, path: Path) -> None:
    bad: list[str] = []

    def visit(name: str) -> None:
        link = f.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            bad.append(f"{name} ({type(link).__name__})")
            return
        obj = f[name]
        if isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual):
            bad.append(f"{name} ({'external storage' if obj.external else 'virtual dataset'})")

    f.visit_links(visit)
    if bad:
        raise StoreError(
            f"{path} refers to other files ({', '.join(bad[:5])}). A corpus store must hold all its "
            "data itself: Featurescope does not follow external links. Rebuild or re-import it.",
            path=str(path))


class LayerView:
    """One layer of a store: its token-major rows, its index and its statistics."""

    def __init__(self, store: CorpusStore, layer: int) -> None:
        self.store = store
        self.layer = layer
        self.group = store.f[L.layer_path(layer)]
        a = self.group.attrs
        self.d_sae, self.k, self.hook_name = int(a["d_sae"]), int(a["k"]), str(a["hook_name"])
        self._handles: dict[str, h5py.Dataset] = {}

    def ds(self, name: str) -> h5py.Dataset:
        """A dataset of this layer (handles are kept: looking one up costs more than a small read)."""
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = self.group[name]
        return handle

    def spec(self) -> LayerSpec:
        return LayerSpec(self.layer, self.d_sae, self.k, self.hook_name, self.probe)

    @functools.cached_property
    def probe(self) -> np.ndarray | None:
        return self.group[L.PROBE][:] if L.PROBE in self.group else None

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        return self.group[L.INDEX_OFFSETS][:]

    @functools.cached_property
    def count(self) -> np.ndarray:
        return self.group[L.STAT_COUNT][:]

    @functools.cached_property
    def peak(self) -> np.ndarray:
        return self.group[L.STAT_MAX][:]

    def validate(self, n_tokens: int) -> None:
        where = f"layer {self.layer} of {self.store.path}"
        shapes = {L.Z_IDX: (n_tokens, self.k), L.Z_VAL: (n_tokens, self.k), L.INDEX_OFFSETS: (self.d_sae + 1,),
                  L.STAT_COUNT: (self.d_sae,), L.STAT_SUM: (self.d_sae,), L.STAT_MAX: (self.d_sae,),
                  L.STAT_HIST: (self.d_sae, L.N_BINS)}
        for name, shape in shapes.items():
            if name not in self.group or self.group[name].shape != shape:
                got = self.group[name].shape if name in self.group else "missing"
                raise StoreError(f"{where}: {name} is {got}, expected {shape}. {rebuild_advice(self.store.path)}")
        off = self.offsets
        n_entries = self.group[L.INDEX_TOKEN].shape[0]
        if (off[0] != 0 or off[-1] != n_entries or self.group[L.INDEX_VALUE].shape[0] != n_entries
                or np.any(np.diff(off) < 0) or np.any(np.diff(off) > self.count)):
            raise StoreError(f"{where}: the feature index is inconsistent with its offsets or counts. "
                             f"{rebuild_advice(self.store.path)}")

    # ---------------------------------------------------------------- queries
    def n_entries(self, feature: int) -> int:
        return int(self.offsets[feature + 1] - self.offsets[feature])

    def entries(self, feature: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Entries of rank [start, stop) of `feature` (rank 0 = strongest): (tokens, values)."""
        base, n = int(self.offsets[feature]), self.n_entries(feature)
        start, stop = max(0, min(start, n)), max(0, min(stop, n))
        with reading(self.store.path):
            tokens = self.ds(L.INDEX_TOKEN)[base + start:base + stop].astype(np.int64)
            values = self.ds(L.INDEX_VALUE)[base + start:base + stop]
        if len(tokens) and (tokens.max() >= self.store.n_tokens or not np.all(np.diff(values) <= 0)):
            raise StoreError(f"The index of layer {self.layer} in {self.store.path} is corrupt. "
                             f"{rebuild_advice(self.store.path)}")
        return tokens, values

    def entries_at(self, feature: int, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ranks = np.unique(np.asarray(ranks, np.int64))
        if not len(ranks):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        base = int(self.offsets[feature])
        with reading(self.store.path):
            tokens = self.ds(L.INDEX_TOKEN)[base + ranks].astype(np.int64)
            values = self.ds(L.INDEX_VALUE)[base + ranks]
        return tokens, values

    def first_rank_below(self, feature: int, threshold: float) -> int:
        """The first rank whose value is < threshold (values descend), by bisection on the file."""
        lo, hi = 0, self.n_entries(feature)
        base = int(self.offsets[feature])
        ds = self.ds(L.INDEX_VALUE)
        with reading(self.store.path):
            while lo < hi:
                mid = (lo + hi) // 2
                if ds[base + mid] >= threshold:
                    lo = mid + 1
                else:
                    hi = mid
        return lo

    def hist_row(self, feature: int) -> np.ndarray:
        with reading(self.store.path):
            return self.ds(L.STAT_HIST)[feature]

    def total(self, feature: int) -> float:
        with reading(self.store.path):
            return float(self.ds(L.STAT_SUM)[feature])

    def activations(self, feature: int, start: int, stop: int) -> np.ndarray:
        """The feature's activation on tokens [start, stop), from the token-major rows (0 where it is
        not among a token's top-k)."""
        with reading(self.store.path):
            idx = self.ds(L.Z_IDX)[start:stop]
            val = self.ds(L.Z_VAL)[start:stop]
        hit = idx == feature
        return np.where(hit, val, 0).sum(axis=1).astype(np.float32)


class CorpusStore:
    """An open, validated store. Cheap queries; safe to share between threads (h5py serialises)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"There is no corpus store at {self.path}.", path=str(self.path))
        try:
            self.f = h5py.File(self.path, "r")
        except OSError as exc:
            first = str(exc).splitlines()[0]
            raise StoreError(f"{self.path} is not a readable HDF5 corpus store ({first}); it may be truncated "
                             f"by an interrupted build or copy. {rebuild_advice(self.path)}",
                             path=str(self.path)) from exc
        self._layers: dict[int, LayerView] = {}
        self._handles: dict[str, h5py.Dataset] = {}
        try:
            with reading(self.path):
                self._validate()
        except BaseException:
            self.f.close()
            raise

    def _validate(self) -> None:
        refuse_links(self.f, self.path)
        a = self.f.attrs
        if a.get("format") != L.FORMAT:
            raise StoreError(f"{self.path} is not a Featurescope corpus store (format {a.get('format')!r}). "
                             "Convert a seed store with `python -m backend.corpus import-seed`.")
        if int(a.get("version", -1)) != L.VERSION:
            raise StoreError(f"{self.path} is store format v{a.get('version')}; this version reads "
                             f"v{L.VERSION}. {rebuild_advice(self.path)}")
        if not bool(a.get("complete", False)):
            raise StoreError(f"{self.path} is an unfinished store (its build stopped before the end). "
                             "Run the same build command again to resume it.")
        self.n_tokens, self.n_docs = int(a["n_tokens"]), int(a["n_docs"])
        expect = {L.TOKENS: (self.n_tokens,), L.DOC_OFFSETS: (self.n_docs + 1,),
                  L.DOC_META_OFFSETS: (self.n_docs + 1,), L.HIST_EDGES: L.EDGES.shape}
        for name, shape in expect.items():
            if name not in self.f or self.f[name].shape != shape:
                raise StoreError(f"{self.path}: {name} is missing or has the wrong shape. "
                                 f"{rebuild_advice(self.path)}")
        ends = self.f[L.DOC_OFFSETS][[0, self.n_docs]] if self.n_docs else self.f[L.DOC_OFFSETS][:1]
        meta_ends = self.f[L.DOC_META_OFFSETS][[0, self.n_docs]] if self.n_docs else np.zeros(1, np.int64)
        if (ends[0] != 0 or ends[-1] != self.n_tokens or meta_ends[0] != 0
                or L.DOC_META not in self.f or meta_ends[-1] != self.f[L.DOC_META].shape[0]
                or not np.array_equal(self.f[L.HIST_EDGES][:], L.EDGES)):
            raise StoreError(f"{self.path}: document offsets or histogram bins are inconsistent. "
                             f"{rebuild_advice(self.path)}")
        self.layer_ids = sorted(int(name) for name in self.f["layers"]) if "layers" in self.f else []
        for layer in self.layer_ids:
            view = LayerView(self, layer)
            view.validate(self.n_tokens)
            self._layers[layer] = view

    # ---------------------------------------------------------------- attributes
    def raw_attrs(self) -> dict[str, Any]:
        return dict(self._attrs)

    @functools.cached_property
    def _attrs(self) -> dict[str, Any]:
        out = {}
        for key, value in self.f.attrs.items():
            if isinstance(value, np.generic):
                value = value.item()
            elif isinstance(value, np.ndarray):
                value = value.tolist()
            if isinstance(value, str) and value[:1] in "[{":
                value = json.loads(value)
            out[key] = value
        return out

    def attr(self, key: str, default: Any = None) -> Any:
        return self._attrs.get(key, default)

    @functools.cached_property
    def model_probe(self) -> np.ndarray | None:
        return self.f[L.MODEL_PROBE][:] if L.MODEL_PROBE in self.f else None

    def layer(self, layer: int) -> LayerView:
        if layer not in self.layer_ids:
            raise StoreError(f"{self.path} has no layer {layer}; its layers are {self.layer_ids}.")
        if layer not in self._layers:
            self._layers[layer] = LayerView(self, layer)
        return self._layers[layer]

    def ds(self, name: str) -> h5py.Dataset:
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = self.f[name]
        return handle

    # ---------------------------------------------------------------- documents
    @functools.cached_property
    def _doc_offsets(self) -> np.ndarray | None:
        if self.n_docs > DOC_CACHE_LIMIT:
            return None
        with reading(self.path):
            return self.f[L.DOC_OFFSETS][:]

    @functools.cached_property
    def _meta_offsets(self) -> np.ndarray | None:
        if self.n_docs > DOC_CACHE_LIMIT:
            return None
        with reading(self.path):
            return self.f[L.DOC_META_OFFSETS][:]

    def doc_of(self, token: int) -> int:
        offs = self._doc_offsets
        if offs is not None:
            return int(np.searchsorted(offs, token, side="right")) - 1
        ds, lo, hi = self.ds(L.DOC_OFFSETS), 0, self.n_docs
        with reading(self.path):
            while lo < hi:  # last doc whose start <= token
                mid = (lo + hi + 1) // 2
                if ds[mid] <= token:
                    lo = mid
                else:
                    hi = mid - 1
        return lo

    def doc_bounds(self, doc: int) -> tuple[int, int]:
        offs = self._doc_offsets
        if offs is not None:
            return int(offs[doc]), int(offs[doc + 1])
        with reading(self.path):
            a, b = self.ds(L.DOC_OFFSETS)[doc:doc + 2]
        return int(a), int(b)

    def tokens(self, start: int, stop: int) -> np.ndarray:
        with reading(self.path):
            return self.ds(L.TOKENS)[start:stop].astype(np.int64)

    def meta(self, doc: int) -> dict[str, Any]:
        offs = self._meta_offsets
        with reading(self.path):
            a, b = offs[doc:doc + 2] if offs is not None else self.ds(L.DOC_META_OFFSETS)[doc:doc + 2]
            raw = self.ds(L.DOC_META)[int(a):int(b)].tobytes()
        try:
            value = json.loads(raw.decode("utf-8"))
        except ValueError as exc:
            raise StoreError(f"Document {doc}'s metadata in {self.path} is not JSON. "
                             f"{rebuild_advice(self.path)}") from exc
        return value if isinstance(value, dict) else {}

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()

    def __enter__(self) -> CorpusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
