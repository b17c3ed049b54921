"""One feature's corpus answers from an open store: statistics, top examples, quantile bands.

Everything reads only the feature's own entries (its slice of the feature-major index, its row of
statistics, and a few token-major rows around each example), whatever the corpus size. Each
answer says how it was obtained (`Sampling`, as in the Modal design).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from backend.corpus import layout as L
from backend.corpus.store import CorpusStore, LayerView
from backend.schemas import Example, Histogram, QuantileBand, Sampling

Decode = Callable[[Sequence[int]], list[str]]


def coverage(store: CorpusStore) -> float:
    used, total = store.attr("docs_used"), store.attr("docs_total")
    return min(1.0, used / total) if used and total else 1.0


def stats_sampling(store: CorpusStore) -> Sampling:
    cov = coverage(store)
    scope = f"{store.n_tokens:,} tokens in {store.n_docs:,} documents"
    if cov < 1.0:
        return Sampling(method="sequential_from_start",
                        description=f"The first {store.n_docs:,} documents of the corpus ({cov:.1%} of them; "
                                    f"{scope}) were encoded; statistics count every firing activation in them.",
                        tokens_scanned=store.n_tokens, corpus_coverage=cov)
    return Sampling(method="full_corpus",
                    description=f"Every token of the corpus store ({scope}) was encoded when it was built; "
                                "statistics count every firing activation, not a sample.",
                    tokens_scanned=store.n_tokens, corpus_coverage=1.0)


def examples_sampling(store: CorpusStore, view: LayerView) -> Sampling:
    indexed, total = int(view.offsets[-1]), int(view.count.sum())
    text = "The strongest activations, read from the feature-major index over the whole store"
    if indexed < total:
        text += (f"; the index keeps each token's top {view.k} features, {indexed / total:.1%} of all firing "
                 "activations, so weak activations of busy tokens are not listed")
    return Sampling(method="top_by_activation", description=text + ".", tokens_scanned=store.n_tokens,
                    corpus_coverage=coverage(store))


def quantiles_sampling(store: CorpusStore, n_bands: int) -> Sampling:
    return Sampling(method="quantile_bands",
                    description=f"The activation range (0, max] cut into {n_bands} equal bands; examples at evenly "
                                "spaced ranks within each band, from the feature-major index.",
                    tokens_scanned=store.n_tokens, corpus_coverage=coverage(store))


def histogram(view: LayerView, feature: int) -> Histogram | None:
    """The feature's histogram, trimmed to its non-empty bins (log-spaced edges)."""
    counts = view.hist_row(feature)
    nz = np.flatnonzero(counts)
    if not len(nz):
        return None
    a, b = int(nz[0]), int(nz[-1]) + 1
    edges = L.EDGES[a:b + 1].astype(np.float64)
    if not np.isfinite(edges[-1]):
        edges[-1] = max(float(view.peak[feature]), float(edges[-2]))
    return Histogram(bin_edges=[float(e) for e in edges], counts=[int(c) for c in counts[a:b]], log_bins=True)


def example(store: CorpusStore, view: LayerView, feature: int, token: int, value: float, context: int,
            decode: Decode) -> Example:
    doc = store.doc_of(token)
    start, end = store.doc_bounds(doc)
    a, b = max(start, token - context), min(end, token + context + 1)
    ids = store.tokens(a, b)
    acts = view.activations(feature, a, b)
    meta = {k: v for k, v in store.meta(doc).items() if v is None or isinstance(v, (str, int, float))}
    return Example(doc_id=doc, token_index=token, doc_position=token - start, tokens=decode(ids.tolist()),
                   token_ids=ids.tolist(), activations=[float(x) for x in acts], max_position=token - a,
                   max_activation=float(value), metadata=meta)


def top_examples(store: CorpusStore, view: LayerView, feature: int, n: int, context: int,
                 decode: Decode) -> list[Example]:
    tokens, values = view.entries(feature, 0, n)
    return [example(store, view, feature, int(t), float(v), context, decode) for t, v in zip(tokens, values)]


def quantile_bands(store: CorpusStore, view: LayerView, feature: int, n_bands: int, per_band: int,
                   context: int, decode: Decode) -> list[QuantileBand]:
    """Bands of (0, max], strongest first; each with its entry count and evenly spaced examples."""
    peak, n = float(view.peak[feature]), view.n_entries(feature)
    if n_bands == 0 or n == 0 or peak <= 0:
        return []
    bands = []
    edges = [peak * i / n_bands for i in range(n_bands, -1, -1)]  # high to low
    start = 0
    for i in range(n_bands):
        high, low = edges[i], edges[i + 1]
        stop = n if i == n_bands - 1 else view.first_rank_below(feature, low)
        examples: list[Example] = []
        if stop > start and per_band > 0:
            ranks = np.unique(np.linspace(start, stop - 1, min(per_band, stop - start)).round().astype(np.int64))
            tokens, values = view.entries_at(feature, ranks)
            examples = [example(store, view, feature, int(t), float(v), context, decode)
                        for t, v in zip(tokens, values)]
        bands.append(QuantileBand(low=low, high=high, count=stop - start, examples=examples))
        start = stop
    return bands
