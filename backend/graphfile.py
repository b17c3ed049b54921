"""Graph JSON files in circuit-tracer's / Neuronpedia's schema: read, check, write, view state.

The schema is circuit-tracer's `frontend/graph_models.py` (`metadata`, `qParams`, `nodes`, `links`),
which Neuronpedia's graph server and viewer use too. The models here mirror its field names but
accept what exported files carry besides (Neuronpedia adds `metadata.info`, `generation_settings`,
`pruning_settings`; older files lack `qParams`, give `layer` as a number or `pinnedIds` as one
comma-separated string); extra fields are kept, so a file saved back loses nothing.

The view state lives where circuit-tracer's viewer keeps it, in `qParams`: `pinnedIds`,
`supernodes` (each `[label, node_id, ...]`) and `clickedId`. Reopening a saved file restores it.

No torch here: the UI imports this module.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backend.atomic_files import atomic_write
from backend.errors import InvalidRequest, NotFound

GZIP_MAGIC = b"\x1f\x8b"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FileMetadata(_Open):
    slug: str = ""
    scan: str | None = None
    transcoder_list: list[str] = Field(default_factory=list)
    prompt_tokens: list[str]
    prompt: str = ""
    node_threshold: float | None = None
    schema_version: int | None = 1


class FileQParams(_Open):
    pinnedIds: list[str] = Field(default_factory=list)
    supernodes: list[list[str]] = Field(default_factory=list)
    linkType: str = "both"
    clickedId: str = ""
    sg_pos: str = ""

    @field_validator("pinnedIds", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):  # circuit-tracer's viewer accepts "a,b,c" too
            return [p for p in v.split(",") if p]
        return [] if v is None else v

    @field_validator("clickedId", "sg_pos", "linkType", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return "" if v is None else v

    @field_validator("supernodes", mode="before")
    @classmethod
    def _none_is_list(cls, v: Any) -> Any:
        return [] if v is None else v


class FileNode(_Open):
    node_id: str
    feature: int | None = None
    layer: str
    ctx_idx: int
    feature_type: str
    token_prob: float = 0.0
    is_target_logit: bool = False
    clerp: str = ""
    influence: float | None = None
    activation: float | None = None

    @field_validator("layer", "node_id", mode="before")
    @classmethod
    def _as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    @field_validator("clerp", mode="before")
    @classmethod
    def _clerp(cls, v: Any) -> Any:
        return "" if v is None else v


class FileLink(_Open):
    source: str
    target: str
    weight: float


class GraphFile(_Open):
    metadata: FileMetadata
    qParams: FileQParams = Field(default_factory=FileQParams)
    nodes: list[FileNode]
    links: list[FileLink]


def feature_address(node_id: str) -> tuple[int, int, int] | None:
    """(layer, index, position) of a feature node id, `layer_index_position` in circuit-tracer's
    graph JSON; None for any other id. The one parser of node ids (engine and UI alike)."""
    parts = str(node_id).split("_")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def parse_graph(data: bytes | str | dict[str, Any], *, name: str = "the file") -> dict[str, Any]:
    """A graph JSON (plain or gzipped bytes, text, or already parsed), checked and normalised."""
    if isinstance(data, bytes):
        if data[:2] == GZIP_MAGIC:
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as exc:
                raise InvalidRequest(f"{name} looks gzipped but cannot be decompressed ({exc}).") from exc
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"{name} is neither JSON text nor gzipped JSON.") from exc
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise InvalidRequest(f"{name} is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"{name} holds a JSON {type(data).__name__}, not a graph object.")
    try:
        graph = GraphFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(
            f"{name} is not a graph in circuit-tracer / Neuronpedia's schema: {where}: {first['msg']}. "
            "Expected metadata (prompt_tokens), nodes and links, as written by circuit-tracer's "
            "create_graph_files or downloaded from Neuronpedia."
        ) from exc
    return graph.model_dump()


def shown(text: str, chars: int = 80) -> str:
    """User input as a message may echo it: at most `chars` characters."""
    return text if len(text) <= chars else text[: chars - 1] + "…"


def read_graph_file(path: str | Path) -> dict[str, Any]:
    """A graph JSON (.json or .json.gz) from a path on this machine."""
    try:
        p = Path(path).expanduser()
        name_ok = p.name.endswith(".json") or p.name.endswith(".json.gz")
        is_file = name_ok and p.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        raise InvalidRequest(f"{shown(str(path))} is not a usable path. Give the path of a graph file.") from None
    if not name_ok:
        raise InvalidRequest(f"{shown(p.name)} is not a .json or .json.gz file. Give the path of a graph file.")
    if not is_file:
        raise NotFound(f"No graph file at {shown(str(p))}. Give the path of a .json or .json.gz graph file.")
    return parse_graph(p.read_bytes(), name=shown(p.name))


def graph_bytes(doc: dict[str, Any], *, compress: bool = False) -> bytes:
    """The graph as JSON bytes; gzipped (level 3, as Neuronpedia's graph server does) if asked."""
    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return gzip.compress(data, compresslevel=3) if compress else data


def with_view_state(doc: dict[str, Any], *, pinned: Sequence[str], supernodes: Sequence[Sequence[str]],
                    clicked: str | None) -> dict[str, Any]:
    """A shallow copy of `doc` whose qParams hold this view (pins, supernodes, selection)."""
    q = dict(doc.get("qParams") or {})
    q.update(pinnedIds=list(pinned), supernodes=[list(s) for s in supernodes], clickedId=clicked or "")
    q.setdefault("linkType", "both")
    q.setdefault("sg_pos", "")
    return {**doc, "qParams": q}


def view_state(doc: dict[str, Any]) -> tuple[list[str], list[list[str]], str | None]:
    """(pinned ids, supernodes, clicked id) saved in a graph's qParams, limited to its nodes."""
    ids = {n["node_id"] for n in doc["nodes"]}
    q = doc.get("qParams") or {}
    pinned = [i for i in q.get("pinnedIds") or [] if i in ids]
    supernodes = []
    for group in q.get("supernodes") or []:
        if len(group) >= 2:
            members = [i for i in group[1:] if i in ids]
            if members:
                supernodes.append([str(group[0]), *members])
    clicked = q.get("clickedId") or None
    return pinned, supernodes, clicked if clicked in ids else None


def safe_file_name(slug: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in slug).strip("-.")
    return (keep or "graph")[:100]


def library_dir(data_dir: str | Path) -> Path:
    """Where the app saves graphs (with their view state): `<data_dir>/graphs/saved`."""
    return Path(data_dir) / "graphs" / "saved"


def save_to_library(doc: dict[str, Any], folder: str | Path) -> Path:
    """Write `doc` as `<slug>.json` in `folder` (atomically) and return the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{safe_file_name(str(doc['metadata'].get('slug') or 'graph'))}.json"
    atomic_write(path, graph_bytes(doc))  # unique temporary name, inter-process lock
    return path


def list_library(folder: str | Path) -> list[Path]:
    """Saved graphs, newest first."""
    folder = Path(folder)
    if not folder.exists():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
             and (p.name.endswith(".json") or p.name.endswith(".json.gz"))]
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)
