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
    text: str  # one example line, unmarked
    prefix: str  # the example up to its activating token and the end of that word
    raw_start_is_space: bool = False  # the example window starts at a word, not inside one


def _unmark(text: str) -> str:
    return _MARK.sub(lambda m: m.group(1), text)


def _to_word_end(example: str, end: int) -> str:
    """The example up to its activating token and on to the end of that word (a token can be part of one)."""
    rest = _unmark(example[end:])
    cut = next((i for i, ch in enumerate(rest) if ch.isspace()), len(rest))
    return (_unmark(example[:end]) + rest[:cut]).strip()


@functools.cache
def _showcase(metrics_path: str) -> tuple[Showcase, ...]:
    try:
        data = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    out = []
    for item in data.get("showcase") or []:
        try:
            example = item["examples"][0]["text"]
            mark = _MARK.search(example)
            out.append(Showcase(set_id=str(item["set"]), layer=int(item["layer"]), index=int(item["index"]),
                                explanation=str(item.get("explanation", "")), text=_unmark(example).strip(),
                                prefix=_to_word_end(example, mark.end()) if mark else _unmark(example).strip(),
                                raw_start_is_space=_starts_a_word(example)))
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    return tuple(out)


def showcase(demo_dir: Path) -> tuple[Showcase, ...]:
    return _showcase(str(demo_dir / "metrics.json"))


@functools.cache
def _sentences(metrics_path: str) -> tuple[str, ...]:
    try:
        data = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
        return tuple(str(t) for t in (data.get("readability") or {}).get("sentences") or [] if str(t).strip())
    except (OSError, ValueError, AttributeError):
        return ()


def sentences(demo_dir: Path) -> tuple[str, ...]:
    """The pack's held-out documentation sentences (whole sentences, unlike the showcase's token
    windows, which can start or end inside a word)."""
    return _sentences(str(demo_dir / "metrics.json"))


def highlighter_text(demo_dir: Path, set_id: str | None, fallback: str) -> str:
    """Three of the pack's held-out documentation sentences; else showcase lines of this set."""
    lines = list(sentences(demo_dir)[:3]) or [s.text for s in showcase(demo_dir) if s.set_id == set_id][:3]
    return " ".join(lines) if lines else fallback


def _starts_a_word(text: str) -> bool:
    return text[:1].isspace()


def steering_prompt(demo_dir: Path, fallback: str) -> str:
    """A showcase example up to its activating token, taken from one whose window starts at a word
    (a prompt on which that feature fires, and that reads as text)."""
    for item in showcase(demo_dir):
        if item.raw_start_is_space and len(item.prefix.split()) >= 3:
            return item.prefix
    return fallback
