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
    prefix: str  # the example up to and including its activating token


def _unmark(text: str) -> str:
    return _MARK.sub(lambda m: m.group(1), text)


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
                                prefix=_unmark(example[:mark.end()]).strip() if mark else _unmark(example).strip()))
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    return tuple(out)


def showcase(demo_dir: Path) -> tuple[Showcase, ...]:
    return _showcase(str(demo_dir / "metrics.json"))


def highlighter_text(demo_dir: Path, set_id: str | None, fallback: str) -> str:
    """A few showcase lines of this set, joined: each shows one of its features at work."""
    lines = [s.text for s in showcase(demo_dir) if s.set_id == set_id][:3]
    return "\n".join(lines) if lines else fallback


def steering_prompt(demo_dir: Path, fallback: str) -> str:
    """The first showcase example up to its activating token: a prompt on which that feature fires."""
    items = showcase(demo_dir)
    return items[0].prefix if items else fallback
