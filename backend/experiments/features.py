"""Which features an experiment tests: from a CSV in the Neuronpedia template's columns
(`layer, feature_id, label, label_confidence`), or chosen among live features by a percentile."""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from pathlib import Path

import torch

from backend.errors import InvalidRequest
from backend.schemas import ExperimentFeature, ExperimentRequest

TEMPLATE_COLUMNS = ("layer", "feature_id", "label", "label_confidence")


def read_features_csv(path: Path) -> list[ExperimentFeature]:
    """Rows of a Neuronpedia-template CSV; `feature_id` may also be called `index` or `feature`."""
    path = Path(path)
    if not path.exists():
        raise InvalidRequest(
            f"Features CSV {path} does not exist. Write one with the columns {', '.join(TEMPLATE_COLUMNS)}."
        )
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        id_col = next((cols[c] for c in ("feature_id", "index", "feature") if c in cols), None)
        if "layer" not in cols or id_col is None:
            raise InvalidRequest(
                f"{path} needs the columns layer and feature_id (the Neuronpedia template: "
                f"{', '.join(TEMPLATE_COLUMNS)}); it has {', '.join(cols) or 'none'}."
            )
        out = []
        for n, row in enumerate(reader, start=2):
            try:
                conf = row.get(cols.get("label_confidence", ""), "") or ""
                out.append(
                    ExperimentFeature(
                        layer=int(row[cols["layer"]]),
                        index=int(row[id_col]),
                        label=(row.get(cols.get("label", ""), "") or "").strip() or None,
                        label_confidence=float(conf) if conf.strip() else None,
                    )
                )
            except (TypeError, ValueError) as exc:
                raise InvalidRequest(
                    f"{path}, line {n}: {exc}. layer and feature_id must be integers."
                ) from exc
    return out


def from_list(req: ExperimentRequest, layers: Sequence[int]) -> list[ExperimentFeature]:
    """Per layer, the `features_per_layer` best-labelled features at or above `min_conf`."""
    chosen: list[ExperimentFeature] = []
    for layer in layers:
        rows = [
            f
            for f in req.features
            if f.layer == layer and (f.label_confidence is None or f.label_confidence >= req.min_conf)
        ]
        rows = sorted(
            rows, key=lambda f: -(f.label_confidence if f.label_confidence is not None else float("-inf"))
        )
        seen: set[int] = set()
        for f in rows:
            if f.index not in seen and len(seen) < req.features_per_layer:
                seen.add(f.index)
                chosen.append(f)
    missing = sorted({f.layer for f in req.features} - set(layers))
    if not chosen:
        raise InvalidRequest(
            f"No listed feature is on the tested layers {list(layers)}"
            + (f" (the list names layers {missing})" if missing else "")
            + "."
        )
    return chosen


def live_choice(rates: torch.Tensor, percentile: float, k: int, seed: int) -> tuple[list[int], float]:
    """Among live features (firing rate > 0), those whose rate is at or above the `percentile`-th
    percentile of the live rates; `k` of them drawn with `seed`. Returns (indices, threshold)."""
    live = torch.nonzero(rates > 0).flatten()
    if live.numel() == 0:
        return [], 0.0
    threshold = float(torch.quantile(rates[live].double(), percentile / 100.0))
    pool = [int(i) for i in live if float(rates[i]) >= threshold]
    rng = random.Random(seed)
    picked = sorted(rng.sample(pool, min(k, len(pool))))
    return picked, threshold
