"""Feature explanations: from the demo pack, from Neuronpedia export files, and from the user.

Sources, later ones winning:
1. the demo pack's `explanations/<set>.json` (for the demo model);
2. Neuronpedia explanation exports dropped in `<data_dir>/explanations/` (`.json`, `.jsonl`,
   optionally `.gz`), whose records carry `modelId`, `layer` (e.g. "8-res-jb"), `index` and
   `description`; they are matched to catalog SAE sets through the sets' Neuronpedia ids;
3. explanations a user typed, saved in the SQLite database `<data_dir>/explanations/user.sqlite3`.

A team shares one data dir, so user explanations are multi-writer data: several services, the app
and the CLI may save at once. SQLite in WAL mode makes each save one transaction, safe across
processes (readers never block writers), and an acknowledged save is on disk. The JSON files of
earlier versions (`explanations/user/<model>/<set>.json`) are imported once, the first time any
process opens the database (under SQLite's write lock, so two processes cannot both import); the
files are left where they were and no longer read.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from backend.catalog import Catalog

LayerExplanations = dict[int, dict[int, str]]  # layer -> index -> text


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_neuronpedia_export(path: Path) -> Iterator[tuple[str, int, str]]:
    """(neuronpedia source id 'model/layer-set', index, description) for each record of a file."""
    name = path.name.removesuffix(".gz")
    with _open_text(path) as f:
        if name.endswith(".jsonl"):
            records = (json.loads(line) for line in f if line.strip())
        else:
            data = json.load(f)
            records = iter(data if isinstance(data, list) else data.get("explanations", []))
        for rec in records:
            try:
                source = f"{rec['modelId']}/{rec['layer']}"
                yield source, int(rec["index"]), str(rec["description"]).strip()
            except (KeyError, TypeError, ValueError):
                continue


class ExplanationStore:
    def __init__(self, catalog: Callable[[], Catalog], data_dir: Path,
                 pack_explanations: Callable[[str, str], LayerExplanations]) -> None:
        self._catalog = catalog
        self._dir = Path(data_dir) / "explanations"
        self._pack = pack_explanations
        self._lock = threading.Lock()
        self._neuronpedia: dict[str, dict[int, str]] | None = None  # source id -> index -> text
        self._user_db = UserExplanations(self._dir)

    def _neuronpedia_index(self) -> dict[str, dict[int, str]]:
        with self._lock:
            if self._neuronpedia is None:
                index: dict[str, dict[int, str]] = {}
                if self._dir.exists():
                    for path in sorted(self._dir.glob("*.json*")):
                        for source, i, text in read_neuronpedia_export(path):
                            index.setdefault(source, {})[i] = text
                self._neuronpedia = index
            return self._neuronpedia

    def reload(self) -> None:
        with self._lock:
            self._neuronpedia = None

    def _user(self, model: str, sae_set: str) -> LayerExplanations:
        out: LayerExplanations = {}
        for layer, index, text in self._user_db.rows(model, sae_set):
            out.setdefault(layer, {})[index] = text
        return out

    def for_set(self, model: str, sae_set: str, layers: list[int]) -> LayerExplanations:
        entry = self._catalog().model(model)
        set_entry = entry.sae_sets.get(sae_set)
        out: LayerExplanations = {layer: {} for layer in layers}
        if entry.source == "demo":
            pack = self._pack(model, sae_set)
            for layer in layers:
                out[layer].update(pack.get(layer, {}))
        if set_entry is not None and set_entry.neuronpedia:
            index = self._neuronpedia_index()
            for layer in layers:
                out[layer].update(index.get(set_entry.neuronpedia_for(layer) or "", {}))
        user = self._user(model, sae_set)
        for layer in layers:
            out[layer].update(user.get(layer, {}))
        return out

    def get(self, model: str, sae_set: str, layer: int, index: int) -> tuple[str | None, str | None]:
        """(explanation, source) for one feature; source is 'user', 'neuronpedia' or 'demo pack'."""
        user = self._user(model, sae_set).get(layer, {})
        if index in user:
            return user[index], "user"
        entry = self._catalog().model(model)
        set_entry = entry.sae_sets.get(sae_set)
        if set_entry is not None and set_entry.neuronpedia:
            text = self._neuronpedia_index().get(set_entry.neuronpedia_for(layer) or "", {}).get(index)
            if text:
                return text, "neuronpedia"
        if entry.source == "demo":
            text = self._pack(model, sae_set).get(layer, {}).get(index)
            if text:
                return text, "demo pack"
        return None, None

    def save(self, model: str, sae_set: str, layer: int, index: int, text: str) -> None:
        """Store a user's explanation (an empty text removes it); on disk when this returns."""
        self._user_db.save(model, sae_set, layer, index, text.strip())


SCHEMA = """
CREATE TABLE IF NOT EXISTS user_explanation (
    model TEXT NOT NULL,
    sae_set TEXT NOT NULL,
    layer INTEGER NOT NULL,
    feature INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (model, sae_set, layer, feature)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
BUSY_TIMEOUT_S = 30.0


class UserExplanations:
    """The users' explanations in SQLite (WAL mode): one connection per call, so threads and
    processes share nothing but the file."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "user.sqlite3"
        self._ready = False
        self._ready_lock = threading.Lock()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self._ensure()
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")  # an acknowledged save survives a power cut
            yield conn
        finally:
            conn.close()

    def _ensure(self) -> None:
        with self._ready_lock:
            if self._ready:
                return
            self.folder.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(SCHEMA)
                conn.execute("BEGIN IMMEDIATE")  # the write lock: one process imports, once
                try:
                    done = conn.execute("SELECT value FROM meta WHERE key = 'imported_json'").fetchone()
                    if done is None:
                        conn.executemany(
                            "INSERT OR IGNORE INTO user_explanation VALUES (?, ?, ?, ?, ?)",
                            list(self._legacy_rows()),
                        )
                        conn.execute("INSERT INTO meta VALUES ('imported_json', '1')")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            finally:
                conn.close()
            self._ready = True

    def _legacy_rows(self) -> Iterator[tuple[str, str, int, int, str]]:
        """Rows of the JSON files earlier versions wrote (`user/<model>/<set>.json`)."""
        root = self.folder / "user"
        if not root.is_dir():
            return
        for path in sorted(root.glob("*/*.json")):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                for layer, feats in raw.items():
                    for index, text in feats.items():
                        if str(text).strip():
                            yield path.parent.name, path.stem, int(layer), int(index), str(text).strip()
            except (OSError, ValueError, AttributeError):
                continue  # an unreadable old file: nothing to import from it

    def rows(self, model: str, sae_set: str) -> list[tuple[int, int, str]]:
        with self._connect() as conn:
            return conn.execute(
                "SELECT layer, feature, text FROM user_explanation WHERE model = ? AND sae_set = ?",
                (model, sae_set),
            ).fetchall()

    def save(self, model: str, sae_set: str, layer: int, index: int, text: str) -> None:
        with self._connect() as conn:
            if text:
                conn.execute(
                    "INSERT INTO user_explanation VALUES (?, ?, ?, ?, ?) ON CONFLICT (model, sae_set, layer, "
                    "feature) DO UPDATE SET text = excluded.text",
                    (model, sae_set, layer, index, text),
                )
            else:
                conn.execute(
                    "DELETE FROM user_explanation WHERE model = ? AND sae_set = ? AND layer = ? AND feature = ?",
                    (model, sae_set, layer, index),
                )
