"""The offline demo pack: a small model of our own with SAEs, transcoders and explanations.

`pack.py` fixes the on-disk format and finds the pack; `tiny.py` builds a tiny random pack in
that format for when the trained one (assets/demo) is not installed.
"""
