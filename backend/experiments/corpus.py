"""Where the passages come from: WikiText-2 through `datasets` (online), a local text file, the
demo pack's corpus (offline), or texts given in the request. One passage per non-empty line."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import TYPE_CHECKING

from backend.errors import InvalidRequest, ModelUnavailable
from backend.schemas import ExperimentRequest

if TYPE_CHECKING:
    from backend.local.runtime import Runtime

WIKITEXT = ("wikitext", "wikitext-2-raw-v1", "test")


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a .txt or .txt.gz file, stripped."""
    path = Path(path)
    if not path.exists():
        raise InvalidRequest(
            f"Corpus file {path} does not exist. Give a text file with one passage per line."
        )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f if line.strip()]


def wikitext2() -> list[str]:
    """WikiText-2's test split, paragraphs only (no blank lines, no ' = Heading = ' lines)."""
    try:
        from datasets import load_dataset

        rows = load_dataset(*WIKITEXT[:2], split=WIKITEXT[2])["text"]
    except Exception as exc:  # offline, no cache, hub errors: all say the same to the user
        raise ModelUnavailable(
            f"WikiText-2 could not be loaded through `datasets` ({type(exc).__name__}). It needs the network "
            "once (or a cached copy); offline, use --corpus demo or --corpus path/to/passages.txt."
        ) from exc
    return [r.strip() for r in rows if r.strip() and not r.strip().startswith("=")]


def passages(backend: Runtime, req: ExperimentRequest) -> tuple[list[str], str]:
    """The candidate passages, in order, and a description of where they came from."""
    if req.corpus == "texts":
        return [t.strip() for t in req.texts or [] if t.strip()], "passages given in the request"
    if req.corpus == "wikitext2":
        return wikitext2(), "WikiText-2 (wikitext-2-raw-v1, test split)"
    pack = backend.pack()
    path = pack.corpus_path()
    if path is None:
        raise ModelUnavailable(
            "The demo pack has no corpus file. Rebuild it with `make demo`, or give a text file."
        )
    return read_lines(path), f"demo pack corpus ({path.name}, {pack.manifest.name})"
