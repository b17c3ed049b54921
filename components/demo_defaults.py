"""Default texts and prompts from the installed demo pack, so the demo reads like a demo of its
model: the pack's metrics.json lists showcase features with the corpus lines they fire on, the
activating token marked `[[ ]]`. Without a pack (or a showcase) the pages keep their own defaults."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

_MARK = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)


@dataclass(frozen=True)
class Showcase:
    set_id: str
    layer: int
    index: int
    explanation: str
    example: str  # one example line as the pack writes it: the activating token marked [[ ]]

    @property
    def text(self) -> str:
        """The example, unmarked."""
        return _unmark(self.example).strip()

    @property
    def prefix(self) -> str:
        """The example up to its activating token and on to the end of that word (a token can be part
        of one)."""
        mark = _MARK.search(self.example)
        if mark is None:
            return self.text
        rest = _unmark(self.example[mark.end():])
        cut = next((i for i, ch in enumerate(rest) if ch.isspace()), len(rest))
        return (_unmark(self.example[:mark.end()]) + rest[:cut]).strip()

    @property
    def starts_a_word(self) -> bool:
        """The example's window starts at a word, not inside one."""
        return self.example[:1].isspace()


def _unmark(text: str) -> str:
    return _MARK.sub(lambda m: m.group(1), text)


@functools.cache
def _metrics(metrics_path: str) -> dict:
    """The pack's metrics.json, read once ({} without a pack)."""
    try:
        data = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def showcase(demo_dir: Path) -> tuple[Showcase, ...]:
    out = []
    for item in _metrics(str(demo_dir / "metrics.json")).get("showcase") or []:
        try:
            out.append(Showcase(set_id=str(item["set"]), layer=int(item["layer"]), index=int(item["index"]),
                                explanation=str(item.get("explanation", "")),
                                example=str(item["examples"][0]["text"])))
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    return tuple(out)


def sentences(demo_dir: Path) -> tuple[str, ...]:
    """The pack's held-out documentation sentences (whole sentences, unlike the showcase's token
    windows, which can start or end inside a word)."""
    readability = _metrics(str(demo_dir / "metrics.json")).get("readability")
    found = readability.get("sentences") if isinstance(readability, dict) else None
    return tuple(str(t) for t in found or [] if str(t).strip())


def highlighter_text(demo_dir: Path, set_id: str | None, fallback: str) -> str:
    """Three of the pack's held-out documentation sentences; else showcase lines of this set."""
    lines = list(sentences(demo_dir)[:3]) or [s.text for s in showcase(demo_dir) if s.set_id == set_id][:3]
    return " ".join(lines) if lines else fallback


def steering_prompt(demo_dir: Path, fallback: str) -> str:
    """A showcase example up to its activating token, taken from one whose window starts at a word
    (a prompt on which that feature fires, and that reads as text)."""
    for item in showcase(demo_dir):
        if item.starts_a_word and len(item.prefix.split()) >= 3:
            return item.prefix
    return fallback
