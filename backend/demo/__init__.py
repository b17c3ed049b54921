"""The offline demo pack: a small model of our own with SAEs, transcoders and explanations.

`pack.py` fixes the on-disk format and finds the pack; `tiny.py` builds a tiny random pack in
that format for when the trained one (assets/demo) is not installed.

The trained pack is built by `python -m backend.demo build` (`make demo`), from the modules:
`corpus.py` (the Python documentation from Debian's python3.11-doc, one document per line),
`lm.py` (tokenised rows, model training, held-out and unigram loss, generations), `sparse.py`
(BatchTopK -> JumpReLU SAEs and transcoders, saved for SAELens and circuit-tracer),
`evaluate.py` (L0, variance explained, CE loss spliced in), `autoexplain.py` (explanations from
top examples and top logits), `card.py` (CARD.md, SOURCES.md) and `build.py` (the pipeline).
"""
