"""RunPod serverless worker: each job's `{"input": {...}}` is one request to the service's routes,
made in-process through the same ASGI app (key, limits, GPU lock and errors included).

Which route:
- `"request_type"`: `graph` (the default, as the graph server's worker) -> /generate-graph,
  `steer` -> /steer, `topk` -> /features/topk, `compare` -> /compare, `models` -> /models,
  `health` -> /health;
- or `"method"`: any protocol method (`analyze`, `feature`, `search`, …) -> /api/<method>;
- or `"route"`: a path of the service, e.g. `"/features/topk"`.
Every other field of `input` is the route's JSON body, with the seed's field names. A `deadline`
(Unix time, as in the graph server's worker) refuses a job that waited in the queue past it.

The answer is the route's JSON; on an error `{"error": message, "error_kind": kind, "status": HTTP
status}`, which RunPod reports as a failed job. RunPod's endpoint authenticates callers; the
worker also sends FEATURESCOPE_API_KEY to the service when one is set.

    docker build --build-arg WITH_RUNPOD=1 -t featurescope .   # the template's command: runpod
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from backend.http.seed_routes import SEED_ROUTES
from backend.http.wire import protocol_methods

REQUEST_TYPES = {
    "graph": "/generate-graph",
    "steer": "/steer",
    "topk": "/features/topk",
    "compare": "/compare",
    "models": "/models",
    "health": "/health",
}
# Fields of the graph server's worker that are about the job, not the request.
JOB_FIELDS = ("request_type", "method", "route", "deadline", "user_id")


def _get_paths() -> set[str]:
    paths = {"/health"} | {r.path for r in SEED_ROUTES if r.request is None}
    return paths | {m.path for m in protocol_methods().values() if m.http_method == "GET"}


def route_for(payload: dict[str, Any]) -> str:
    if payload.get("route"):
        return str(payload["route"])
    if payload.get("method"):
        method = str(payload["method"])
        if method not in protocol_methods():
            raise ValueError(f"Unknown method '{method}'. Methods: {', '.join(protocol_methods())}.")
        return protocol_methods()[method].path
    kind = str(payload.get("request_type") or "graph")
    if kind not in REQUEST_TYPES:
        raise ValueError(
            f"Unknown request_type '{kind}'. Use one of {', '.join(REQUEST_TYPES)}, or 'method'."
        )
    return REQUEST_TYPES[kind]


def _failure(message: str, kind: str, status: int) -> dict[str, Any]:
    return {"error": message, "error_kind": kind, "status": status}


def make_handler(app: Any = None, api_key: str | None = None) -> Callable[[dict[str, Any]], Awaitable[dict]]:
    """A RunPod handler over `app` (default: `backend.http.service.create_app()` on the first job)."""
    state: dict[str, Any] = {"app": app, "key": api_key}
    get_paths = _get_paths()

    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        payload = dict(job.get("input") or {})
        deadline = payload.get("deadline")
        if isinstance(deadline, (int, float)) and time.time() > deadline:
            return _failure(
                f"The job waited past its deadline ({time.time() - deadline:.0f} s late).",
                "deadline_exceeded",
                408,
            )
        try:
            path = route_for(payload)
        except ValueError as exc:
            return _failure(str(exc), "invalid_request", 422)
        body = {k: v for k, v in payload.items() if k not in JOB_FIELDS}
        if state["app"] is None:
            from backend.http.service import create_app
            from backend.settings import get_settings

            settings = get_settings()
            state["app"] = create_app(settings=settings)
            state["key"] = settings.api_key.get_secret_value() if settings.api_key else None
        headers = {"X-Api-Key": state["key"]} if state["key"] else {}
        transport = httpx.ASGITransport(app=state["app"])
        async with httpx.AsyncClient(
            transport=transport, base_url="http://runpod-worker", headers=headers, timeout=None
        ) as client:
            if path in get_paths:
                response = await client.get(path)
            else:
                response = await client.post(path, json=body)
        try:
            answer = response.json()
        except ValueError:
            answer = {"message": response.text[:300]}
        if response.status_code >= 400:
            return _failure(
                str(answer.get("message") or answer),
                str(answer.get("error") or "error"),
                response.status_code,
            )
        return answer

    return handler


handler = make_handler()


if __name__ == "__main__":
    import runpod  # installed in the image built with WITH_RUNPOD=1

    runpod.serverless.start({"handler": handler})
