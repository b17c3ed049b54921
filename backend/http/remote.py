"""RemoteBackend: the Backend protocol over HTTP, against `backend/http/service.py` wherever it runs.

Its methods are made from the protocol (`backend/http/wire.py`), so every protocol method, including
those the backend grows later, is a call to `/api/<method>`: the request model as the JSON body,
the result model parsed from the answer. Nothing else in the app can tell it from LocalBackend.

- Timeouts: `FEATURESCOPE_REMOTE_CONNECT_TIMEOUT_S` to connect, `FEATURESCOPE_REMOTE_TIMEOUT_S`
  for an answer (graphs take minutes).
- Retries (`FEATURESCOPE_REMOTE_RETRIES`, backing off): a connection that could not be made is
  retried for every method (nothing was sent); a busy service (503 busy), a gateway error (502,
  504) or a dropped connection is retried only for idempotent methods. A read timeout is not
  retried: the service is still working and would answer "busy".
- Errors: the service's `BackendError`s are rebuilt from the wire (`error_from_wire`); otherwise
  `RemoteUnavailable` (unreachable, timed out, not a Featurescope service), `Unauthorized` (401,
  403) or `NotImplementedYet` (a service too old for the method).
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel

from backend.errors import (
    BackendError,
    Busy,
    InvalidRequest,
    NotImplementedYet,
    RemoteUnavailable,
    Unauthorized,
    error_from_wire,
)
from backend.protocol import Progress
from backend.schemas.service import HealthResult
from backend.settings import Settings, get_settings
from backend.http.wire import Method, is_loopback, protocol_methods

log = logging.getLogger("featurescope.remote")
RETRY_STATUSES = frozenset({502, 503, 504})


class RemoteBackend:
    kind = "remote"

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        settings: Settings | None = None,
        timeout_s: float | None = None,
        connect_timeout_s: float | None = None,
        retries: int | None = None,
        backoff_s: float = 0.5,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        settings = settings or get_settings()
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(
                f"The remote backend URL '{url}' is not an http(s) URL; set FEATURESCOPE_REMOTE_URL "
                "to e.g. https://your-service.example or http://127.0.0.1:8000."
            )
        self.url = url.strip().rstrip("/")
        if api_key and parts.scheme == "http" and not is_loopback(parts.hostname):
            log.warning("The API key goes to %s over plain HTTP; use https for a remote service.", self.url)
        self.timeout_s = timeout_s or settings.remote_timeout_s
        self.retries = settings.remote_retries if retries is None else retries
        self.backoff_s = backoff_s
        sent = {k: v.get_secret_value() for k, v in settings.remote_headers.items()}
        sent.update(headers or {})
        if api_key:
            sent["X-Api-Key"] = api_key
        self._client = httpx.Client(
            base_url=self.url,
            headers=sent,
            transport=transport,
            follow_redirects=False,
            timeout=httpx.Timeout(
                self.timeout_s, connect=connect_timeout_s or settings.remote_connect_timeout_s
            ),
        )

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RemoteBackend({self.url!r})"

    # ------------------------------------------------------------------ HTTP
    def health(self) -> HealthResult:
        """The service's /health (no key needed): status, device, memory, loaded models."""
        response = self._send("GET", "/health", None, idempotent=True, name="health")
        return HealthResult.model_validate_json(response.content)

    def call(self, method: Method, req: BaseModel | None, progress: Progress | None = None) -> BaseModel:
        if method.request is not None and not isinstance(req, method.request):
            req = method.request.model_validate(req)
        if progress is not None:
            progress(None, f"Waiting for the remote backend ({method.name})…")
        body = None if req is None else req.model_dump(mode="json")
        response = self._send(
            method.http_method, method.path, body, idempotent=method.idempotent, name=method.name
        )
        result = method.result.model_validate_json(response.content)
        if "backend" in method.result.model_fields and "remote_url" in method.result.model_fields:
            result = result.model_copy(update={"backend": "remote", "remote_url": self.url})
        if progress is not None:
            progress(1.0, f"The remote backend answered ({method.name})")
        return result

    def _send(self, verb: str, path: str, body: Any, *, idempotent: bool, name: str) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._client.request(verb, path, json=body)
            except httpx.ConnectError as exc:  # nothing was sent: safe to retry any method
                error: BackendError = RemoteUnavailable(
                    f"Cannot reach the remote backend at {self.url} ({_reason(exc)}). Check that the "
                    "service is running and that FEATURESCOPE_REMOTE_URL is right.",
                    url=self.url,
                )
                retry = True
            except httpx.TimeoutException as exc:
                connect = isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout))
                waited = self._client.timeout.connect if connect else self.timeout_s
                did_not = "accept a connection" if connect else "answer"
                error = RemoteUnavailable(
                    f"The remote backend at {self.url} did not {did_not} "
                    f"within {waited:g} s. Retry later, or raise FEATURESCOPE_REMOTE_"
                    f"{'CONNECT_' if connect else ''}TIMEOUT_S.",
                    url=self.url,
                )
                retry = connect
            except httpx.TransportError as exc:  # the connection dropped mid-request
                error = RemoteUnavailable(
                    f"The connection to the remote backend at {self.url} failed ({_reason(exc)}). Retry.",
                    url=self.url,
                )
                retry = idempotent
            else:
                if response.status_code < 400:
                    return response
                error = self._error(response, name)
                retry = (
                    idempotent
                    and response.status_code in RETRY_STATUSES
                    and error.kind in ("busy", "remote_unavailable")
                )
            if not retry or attempt >= self.retries:
                raise error
            attempt += 1
            delay = self.backoff_s * 2 ** (attempt - 1)
            log.info("Retrying %s on %s in %.1f s (%s)", name, self.url, delay, error.kind)
            if delay:
                time.sleep(delay)

    def _error(self, response: httpx.Response, name: str) -> BackendError:
        status = response.status_code
        payload: Any = None
        try:
            payload = response.json()
        except ValueError:
            pass
        wire = isinstance(payload, dict) and "error" in payload and "message" in payload
        if status in (401, 403):
            what = "needs an API key" if status == 401 else "refused the API key"
            return Unauthorized(
                f"The remote backend at {self.url} {what} (HTTP {status}). Set FEATURESCOPE_API_KEY "
                "(environment or Streamlit secrets) to the service's key.",
                status=status,
            )
        if wire:
            if payload["error"] == "not_found" and (payload.get("details") or {}).get("route"):
                return NotImplementedYet(name, f"The remote service at {self.url} (an older version)")
            return error_from_wire(payload)
        if status == 404:
            return NotImplementedYet(name, f"The remote service at {self.url} (not a Featurescope service?)")
        if status == 503:
            return Busy(
                f"The remote backend at {self.url} is unavailable (HTTP 503): busy, retry in a moment."
            )
        snippet = response.text[:120].strip().replace("\n", " ")
        error = RemoteUnavailable(
            f"The remote backend at {self.url} answered HTTP {status}"
            f"{f' ({snippet})' if snippet else ''}. Check FEATURESCOPE_REMOTE_URL and the "
            "service's log.",
            status=status,
        )
        return error


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text[:160] if text else type(exc).__name__


def _bind(method: Method):
    if method.request is None:

        def call(self: RemoteBackend) -> BaseModel:
            return self.call(method, None)
    elif method.long:

        def call(self: RemoteBackend, req: BaseModel, progress: Progress | None = None) -> BaseModel:
            return self.call(method, req, progress)
    else:

        def call(self: RemoteBackend, req: BaseModel) -> BaseModel:
            return self.call(method, req)

    call.__name__ = call.__qualname__ = method.name
    call.__doc__ = f"Backend.{method.name} on the remote service ({method.http_method} {method.path})."
    return call


for _method in protocol_methods().values():
    setattr(RemoteBackend, _method.name, _bind(_method))
