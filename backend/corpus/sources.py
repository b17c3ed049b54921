"""Documents to build a store from, read one at a time (bounded memory), always in the same order.

- `.txt` / `.txt.gz`: one document per non-empty line (`per_file=True`: the whole file is one);
  a directory of `.txt` files: one document per file, in name order.
- `.jsonl` / `.jsonl.gz`: one JSON object per line, the text in `text_column`.
- `.csv`: rows read in chunks with pandas, the text in `text_column`.
- `.parquet`: record batches read with pyarrow, the text in `text_column`.
- A directory written by `datasets.Dataset.save_to_disk`, or a Hugging Face dataset name
  (`datasets.load_dataset(name, config, split=split)`).

Every other scalar column (str, int, float, bool) of a row becomes the document's metadata
(stars, review ids, ...). Blank texts are skipped.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backend.errors import InvalidRequest

Document = tuple[str, dict[str, Any]]
SCALARS = (str, int, float, bool)


@dataclass(frozen=True)
class SourceSpec:
    source: str = ""
    text_column: str = "text"
    split: str = "train"
    config: str | None = None
    per_file: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _meta(row: dict[str, Any], text_column: str) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if key == text_column:
            continue
        if hasattr(value, "item") and not isinstance(value, (list, dict)):
            try:
                value = value.item()
            except (ValueError, AttributeError):
                continue
        if value is None or isinstance(value, SCALARS):
            if isinstance(value, float) and value != value:  # NaN from pandas: missing
                value = None
            out[str(key)] = value
    return out


def _text(row: dict[str, Any], spec: SourceSpec, where: str) -> str | None:
    if spec.text_column not in row:
        raise InvalidRequest(f"{where} has no column '{spec.text_column}'; its columns are "
                             f"{sorted(row)}. Pass --text-column.")
    text = row[spec.text_column]
    if text is None or (isinstance(text, float) and text != text):
        return None
    text = str(text)
    return text if text.strip() else None


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _kind(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for ext in (".txt", ".jsonl", ".csv", ".parquet"):
        if name.endswith(ext):
            return ext[1:]
    if name.endswith(".json"):
        return "jsonl"
    return ""


def _rows_txt(path: Path, spec: SourceSpec) -> Iterator[Document]:
    if spec.per_file:
        with _open_text(path) as f:
            text = f.read()
        if text.strip():
            yield text, {"file": path.name}
        return
    with _open_text(path) as f:
        for n, line in enumerate(f):
            line = line.rstrip("\n")
            if line.strip():
                yield line, {"line": n + 1}


def _rows_jsonl(path: Path, spec: SourceSpec) -> Iterator[Document]:
    with _open_text(path) as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InvalidRequest(f"{path} line {n + 1} is not JSON ({exc}).") from exc
            if not isinstance(row, dict):
                raise InvalidRequest(f"{path} line {n + 1} is not a JSON object.")
            text = _text(row, spec, f"{path} line {n + 1}")
            if text is not None:
                yield text, _meta(row, spec.text_column)


def _rows_csv(path: Path, spec: SourceSpec) -> Iterator[Document]:
    import pandas as pd

    for chunk in pd.read_csv(path, chunksize=10_000):
        for row in chunk.to_dict("records"):
            text = _text(row, spec, str(path))
            if text is not None:
                yield text, _meta(row, spec.text_column)


def _rows_parquet(path: Path, spec: SourceSpec) -> Iterator[Document]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if spec.text_column not in pf.schema_arrow.names:
        raise InvalidRequest(f"{path} has no column '{spec.text_column}'; its columns are "
                             f"{pf.schema_arrow.names}. Pass --text-column.")
    for batch in pf.iter_batches(batch_size=10_000):
        for row in batch.to_pylist():
            text = _text(row, spec, str(path))
            if text is not None:
                yield text, _meta(row, spec.text_column)


def _dataset(spec: SourceSpec):
    import datasets

    path = Path(spec.source).expanduser()
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if spec.split not in ds:
                    raise InvalidRequest(f"{path} has splits {sorted(ds)}, not '{spec.split}'. Pass --split.")
                ds = ds[spec.split]
        else:
            ds = datasets.load_dataset(spec.source, spec.config, split=spec.split)
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as exc:
        if isinstance(exc, InvalidRequest):
            raise
        raise InvalidRequest(
            f"Could not load the dataset '{spec.source}' ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). "
            "Check the name, --config and --split; offline, pass a local file or a save_to_disk folder."
        ) from exc
    if spec.text_column not in ds.column_names:
        raise InvalidRequest(f"Dataset '{spec.source}' has no column '{spec.text_column}'; its columns are "
                             f"{ds.column_names}. Pass --text-column.")
    return ds


def _rows_dataset(spec: SourceSpec) -> Iterator[Document]:
    ds = _dataset(spec)
    for row in ds:
        text = _text(row, spec, spec.source)
        if text is not None:
            yield text, _meta(row, spec.text_column)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                              or (path / "state.json").exists())


def documents(spec: SourceSpec) -> Iterator[Document]:
    """The source's documents, in order: (text, metadata)."""
    path = Path(spec.source).expanduser()
    if _is_saved_dataset(path):
        yield from _rows_dataset(spec)
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if _kind(p) == "txt")
        if not files:
            raise InvalidRequest(f"{path} holds no .txt files (one document per file).")
        for p in files:
            yield from _rows_txt(p, SourceSpec(**{**spec.to_dict(), "per_file": True}))
    elif path.exists():
        kind = _kind(path)
        readers = {"txt": _rows_txt, "jsonl": _rows_jsonl, "csv": _rows_csv, "parquet": _rows_parquet}
        if kind not in readers:
            raise InvalidRequest(f"{path}: unknown file type. Use .txt, .jsonl, .csv or .parquet (optionally "
                                 ".gz for text ones), a save_to_disk folder, or a Hugging Face dataset name.")
        yield from readers[kind](path, spec)
    elif spec.source.startswith((".", "/", "~")) or _kind(path):
        raise InvalidRequest(f"{path} does not exist.")
    else:
        yield from _rows_dataset(spec)


def fingerprint(spec: SourceSpec) -> dict[str, Any]:
    """What identifies the source's content, so a resumed build can tell it has not changed."""
    path = Path(spec.source).expanduser()
    out: dict[str, Any] = {"spec": spec.to_dict()}
    if path.is_file():
        st = path.stat()
        out["file"] = [str(path.resolve()), st.st_size, st.st_mtime_ns]
    elif path.is_dir():
        out["files"] = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(path.rglob("*"))
                        if p.is_file()]
    else:
        out["dataset"] = getattr(_dataset(spec), "_fingerprint", None)
    return out
