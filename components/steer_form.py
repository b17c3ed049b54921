"""The playground's inputs: the table of interventions, and turning its rows into request fields."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from backend.schemas import LayerFeature

OPERATIONS = ["ablate", "delta", "set_value", "alpha"]
COLUMNS = ["feature", "operation", "amount", "positions", "active at", "generated"]


def initial_rows(feature: str | None, position: int | None) -> pd.DataFrame:
    """The row a link brings (feature=L:I, optionally position=P): ablate it at the position where it
    is active (as a graph node asks), or, with no position, add to it everywhere."""
    rows: list[dict[str, Any]] = []
    if feature:
        if position is not None:
            rows.append(
                {
                    "feature": feature,
                    "operation": "ablate",
                    "amount": None,
                    "positions": str(position),
                    "active at": position,
                    "generated": False,
                }
            )
        else:
            rows.append(
                {
                    "feature": feature,
                    "operation": "delta",
                    "amount": "10",
                    "positions": "all",
                    "active at": None,
                    "generated": True,
                }
            )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype(
        {
            "feature": "string",
            "operation": "string",
            "amount": "string",
            "positions": "string",
            "active at": "Int64",
            "generated": "boolean",
        }
    )


def render_interventions(initial: pd.DataFrame, *, key: str) -> pd.DataFrame:
    return st.data_editor(
        initial,
        key=key,
        num_rows="dynamic",
        hide_index=True,
        width="stretch",
        column_config={
            "feature": st.column_config.TextColumn("feature", help="layer:index, e.g. 1:42", required=True),
            "operation": st.column_config.SelectboxColumn(
                "operation",
                options=OPERATIONS,
                required=True,
                help="ablate: set to 0; delta: add; set_value: set; alpha: multiply",
            ),
            # Text, read by `features_from_rows`: a number column would silently read "3:51" as 351.
            "amount": st.column_config.TextColumn(
                "amount", help="delta, value or alpha, a number such as 10 or -2.5 (not for ablate)"
            ),
            "positions": st.column_config.TextColumn(
                "positions", help="prompt positions (BOS is 0): 'all', '3, 5', or empty"
            ),
            "active at": st.column_config.NumberColumn(
                "active at", min_value=0, step=1, help="delta: new value = activation here + delta"
            ),
            "generated": st.column_config.CheckboxColumn(
                "generated", help="also steer every generated token"
            ),
        },
    )


def _blank(value: Any) -> bool:
    return (
        value is None
        or value is pd.NA
        or (isinstance(value, float) and value != value)
        or (isinstance(value, str) and not value.strip())
    )


def features_from_rows(rows: pd.DataFrame, sae_set: str) -> list[dict[str, Any]]:
    """SteerFeature fields for each row; ValueError with what to fix."""
    out = []
    for n, row in enumerate(rows.to_dict("records"), start=1):
        if _blank(row.get("feature")):
            if any(not _blank(row.get(c)) and row.get(c) is not False for c in COLUMNS if c != "feature"):
                raise ValueError(f"Row {n} has no feature: type its layer:index (e.g. 1:42), or delete the row.")
            continue
        try:
            f = LayerFeature.parse(str(row["feature"]).strip())
        except ValueError:
            raise ValueError(f"Row {n}: the feature '{row['feature']}' is not layer:index, e.g. 1:42.") from None
        item: dict[str, Any] = {"layer": f.layer, "index": f.index, "sae_set": sae_set}
        op = str(row.get("operation") or "ablate")
        if op not in OPERATIONS:
            raise ValueError(f"Row {n}: operation is one of {', '.join(OPERATIONS)}.")
        if op == "ablate":
            item["ablate"] = True
        else:
            if _blank(row.get("amount")):
                raise ValueError(f"Row {n}: {op} needs an amount.")
            item[op] = parse_amount(row["amount"], n, op)
        positions = "" if _blank(row.get("positions")) else str(row["positions"]).strip().lower()
        if positions == "all":
            item["steer_all_prompt_positions"] = True
        elif positions:
            try:
                item["steer_positions"] = [
                    int(p) for p in positions.replace(";", ",").split(",") if p.strip()
                ]
            except ValueError:
                raise ValueError(f"Row {n}: positions are 'all' or numbers such as '3, 5'.") from None
        if not _blank(row.get("active at")):
            item["token_active_position"] = int(row["active at"])
        item["steer_generated_tokens"] = (
            bool(row.get("generated")) if not _blank(row.get("generated")) else False
        )
        if not positions and not item["steer_generated_tokens"]:
            raise ValueError(f"Row {n}: say where to steer: positions, or tick 'generated'.")
        out.append(item)
    return out


def parse_amount(value: Any, n: int, op: str) -> float:
    """The amount column's text as a number; ValueError naming the row when it is not one."""
    try:
        amount = float(str(value).strip())
    except ValueError:
        raise ValueError(f"Row {n}: the {op} amount '{value}' is not a number; type e.g. 10 or -2.5 "
                         "(a feature goes in the feature column).") from None
    if not math.isfinite(amount):
        raise ValueError(f"Row {n}: the {op} amount must be a finite number.")
    return amount


def parse_alphas(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise ValueError("Alphas are numbers separated by commas, e.g. 0, 0.5, 1, 2, 4.") from None
    if not values:
        raise ValueError("Give at least one alpha.")
    return values


def features_from_csv(data: bytes) -> list[dict[str, Any]]:
    """Rows of an uploaded Neuronpedia-template CSV (layer, feature_id, label, label_confidence)."""
    import io

    frame = pd.read_csv(io.BytesIO(data))
    cols = {c.lower().strip(): c for c in frame.columns}
    id_col = next((cols[c] for c in ("feature_id", "index", "feature") if c in cols), None)
    if "layer" not in cols or id_col is None:
        raise ValueError(
            "The CSV needs the columns layer and feature_id (label and label_confidence optional)."
        )
    out = []
    for row in frame.to_dict("records"):
        item = {"layer": int(row[cols["layer"]]), "index": int(row[id_col])}
        if "label" in cols and not _blank(row[cols["label"]]):
            item["label"] = str(row[cols["label"]])
        if "label_confidence" in cols and not _blank(row[cols["label_confidence"]]):
            item["label_confidence"] = float(row[cols["label_confidence"]])
        out.append(item)
    return out


def feature_scales(rows: pd.DataFrame, model_id: str, sae_set: str, limit: int = 8) -> list[str]:
    """A line per feature of the grid (the first `limit`) saying how strongly it fires in the corpus,
    so an amount can be chosen on the feature's own scale. Never waits for a corpus store: a feature
    whose store is not ready says so. Answers are kept for the session."""
    from backend.errors import BackendError
    from backend.schemas import FeatureRef, FeatureRequest
    from components import state

    cache: dict[str, str] = st.session_state.setdefault("st_scale_cache", {})
    lines: list[str] = []
    seen: set[tuple[int, int]] = set()
    for row in rows.to_dict("records"):
        if _blank(row.get("feature")):
            continue
        try:
            f = LayerFeature.parse(str(row["feature"]).strip())
        except ValueError:
            continue
        if (f.layer, f.index) in seen:
            continue
        seen.add((f.layer, f.index))
        if len(seen) > limit:
            break
        key = f"{model_id}|{sae_set}|{f.layer}:{f.index}"
        if key not in cache:
            req = FeatureRequest(feature=FeatureRef(model=model_id, sae_set=sae_set, layer=f.layer, index=f.index),
                                 n_examples=0, n_quantiles=0, examples_per_quantile=0, n_logits=0,
                                 wait_for_store=False)
            try:
                res = state.backend().feature(req)
            except BackendError as exc:
                lines.append(f"{f.layer}:{f.index}: {state.markdown_text(state.clip_message(exc.message))}")
                continue
            if res.max_activation is None:
                why = "the corpus store is being built" if res.store_status == "pending" else "no corpus store"
                lines.append(f"{f.layer}:{f.index}: its corpus maximum is not known yet ({why}).")
                continue  # not cached: the store may be ready next time
            mean = f", {res.mean_activation:.3g} on average when active" if res.mean_activation else ""
            cache[key] = (f"{f.layer}:{f.index} fires up to {res.max_activation:.3g} in the corpus{mean}: "
                          "a delta or set_value of that size is a strong firing.")
        lines.append(cache[key])
    return lines
