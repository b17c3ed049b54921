"""Corpus activation stores: a corpus run once through a model and its SAE (or transcoder) layers,
indexed so that any feature's top examples and statistics are read in milliseconds.

Commands (`python -m backend.corpus ...`): `build`, `import-seed`, `info`; see cli.py.

Store layout (HDF5, one file; names in layout.py)
-------------------------------------------------
    attrs        format="featurescope-corpus-store", version, complete, kind="store", model, sae_set,
                 dictionary_kind ("sae" | "transcoder"), layers, k, seq_len, prepend_bos, n_tokens,
                 n_docs, docs_used / docs_total (coverage), source, executor, n_shards
    tokens               uint32 [n_tokens]        token ids, documents back to back (no BOS)
    doc_offsets          int64  [n_docs + 1]      document d = tokens[off[d]:off[d+1]]
    doc_meta             uint8  [bytes]           one JSON object per document (stars, review_id, line...)
    doc_meta_offsets     int64  [n_docs + 1]
    hist_edges           float32 [N_BINS + 1]     0, 1e-4 ... 1e4 (20 log bins per decade), inf
    model_probe          float32 [64]             sampled unembedding values: recognises the weights
    layers/<L>/          attrs layer, d_sae, k, hook_name; probe (sampled decoder values)
        z_idx            [n_tokens, k]            each token's top-k features (as in the seed)
        z_val            float32 [n_tokens, k]    their activations (<= 0: not firing)
        index/offsets    int64 [d_sae + 1]        feature-major index: feature f's entries are
        index/token      uint32 [entries]            [off[f], off[f+1]), by value descending,
        index/value      float32 [entries]           ties in token order; only values > 0
        stats/count      int64 [d_sae]            statistics over EVERY firing activation (dense,
        stats/sum        float64 [d_sae]             before the top-k cut): count, sum, max and
        stats/max        float32 [d_sae]             the histogram over hist_edges
        stats/hist       int64 [d_sae, N_BINS]

Every large dataset is chunked with a Fletcher-32 checksum; nothing records a time, so the same
build gives the same bytes. A shard is a store of a slice (kind="shard", shard, doc_start).

Shard spec (a JSON-able dict; what `--executor modal` sends to Modal)
---------------------------------------------------------------------
    {"format": "featurescope-shard-spec", "version": 1,
     "shard": 3,                   shard number (its position in the corpus)
     "doc_start": 1200,            number of the shard's first document in the corpus
     "model": "gpt2-small",        catalog model id
     "sae_set": "res-jb",          SAE set or per-layer transcoder set id
     "layers": [6, 8],             layers to encode
     "k": 32,                      features kept per token (token-major rows)
     "seq_len": 128,               window length, BOS included when prepend_bos
     "prepend_bos": true,          the set's prepend_bos; else true unless the set runs fixed windows
     "batch_rows": 64,             windows per forward pass
     "docs": [{"ids": [464, 2068, ...], "meta": {"stars": 5}}, ...],   token ids (no BOS) + metadata
     "expect": {"model_probe": [...]}   optional: refuse to run on other weights}

The executor calls `modal.Function.from_name("featurescope", "corpus_shard").map(specs)`; the
deployed function (deploy/modal_app.py) calls `backend.corpus.shards.build_shard_bytes(spec)`,
which loads the model and dictionaries through the container's Runtime (its own catalog)
and returns the shard's HDF5 file as bytes. `--executor local` runs the same specs through
`build_shard` in this process; the merge (merge.py) is the same code either way.
"""

from __future__ import annotations
