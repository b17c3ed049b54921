"""Feature explanations: from the demo pack, from Neuronpedia export files, and from the user.

Sources, later ones winning:
1. the demo pack's `explanations/<set>.json` (for the demo model);
2. Neuronpedia explanation exports dropped in `<data_dir>/explanations/` (`.json`, `.jsonl`,
   optionally `.gz`), whose records carry `modelId`, `layer` (e.g. "8-res-jb"), `index` and
   `description`; they are matched to catalog SAE sets through the sets' Neuronpedia ids;
3. explanations a user typed, saved in `<data_dir>/explanations/user/<model>/<set>.json`.
"""

from __future__ import annotations

import gzip
import json
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

    def _user_path(self, model: str, sae_set: str) -> Path:
        return self._dir / "user" / model / f"{sae_set}.json"

    def _user(self, model: str, sae_set: str) -> LayerExplanations:
        path = self._user_path(model, sae_set)
        if not path.exists():
            return {}
        raw = json.loads(path.read_text())
        return {int(layer): {int(i): t for i, t in feats.items()} for layer, feats in raw.items()}

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
        """Store a user's explanation (an empty text removes it)."""
        path = self._user_path(model, sae_set)
        with self._lock:
            raw = json.loads(path.read_text()) if path.exists() else {}
            feats = raw.setdefault(str(layer), {})
            if text.strip():
                feats[str(index)] = text.strip()
            else:
                feats.pop(str(index), None)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(raw, indent=1, sort_keys=True))
            tmp.replace(path)
