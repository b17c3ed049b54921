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
import ipaddress
from dataclasses import dataclass

from pydantic import BaseModel

from backend.protocol import methods

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


@functools.cache
def protocol_methods() -> dict[str, Method]:
    """Every method of the Backend protocol (`backend.protocol.methods`), in declaration order."""
    return {name: Method(name=name, request=m.request, result=m.result, long=m.long,
                         idempotent=name not in NOT_IDEMPOTENT, doc=m.doc)
            for name, m in methods().items()}


def method_summary(method: Method) -> str:
    """A one-line description: the first line of the protocol method's docstring."""
    return methods()[method.name].summary


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
