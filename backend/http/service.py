"""The HTTP service: any Backend behind FastAPI (`python -m backend.http.service --host 127.0.0.1 --port 8000`).

Routes:
- `GET /health` (no key): status, device, GPU memory, loaded models, whether the GPU is busy.
- The seed services' routes with their field names (`backend/http/seed_routes.py`): `GET /models`,
  `POST /features/topk`, `/compare`, `/generate-graph`, `/steer`.
- `GET|POST /api/<method>` for every protocol method, derived from the protocol (`backend/http/wire.py`):
  a method added to the protocol is served with no new code. OpenAPI docs at `/docs`.

Every route but /health needs `FEATURESCOPE_API_KEY` in `X-Api-Key` (or `x-secret-key`), checked
with the body size before the body is read (`backend/http/guard.py`); the service will not
start on a non-loopback address without a key. Requests are checked against the limits before
any work (`backend/request_limits.py`). Long methods run under ONE GPU lock; a request that
waits past `FEATURESCOPE_LOCK_TIMEOUT_S` gets 503 "busy, retry". A CUDA out-of-memory error frees
the cache and answers 503; the next request works. A graph with `signed_url` is uploaded after
the lock is released (`backend/http/upload.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import inspect
import json
import logging
import math
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import anyio
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.errors import BackendError, Busy, InvalidRequest, NotFound, OutOfMemory, invalid_fields
from backend.request_limits import check_request
from backend.schemas.service import ErrorBody, HealthResult, UploadReceipt
from backend.http.seed_routes import SEED_ROUTES, SeedRoute, to_protocol
from backend.http.guard import Guard
from backend.settings import Settings, get_settings
from backend.http.upload import Uploader, check_upload_url
from backend.http.wire import Method, is_loopback, method_summary, protocol_methods

log = logging.getLogger("featurescope.service")
VERSION = "0.1.0"

_ERRORS = {
    400: "The body is not JSON, or a header is malformed.",
    401: "No API key (X-Api-Key or x-secret-key).",
    403: "Wrong API key.",
    404: "Unknown model, SAE set, layer or feature.",
    413: "Over a limit (body size, characters, k, features, n_tokens, max_feature_nodes, batch_size, …); "
    "the message names it.",
    422: "Malformed request; the message says which field.",
    501: "The backend does not provide this method yet.",
    503: "Busy (retry), out of GPU memory (cache freed; retry smaller), or model weights unavailable.",
    507: "The model does not fit in the device memory or the memory budget.",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in _ERRORS.items()
}
UPLOAD_ERROR = {502: {"model": ErrorBody, "description": "The upload to signed_url failed."}}
_key_scheme = APIKeyHeader(
    name="X-Api-Key",
    auto_error=False,
    description="FEATURESCOPE_API_KEY of the service (also accepted as x-secret-key).",
)


MIN_KEY_CHARS = 16  # for a service reachable beyond this machine


def service_key(settings: Settings) -> str | None:
    """The API key the service requires; an empty or blank FEATURESCOPE_API_KEY is no key."""
    key = settings.api_key.get_secret_value().strip() if settings.api_key else ""
    return key or None


def is_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_device_memory() -> None:
    """After an out-of-memory error: drop garbage and return cached blocks to the device."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    torch.cuda.empty_cache()  # a no-op when CUDA was never initialised
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def non_finite_at(value: Any, path: str = "result") -> str | None:
    """The path of the first inf or NaN float in a result (models, lists, dicts), else None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            found = non_finite_at(getattr(value, name), f"{path}.{name}")
            if found:
                return found
    elif isinstance(value, (dict, list, tuple)) and _plain_json_is_finite(value):
        return None
    elif isinstance(value, dict):
        for key, item in value.items():
            found = non_finite_at(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = non_finite_at(item, f"{path}[{i}]")
            if found:
                return found
    return None


def _plain_json_is_finite(value: Any) -> bool:
    """Fast path for big plain containers (a graph's JSON): the C encoder refuses inf and NaN."""
    try:
        json.dumps(value, allow_nan=False, default=lambda o: o.model_dump() if isinstance(o, BaseModel) else str(o))
    except ValueError:
        return False
    return True


class Service:
    """A Backend, its GPU lock and the upload of graphs; the routes call `run`."""

    def __init__(
        self,
        backend: Any = None,
        settings: Settings | None = None,
        uploader: Callable[..., UploadReceipt] | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.limits = self.settings.limits
        self._backend = backend
        self._backend_lock = threading.Lock()
        self.gpu = threading.Lock()
        self.uploader = uploader or Uploader(self.settings.upload_timeout_s)
        self._limiters: weakref.WeakKeyDictionary[Any, dict[str, anyio.CapacityLimiter]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def backend(self) -> Any:
        if self._backend is None:
            with self._backend_lock:
                if self._backend is None:
                    from backend import get_backend

                    self._backend = get_backend(self.settings)
        return self._backend

    def limiter(self, pool: str) -> anyio.CapacityLimiter:
        """Worker threads per pool, so requests waiting for the GPU never starve /health or /models.
        One set per event loop (the RunPod worker may run each job in its own)."""
        pools = self._limiters.setdefault(asyncio.get_running_loop(), {})
        if pool not in pools:
            pools[pool] = anyio.CapacityLimiter({"gpu": 16, "light": 16, "health": 2}[pool])
        return pools[pool]

    @contextlib.contextmanager
    def hold_gpu(self) -> Iterator[None]:
        wait = self.limits.lock_timeout_s
        if not self.gpu.acquire(timeout=wait):
            raise Busy(
                f"The GPU is busy with another request and stayed busy for {wait:g} s: busy, retry in a "
                "moment (FEATURESCOPE_LOCK_TIMEOUT_S sets the wait).",
                waited_s=wait,
            )
        try:
            yield
        finally:
            self.gpu.release()

    def run(self, method: Method, req: BaseModel | None) -> tuple[BaseModel, UploadReceipt | None]:
        """Check limits, call the backend (long methods under the GPU lock), then upload if asked."""
        check_request(req, self.limits)
        upload_to = getattr(req, "signed_url", None)
        if upload_to:
            check_upload_url(upload_to)
            req = req.model_copy(update={"signed_url": None})  # type: ignore[union-attr]
        fn = getattr(self.backend, method.name)
        args = () if req is None else (req,)
        kwargs = {"progress": functools.partial(_log_progress, method.name)} if method.long else {}
        with self.hold_gpu() if method.long else contextlib.nullcontext():
            try:
                result = fn(*args, **kwargs)
            except BackendError:
                raise
            except Exception as exc:
                if is_out_of_memory(exc):
                    free_device_memory()
                    raise OutOfMemory(
                        f"The GPU ran out of memory during {method.name}; its cache was freed and the "
                        "service is ready. Retry with a shorter prompt, fewer layers or a smaller batch_size."
                    ) from None
                log.exception("%s failed", method.name)
                raise BackendError(
                    f"The service failed in {method.name} ({type(exc).__name__}): a bug in the service, not "
                    "something to change in the request. Report it with the service log (method and time)."
                ) from exc
        where = non_finite_at(result)
        if where is not None:  # would travel as null and fail the method's own result model
            log.warning("%s produced a non-finite number at %s", method.name, where)
            raise InvalidRequest(
                f"{method.name} produced a non-finite number (inf or NaN) at {where}: the request pushed the "
                "model past its numeric range. Use smaller amounts (steering values, alphas, thresholds) or "
                "a shorter input."
            )
        receipt = None
        if upload_to:
            receipt = self.uploader(upload_to, result, compress=bool(getattr(req, "compress", False)))
        return result, receipt

    def health(self) -> HealthResult:
        try:
            info = self.backend.info()
        except Exception as exc:  # health answers even when the backend cannot
            message = exc.message if isinstance(exc, BackendError) else type(exc).__name__
            return HealthResult(
                status="degraded",
                backend=self.settings.backend,
                version=VERSION,
                auth=service_key(self.settings) is not None,
                busy=self.gpu.locked(),
                message=message,
            )
        dev = info.device
        return HealthResult(
            status="ok",
            backend=info.backend,
            version=VERSION,
            auth=service_key(self.settings) is not None,
            busy=self.gpu.locked(),
            device=dev.kind,
            device_name=dev.name,
            memory_total_gb=dev.total_gb,
            memory_used_gb=dev.used_gb,
            memory_free_gb=dev.free_gb,
            loaded=[m.model for m in info.loaded],
        )

    async def answer(
        self,
        method: Method,
        req: BaseModel | None,
        shape: Callable[[BaseModel, UploadReceipt | None], Any] | None = None,
    ) -> Response:
        pool = "gpu" if method.long else "light"
        result, receipt = await anyio.to_thread.run_sync(self.run, method, req, limiter=self.limiter(pool))
        body: Any = shape(result, receipt) if shape else result
        if isinstance(body, BaseModel):
            return Response(body.model_dump_json(), media_type="application/json")
        return JSONResponse(body)


def _log_progress(method: str, fraction: float | None, message: str) -> None:
    log.info("%s: %s%s", method, "" if fraction is None else f"{fraction:.0%} ", message)


def error_response(exc: BackendError, status: int | None = None) -> JSONResponse:
    headers = {"Retry-After": "5"} if exc.retryable else None
    return JSONResponse(exc.to_wire(), status_code=status or exc.status, headers=headers)


def _framing_error(errors: list[dict[str, Any]], content_type: str | None) -> InvalidRequest | None:
    """A body that is not JSON at all: undecodable (the position named) or sent with another content
    type. Both are 400s, as the OpenAPI documents, not field errors."""
    for e in errors:
        loc = list(e.get("loc", ()))
        if e.get("type") == "json_invalid":
            pos = loc[1] if len(loc) > 1 else "?"
            why = (e.get("ctx") or {}).get("error", "")
            return InvalidRequest(
                f"JSON decode error at character {pos}{f' ({why})' if why else ''}: the body is not valid "
                "JSON. Send one JSON object."
            )
    media = (content_type or "").split(";")[0].strip().lower()
    is_json = media == "application/json" or (media.startswith("application/") and media.endswith("+json"))
    body_not_read = any(
        list(e.get("loc", ())) == ["body"] and e.get("type") != "missing" for e in errors
    )
    if not is_json and body_not_read:
        sent = f"Content-Type {media!r}" if media else "no Content-Type"
        return InvalidRequest(
            f"The body was sent with {sent}, so it was not read as JSON. Send it as JSON with the header "
            "'Content-Type: application/json'."
        )
    return None


def _protocol_endpoint(service: Service, method: Method) -> Callable[..., Any]:
    if method.request is None:

        async def endpoint() -> Response:
            return await service.answer(method, None)
    else:

        async def endpoint(req: Any) -> Response:
            return await service.answer(method, req)

        endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("req", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=method.request)]
        )
    endpoint.__name__ = f"api_{method.name}"
    return endpoint


def _seed_endpoint(service: Service, route: SeedRoute, method: Method) -> Callable[..., Any]:
    if route.request is None:

        async def endpoint() -> Response:
            return await service.answer(method, None, route.respond)
    else:

        async def endpoint(req: Any) -> Response:
            catalog = await anyio.to_thread.run_sync(
                service.backend.catalog, limiter=service.limiter("light")
            )
            return await service.answer(method, to_protocol(route, req, catalog), route.respond)

        endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("req", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=route.request)]
        )
    endpoint.__name__ = "seed_" + route.path.strip("/").replace("/", "_").replace("-", "_")
    return endpoint


def create_app(
    backend: Any = None,
    *,
    settings: Settings | None = None,
    uploader: Callable[..., UploadReceipt] | None = None,
) -> Any:
    """The ASGI app: FastAPI behind the Guard. `backend` defaults to `get_backend(settings)` on first use."""
    settings = settings or get_settings()
    service = Service(backend, settings, uploader)
    api_key = service_key(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # build the backend before the first request is accepted
        await anyio.to_thread.run_sync(lambda: service.backend)
        yield

    app = FastAPI(
        title="Featurescope service",
        version=VERSION,
        lifespan=lifespan,
        description=(__doc__ or "").split("\n\n", 1)[1],
    )
    app.state.service = service
    guarded = [Security(_key_scheme)]
    methods = protocol_methods()

    @app.get(
        "/health", response_model=HealthResult, tags=["service"], summary="Status, device, loaded models"
    )
    async def health() -> HealthResult:
        return await anyio.to_thread.run_sync(service.health, limiter=service.limiter("health"))

    for route in SEED_ROUTES:
        method = methods[route.method]
        responses = {**ERROR_RESPONSES, **(UPLOAD_ERROR if route.method == "attribute" else {})}
        extra: dict[str, Any] = {}
        if route.example is not None:
            extra["openapi_extra"] = {
                "requestBody": {"content": {"application/json": {"example": route.example}}}
            }
        response_model = None if route.respond else method.result
        app.add_api_route(
            route.path,
            _seed_endpoint(service, route, method),
            methods=["GET" if route.request is None else "POST"],
            summary=route.summary,
            tags=["seed routes"],
            responses=responses,
            response_model=response_model,
            dependencies=guarded,
            **extra,
        )

    for method in methods.values():
        responses = {**ERROR_RESPONSES, **(UPLOAD_ERROR if method.name == "attribute" else {})}
        app.add_api_route(
            method.path,
            _protocol_endpoint(service, method),
            methods=[method.http_method],
            response_model=method.result,
            summary=method_summary(method),
            tags=["protocol"],
            responses=responses,
            dependencies=guarded,
        )

    @app.exception_handler(BackendError)
    async def _backend_error(request: Request, exc: BackendError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        framing = _framing_error(errors, request.headers.get("content-type"))
        if framing is not None:
            return error_response(framing, 400)
        return error_response(invalid_fields(errors, "See /docs for the fields."))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err: BackendError = NotFound(
                f"There is no route {request.url.path}; see /docs.", route=request.url.path
            )
        else:
            err = InvalidRequest(f"{exc.detail} ({request.method} {request.url.path}); see /docs.")
        return error_response(err, exc.status_code)

    return Guard(app, api_key=api_key, max_body_bytes=settings.limits.max_body_bytes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.http.service", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    parser.add_argument("--root-path", default="", help="the path prefix when served behind a proxy")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    key = service_key(settings)
    if not is_loopback(args.host) and (key is None or len(key) < MIN_KEY_CHARS):
        what = "without a secret" if key is None else f"with a {len(key)}-character secret"
        print(
            f"Refusing to serve on {args.host} {what}: set FEATURESCOPE_API_KEY to at least {MIN_KEY_CHARS} "
            "characters (python -c 'import secrets; print(secrets.token_urlsafe(32))'); clients send it in "
            "X-Api-Key. Or listen on 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    if key is None:
        log.warning("No FEATURESCOPE_API_KEY: every route is open to this machine (loopback only).")
    import uvicorn

    uvicorn.run(
        create_app(settings=settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        root_path=args.root_path,
        server_header=False,
        workers=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
