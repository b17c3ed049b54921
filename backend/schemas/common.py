"""Shared pieces of the wire format: the base model, feature references and tokens."""

from __future__ import annotations

import functools
import math
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

INT64_MAX = 2**63 - 1
# No request number needs more: past it a value is a mistake (or an attack), not a setting.
FLOAT_MAGNITUDE_MAX = 1e12

# One wording of a feature's density wherever a result carries it.
DENSITY = ("Share of corpus tokens the feature fires on (0-1): from the corpus store of the set when one is "
           "built, else from the demo pack's statistics; None when neither is known.")


@functools.cache
def _wire_kind(annotation: Any) -> tuple[str, bool] | None:
    """('int' | 'float' | 'bool', in_container) for a numeric or boolean field, or a list of them,
    or a dict with them as values; else None."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = {k for a in typing.get_args(annotation) if a is not type(None) for k in [_wire_kind(a)] if k}
        return kinds.pop() if len(kinds) == 1 else None
    if origin in (list, dict):
        args = typing.get_args(annotation)
        inner = _wire_kind(args[-1]) if args else None  # a list's items, a dict's values
        return (inner[0], True) if inner and not inner[1] else None
    if annotation is bool:
        return ("bool", False)
    if annotation is int:
        return ("int", False)
    if annotation is float:
        return ("float", False)
    return None


def _check_wire_value(kind: str, value: Any, field: str) -> None:
    if kind == "bool":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            raise ValueError(f"{field} must be true or false (a JSON boolean), not {value!r}")
        return
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{field} must be a JSON number, not {value!r}")  # noqa: TRY004 (pydantic reports ValueError)
    if kind == "int" and isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise ValueError(f"{field} must fit in a 64-bit integer (|{field}| < 2**63)")
    if kind == "float" and isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{field} must be a finite number, not {value!r}")
        if abs(value) > FLOAT_MAGNITUDE_MAX:
            raise ValueError(f"{field} is {value:g}; its magnitude must be at most {FLOAT_MAGNITUDE_MAX:g}")


def _state_bounds(schema: dict[str, Any]) -> None:
    """Write the sanity bounds into the JSON schema of every number field that states none."""
    if schema.get("type") == "integer":
        schema.setdefault("minimum", -INT64_MAX - 1)
        schema.setdefault("maximum", INT64_MAX)
    elif schema.get("type") == "number":
        if "minimum" not in schema and "exclusiveMinimum" not in schema:
            schema["minimum"] = -FLOAT_MAGNITUDE_MAX
        if "maximum" not in schema and "exclusiveMaximum" not in schema:
            schema["maximum"] = FLOAT_MAGNITUDE_MAX
    for sub in schema.get("anyOf", ()):
        _state_bounds(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _state_bounds(schema[key])


def _bounded_schema(schema: dict[str, Any]) -> None:
    for prop in schema.get("properties", {}).values():
        _state_bounds(prop)


class WireTypes(BaseModel):
    """Strict wire types for every request model: a number field takes a number (not `true`, not
    "10"), a boolean field a boolean; integers fit in int64; floats are finite and below
    FLOAT_MAGNITUDE_MAX. Values that Python code passes (numpy scalars, 10.0 for 10) still work."""

    model_config = ConfigDict(allow_inf_nan=False, json_schema_extra=_bounded_schema)

    @field_validator("*", mode="before")
    @classmethod
    def _wire_types(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or ""
        field = cls.model_fields.get(name)
        try:
            spec = _wire_kind(field.annotation) if field is not None else None  # type: ignore[arg-type]
        except TypeError:  # an unhashable annotation: not one of ours, leave it to pydantic
            spec = None
        if spec is None or value is None:
            return value
        kind, is_list = spec
        if is_list and isinstance(value, dict):
            value_items = list(value.values())
        elif is_list and isinstance(value, (list, tuple)):
            value_items = list(value)
        else:
            value_items = None
        if value_items is not None:
            for item in value_items:
                if item is not None:
                    _check_wire_value(kind, item, name)
        elif not is_list:
            _check_wire_value(kind, value, name)
        return value


class Request(WireTypes):
    """Base of every request: unknown fields are an error, so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, json_schema_extra=_bounded_schema)


class Result(BaseModel):
    """Base of every result: plain data only (lists, floats, strings), never tensors."""

    model_config = ConfigDict(extra="ignore")


class FeatureRef(WireTypes):
    """A feature, named the same way everywhere: model, SAE (or transcoder) set, layer, index."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, json_schema_extra=_bounded_schema)

    model: str = Field(description="Catalog model id, e.g. 'gpt2-small'.")
    sae_set: str = Field(description="SAE set or transcoder set id of that model, e.g. 'res-jb'.")
    layer: int = Field(ge=0)
    index: int = Field(ge=0, description="Latent index within the layer's SAE.")

    def key(self) -> str:
        """Compact text form, `model/sae_set/layer/index`, used in URLs and the CLI."""
        return f"{self.model}/{self.sae_set}/{self.layer}/{self.index}"

    @classmethod
    def parse(cls, text: str) -> FeatureRef:
        parts = text.strip().split("/")
        if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
            raise ValueError(f"'{text}' is not a feature reference; write model/sae_set/layer/index.")
        return cls(model=parts[0], sae_set=parts[1], layer=int(parts[2]), index=int(parts[3]))


class LayerFeature(WireTypes):
    """A feature within a request that already names the model and SAE set."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, json_schema_extra=_bounded_schema)

    layer: int = Field(ge=0)
    index: int = Field(ge=0)

    @classmethod
    def parse(cls, text: str) -> LayerFeature:
        """'L:I' (layer:index), the form used in URLs and on the command line."""
        layer, sep, index = text.strip().partition(":")
        if not sep or not layer.strip().isdigit() or not index.strip().isdigit():
            raise ValueError(f"'{text}' is not a feature id; write layer:index, e.g. 3:1024.")
        return cls(layer=int(layer), index=int(index))

    def __str__(self) -> str:
        return f"{self.layer}:{self.index}"


class TokenInfo(BaseModel):
    position: int
    id: int
    text: str = Field(description="The token's text exactly as decoded (escape before showing).")
    special: bool = Field(False, description="BOS/EOS/padding and other special tokens.")
