"""The HTTP side of the Backend protocol: the service, its guard, the client, and the wire rules they share.

- `wire.py`: the methods as read from the `Backend` protocol (request and result models, progress,
  idempotence), and the names that only the wire knows.
- `service.py`: any Backend behind FastAPI (`python -m backend.http.service`), with the seed services'
  routes (`seed_routes.py`) and signed-URL uploads (`upload.py`).
- `guard.py`: the ASGI layer in front of the service: the key, then the body size.
- `remote.py`: `RemoteBackend`, the protocol over HTTP against the service.

Nothing here imports torch at module level: the client runs inside the UI process.
"""
