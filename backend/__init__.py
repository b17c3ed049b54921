"""Featurescope's engine. Nothing here imports streamlit; nothing above here imports torch.

`get_backend(settings)` is the one factory: it imports the chosen implementation inside its
branch, so importing `backend` (for schemas, the catalog or errors) never pulls in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from backend.protocol import Backend
    from backend.settings import Settings


def get_backend(settings: Settings | None = None) -> Backend:
    from backend.settings import get_settings

    settings = settings or get_settings()
    if settings.backend == "remote":
        from backend.http.remote import RemoteBackend

        if not settings.remote_url:
            from backend.errors import InvalidRequest

            raise InvalidRequest("FEATURESCOPE_BACKEND=remote needs FEATURESCOPE_REMOTE_URL.")
        key = settings.api_key.get_secret_value() if settings.api_key else None
        # its methods are made from the protocol at import, so only the protocol's types describe it
        return cast("Backend", RemoteBackend(settings.remote_url, key, settings=settings))
    from backend.local import LocalBackend

    return LocalBackend(settings)
