"""The HTTP service's own wire models: health, the error body, the upload receipt, and the request
shapes of the seed services' routes (`/features/topk`, `/steer`, `/generate-graph`).

A seed request model is derived from our request model (`seed_request_model`): the same fields,
the same validation, read under the seed's names (aliases), with the SAE/transcoder set optional. A field added
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
    aliases: dict[str, str] | None = None,
    optional: set[str] | frozenset[str] = frozenset(),
    replace: dict[str, tuple[Any, FieldInfo]] | None = None,
    doc: str = "",
) -> type[Request]:
    """`base`'s fields, read from the wire under the seed's names: the one place of wire-name
    compatibility. Attributes keep our names, so `model_dump()` is our request's data.

    aliases: our field -> the seed's name on the wire (`model` -> `model_id`); optional: our fields
    that become optional with default None (resolved by the backend or the route); replace: our
    field -> (annotation, Field) where the seed's field has another type.
    """
    aliases = aliases or {}
    replace = replace or {}
    fields: dict[str, Any] = {}
    for field, info in base.model_fields.items():
        if field in replace:
            annotation, finfo = replace[field]
        elif field in optional:
            annotation, finfo = info.annotation | None, Field(None, description=info.description)
        else:
            annotation, finfo = info.annotation, copy.copy(info)
        if field in aliases:
            finfo = FieldInfo.merge_field_infos(finfo, Field(alias=aliases[field]))
        fields[field] = (annotation, finfo)
    return create_model(name, __base__=Request, __doc__=doc or base.__doc__, **fields)
