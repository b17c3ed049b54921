"""The HTTP service's own wire models: health, the error body, the upload receipt, and the request
shapes of the seed services' routes (`/features/topk`, `/steer`, `/generate-graph`).

A seed request model is derived from our request model (`seed_request_model`): the same fields,
the same validation, under the seed's names, with the SAE/transcoder set optional. A field added
to `SteerRequest` is therefore accepted by `/steer` at once.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, create_model
from pydantic.fields import FieldInfo

from backend.schemas.common import Request, Result


class ErrorBody(Result):
    """Every error answer of the service (`BackendError.to_wire()`)."""

    error: str = Field(
        description="Stable kind: limit_exceeded, busy, unauthorized, not_found, invalid_request, …"
    )
    message: str = Field(description="What happened and what to do next.")
    retryable: bool = False
    details: dict[str, Any] = Field(default_factory=dict)


class HealthResult(Result):
    status: Literal["ok", "degraded"]
    backend: str = Field(description="The backend the service runs: local (its own GPU) or remote.")
    version: str
    auth: bool = Field(description="Whether the other routes need the X-Api-Key header.")
    busy: bool = Field(description="Whether the GPU lock is held by a request now.")
    device: str | None = None
    device_name: str | None = None
    memory_total_gb: float | None = None
    memory_used_gb: float | None = None
    memory_free_gb: float | None = None
    loaded: list[str] = Field(default_factory=list, description="Models loaded now.")
    message: str | None = Field(None, description="Why the status is degraded.")


class UploadReceipt(Result):
    """The answer of /generate-graph with a signed_url: the graph went there, not here."""

    success: str
    slug: str
    n_nodes: int
    n_edges: int
    bytes: int = Field(description="Bytes uploaded (after gzip when compress was set).")
    compressed: bool
    url: str = Field(description="Where it went, without the signature.")


def seed_request_model(
    name: str,
    base: type[Request],
    *,
    rename: dict[str, str] | None = None,
    optional: set[str] | frozenset[str] = frozenset(),
    replace: dict[str, tuple[Any, FieldInfo]] | None = None,
    doc: str = "",
) -> type[Request]:
    """`base`'s fields under a seed's names.

    rename: our field -> the seed's name (`model` -> `model_id`); optional: our fields that become
    optional with default None (filled in by the route, e.g. the model's first SAE set); replace:
    seed name -> (annotation, Field) where the seed's field has another type.
    """
    rename = rename or {}
    replace = replace or {}
    fields: dict[str, Any] = {}
    for field, info in base.model_fields.items():
        seed_name = rename.get(field, field)
        if seed_name in replace:
            fields[seed_name] = replace[seed_name]
        elif field in optional:
            fields[seed_name] = (info.annotation | None, Field(None, description=info.description))
        else:
            fields[seed_name] = (info.annotation, copy.copy(info))
    model = create_model(name, __base__=Request, __doc__=doc or base.__doc__, **fields)
    return model
