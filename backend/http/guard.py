"""The service's front door, as plain ASGI middleware: the API key, then the body size, both
decided from the headers before the application reads one byte of the body.

- Every path but the public ones (`/health` and the OpenAPI docs) needs the key in `X-Api-Key`
  (or `x-secret-key`, the graph server's name): missing -> 401, wrong -> 403. The comparison is of
  SHA-256 digests with `hmac.compare_digest`, so its time depends on neither the key nor its length.
- A body over `max_body_bytes` is refused with 413 from its Content-Length before it is read.
  Whatever the headers say, the limit also holds on the bytes actually received: every body is read
  up to the limit and no further, then handed on. A request with both Content-Length and
  Transfer-Encoding is refused with 400 (RFC 9112 §6.3 allows it; the two framings disagree about
  where the body ends, which is how a small Content-Length once let a 100 MB chunked body through).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from backend.errors import BackendError, InvalidRequest, LimitExceeded, Unauthorized
from backend.http.wire import KEY_HEADERS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class Guard:
    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.key_digest = _digest(api_key.encode()) if api_key else None
        self.max_body_bytes = max_body_bytes

    def key_matches(self, presented: list[bytes]) -> bool:
        """Whether any presented header value is the key; every value is compared (no early exit)."""
        assert self.key_digest is not None
        ok = False
        for value in presented:
            ok |= hmac.compare_digest(_digest(value), self.key_digest)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the service has no websocket routes: refuse before anything
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers") or ():
            headers.setdefault(name.lower(), value)

        if self.key_digest is not None and path not in PUBLIC_PATHS:
            presented = [headers[h.encode()] for h in KEY_HEADERS if h.encode() in headers]
            if not presented:
                await _reject(
                    send,
                    401,
                    Unauthorized(
                        "This service needs an API key: send it in the X-Api-Key header (or x-secret-key)."
                    ),
                )
                return
            if not self.key_matches(presented):
                await _reject(
                    send,
                    403,
                    Unauthorized(
                        "The API key was refused. Send the service's FEATURESCOPE_API_KEY in the X-Api-Key "
                        "header."
                    ),
                )
                return

        length = headers.get(b"content-length")
        if length is not None and b"transfer-encoding" in headers:
            await _reject(
                send,
                400,
                InvalidRequest(
                    "The request has both Content-Length and Transfer-Encoding headers; send one of them "
                    "(a client library does this for you)."
                ),
            )
            return
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                await _reject(send, 400, InvalidRequest("The Content-Length header is not a number."))
                return
            if n > self.max_body_bytes:
                await _reject(send, 413, self._too_big(n))
                return
        has_body = length not in (None, b"0") or b"transfer-encoding" in headers
        if has_body or scope.get("method") in ("POST", "PUT", "PATCH"):  # a GET may carry a body too
            replay = await self._read_bounded(receive)
            if isinstance(replay, int):
                await _reject(send, 413, self._too_big(replay, at_least=True))
                return
            receive = replay
        await self.app(scope, receive, send)

    def _too_big(self, n: int, at_least: bool = False) -> LimitExceeded:
        what = "The request body (bytes, at least)" if at_least else "The request body (bytes)"
        return LimitExceeded(
            what,
            n,
            self.max_body_bytes,
            "Send less (shorter texts, fewer items), or raise FEATURESCOPE_MAX_BODY_BYTES on the service.",
        )

    async def _read_bounded(self, receive: Receive) -> Receive | int:
        """A body without Content-Length, read up to the limit: a receive that replays it, or the
        number of bytes seen when the limit was passed."""
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                final = message
                break
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_body_bytes:
                return total
            chunks.append(body)
            if not message.get("more_body", False):
                final = None
                break
        data = b"".join(chunks)
        pending: list[Message] = [{"type": "http.request", "body": data, "more_body": False}]
        if final is not None:
            pending = [final]

        async def replay() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        return replay


async def _reject(send: Send, status: int, error: BackendError) -> None:
    body = json.dumps(error.to_wire()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'ApiKey header="X-Api-Key"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
