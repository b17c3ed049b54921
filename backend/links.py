"""Links to the outside world that every part builds the same way."""

from __future__ import annotations

from urllib.parse import quote

NEURONPEDIA = "https://www.neuronpedia.org"


def neuronpedia_url(source_id: str | None, index: int) -> str | None:
    """The Neuronpedia page of feature `index` of source `model/layer-set` (None if unknown)."""
    if not source_id:
        return None
    return f"{NEURONPEDIA}/{quote(source_id, safe='/-_.')}/{int(index)}"
