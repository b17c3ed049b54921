"""Errors that cross the Backend protocol.

Every failure a user can cause or meet is a `BackendError` whose message says what to do next.
Each class carries the HTTP status the service answers with and a stable `kind` string, so a
`RemoteBackend` can rebuild the same exception from the wire (`error_from_wire`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class BackendError(Exception):
    """Base class: a message meant for the user, plus how to report it over HTTP."""

    kind: ClassVar[str] = "backend_error"
    status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        return {
            "error": self.kind,
            "message": self.message,
            "retryable": self.retryable,
            "details": self.details,
        }


class NotImplementedYet(BackendError):
    """A protocol method this backend does not provide (yet)."""

    kind = "not_implemented"
    status = 501

    def __init__(self, method: str, what: str) -> None:
        super().__init__(
            f"{what} is not available in this version of Featurescope yet "
            f"(Backend.{method}). Use the pages that are listed as ready.",
            method=method,
        )


class InvalidRequest(BackendError):
    """The request is malformed or names things that do not fit together."""

    kind = "invalid_request"
    status = 422


class LimitExceeded(BackendError):
    """An input is larger than a configured limit; the message names the limit."""

    kind = "limit_exceeded"
    status = 413

    def __init__(self, what: str, value: int | float, limit: int | float, advice: str) -> None:
        super().__init__(
            f"{what} is {value:,}; the limit is {limit:,}. {advice}",
            what=what,
            value=value,
            limit=limit,
        )


class NotFound(BackendError):
    """An unknown model, SAE set, layer or feature."""

    kind = "not_found"
    status = 404


class DoesNotFit(BackendError):
    """Loading would exceed the device memory or the configured budget."""

    kind = "does_not_fit"
    status = 507


class ModelUnavailable(BackendError):
    """Weights could not be obtained (offline, gated, missing files)."""

    kind = "model_unavailable"
    status = 503


class Busy(BackendError):
    """The model is busy with another request for longer than the wait limit."""

    kind = "busy"
    status = 503
    retryable = True


class OutOfMemory(BackendError):
    """The device ran out of memory during a request; the cache was freed."""

    kind = "out_of_memory"
    status = 503
    retryable = True


class Unauthorized(BackendError):
    kind = "unauthorized"
    status = 401


class StoreError(BackendError):
    """A corpus activation store is missing parts, damaged, unsafe (external links) or was built
    for another model or dictionary; the message says how to rebuild it."""

    kind = "store_error"
    status = 409


class RemoteUnavailable(BackendError):
    """The remote backend could not be reached."""

    kind = "remote_unavailable"
    status = 502
    retryable = True


class UploadFailed(BackendError):
    """A result could not be delivered to the URL the request named (e.g. a signed_url)."""

    kind = "upload_failed"
    status = 502
    retryable = True


_BY_KIND: dict[str, type[BackendError]] = {
    cls.kind: cls
    for cls in (
        BackendError,
        NotImplementedYet,
        InvalidRequest,
        LimitExceeded,
        NotFound,
        DoesNotFit,
        ModelUnavailable,
        Busy,
        OutOfMemory,
        Unauthorized,
        StoreError,
        RemoteUnavailable,
        UploadFailed,
    )
}


def error_from_wire(payload: dict[str, Any]) -> BackendError:
    """Rebuild the BackendError the service sent, keeping its class, message and details."""
    cls = _BY_KIND.get(str(payload.get("error")), BackendError)
    message = str(payload.get("message") or "The backend reported an error without a message.")
    err = cls.__new__(cls)
    BackendError.__init__(err, message, **(payload.get("details") or {}))
    return err


def invalid_fields(errors: Sequence[Mapping[str, Any]], advice: str) -> InvalidRequest:
    """One message for a request whose fields do not validate (pydantic's `errors()`), shared by the
    service and the CLIs: the first three fields and what is wrong with each, never the input itself
    (which can be 100,000 characters), then `advice`. The cleaned errors ride along as details."""
    clean = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")).removeprefix("Value error, "),
            "type": str(e.get("type", "")),
        }
        for e in errors[:20]
    ]
    parts = [
        f"{'.'.join(e['loc'][1:] if e['loc'][:1] == ['body'] else e['loc']) or 'body'}: {e['msg']}"
        for e in clean[:3]
    ]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return InvalidRequest(f"The request is malformed — {'; '.join(parts)}{more}. {advice}", errors=clean)
