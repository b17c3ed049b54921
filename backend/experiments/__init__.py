"""Intervention experiments over a corpus (seed 002's pipeline), on any catalog model and SAE set.

`python -m backend.experiments run --config configs/default.yaml` (see `cli.py`) runs it from a
terminal and writes CSVs, plots and a report (`outputs.py`); `Backend.experiment` runs small
ones for the steering playground. Both go through `runner.run`, which uses the playground's own
interventions (`backend.local.interventions`) and metrics (`backend.local.steer_metrics`), so the
numbers agree. Passages come from `corpus.py`, features from `features.py`.
"""
