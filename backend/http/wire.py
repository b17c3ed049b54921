"""The Backend protocol on the wire: one HTTP route per protocol method, read from the protocol.

`METHODS` is derived from the annotations of `backend.protocol.Backend`, so a method added to the
protocol is served by `backend/http/service.py` and called by `backend/http/remote.py` with no new code:
its request model is the JSON body, its result model the JSON answer, and a `progress` parameter
marks it as long work that runs under the service's GPU lock.

    GET  /api/<method>   methods without a request (info, catalog)
    POST /api/<method>   every other method; body: the request model, answer: the result model

Errors travel as `BackendError.to_wire()` with the error's HTTP status (`backend/errors.py`).
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import typing
from dataclasses import dataclass

from pydantic import BaseModel

from backend.protocol import Backend

API_PREFIX = "/api"
# Methods with a side effect that a retry could repeat. Every other method only reads.
NOT_IDEMPOTENT = frozenset({"unload"})
# Headers that carry the service's secret; both names are accepted (the seeds use each).
KEY_HEADERS = ("x-api-key", "x-secret-key")


@dataclass(frozen=True)
class Method:
    name: str
    request: type[BaseModel] | None
    result: type[BaseModel]
    long: bool  # takes a progress callback: GPU work, run under the service's lock
    idempotent: bool
    doc: str

    @property
    def path(self) -> str:
        return f"{API_PREFIX}/{self.name}"

    @property
    def http_method(self) -> str:
        return "GET" if self.request is None else "POST"


def _describe(name: str, fn: typing.Callable) -> Method:
    hints = typing.get_type_hints(fn)
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    request = None
    for p in params:
        tp = hints.get(p.name)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            request = tp
            break
    result = hints.get("return")
    if not (isinstance(result, type) and issubclass(result, BaseModel)):
        raise TypeError(f"Backend.{name} must return a pydantic model, not {result!r}")
    doc = inspect.getdoc(fn) or ""
    return Method(
        name=name,
        request=request,
        result=result,
        long=any(p.name == "progress" for p in params),
        idempotent=name not in NOT_IDEMPOTENT,
        doc=doc,
    )


@functools.cache
def protocol_methods() -> dict[str, Method]:
    """Every method of the Backend protocol, in declaration order."""
    out: dict[str, Method] = {}
    for name, fn in vars(Backend).items():
        if name.startswith("_") or not inspect.isfunction(fn):
            continue
        out[name] = _describe(name, fn)
    return out


def method_summary(method: Method) -> str:
    """A one-line description: the CLI's help text where it has one."""
    from backend.cli import METHODS as CLI_METHODS

    entry = CLI_METHODS.get(method.name)
    return entry[1] if entry else (method.doc.splitlines()[0] if method.doc else method.name)


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
