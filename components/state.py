"""UI plumbing shared by every page: settings, the cached backend, errors, progress, URL state.

Pages call `backend()` and never construct one; the backend is created once per process per
(kind, URL, key) and kept in a process-level holder of our own, so every session shares the loaded
models. Not in `st.cache_resource`: any websocket client, signed in or not, can clear that for
everyone with one protocol message (`BackMsg(clear_cache=True)`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import streamlit as st
from pydantic import SecretStr

from backend import get_backend
from backend.errors import BackendError, LimitExceeded, NotImplementedYet
from backend.protocol import Backend
from backend.schemas import CatalogResult, ModelInfo
from backend.settings import Settings, get_settings
from components import gate

T = TypeVar("T")


def _navigation_only() -> None:
    """Streamlit runs a `pages/*.py` file on its own, without app.py (so without the sign-in gate and
    the sidebar), while no session has called st.navigation yet, e.g. for a visitor whose first
    request is /system on a fresh server. Leave that mode now; `require_access` reruns this run
    through app.py."""
    try:
        from streamlit.runtime.pages_manager import PagesManager

        PagesManager.uses_pages_directory = False
    except (ImportError, AttributeError):  # a Streamlit without it has no such mode
        pass


_navigation_only()


def _bound_uploads() -> None:
    """Streamlit's upload size from our setting (FEATURESCOPE_APP_MAX_UPLOAD_MB); its upload route
    reads the option on every request."""
    try:
        from streamlit import config

        config.set_option("server.maxUploadSize", get_settings().app_max_upload_mb, where_defined="featurescope")
    except (ImportError, AttributeError, RuntimeError):  # not under a Streamlit server
        pass


_bound_uploads()


SHELL_KEY = "app_shell"


def mark_app_shell() -> None:
    """app.py calls this first on every run: pages then know the sidebar and the gate ran."""
    st.session_state[SHELL_KEY] = True


def require_access() -> None:
    """Make sure this run went through app.py (the gate, the sidebar, the navigation), and stop at
    the sign-in page unless this session may see the app.

    A page that finds no app.py mark was run by Streamlit on its own (see `_navigation_only`); that
    mode is gone now, so one rerun goes through app.py and opens the same page (its URL is kept).
    The gate check after it is a second line of defence."""
    if not st.session_state.get(SHELL_KEY):
        st.rerun()
    current = settings()
    if not gate.allowed(current):
        gate.render_gate(current)
        st.stop()


def _secrets() -> dict[str, Any]:
    """FEATURESCOPE_* entries of Streamlit secrets, if a secrets file exists."""
    try:
        return {k: v for k, v in st.secrets.to_dict().items() if k.upper().startswith("FEATURESCOPE_")}
    except (FileNotFoundError, st.errors.StreamlitSecretNotFoundError):
        return {}
    except Exception:  # a malformed secrets.toml must not take the app down
        return {}


def settings() -> Settings:
    """Environment settings, with Streamlit secrets as a second source."""
    base = get_settings()
    extra = {k.upper().removeprefix("FEATURESCOPE_").lower(): v for k, v in _secrets().items()}
    if not extra:
        return base
    merged = {**base.model_dump(), **{k: v for k, v in extra.items() if k in Settings.model_fields}}
    return Settings.model_validate(merged)


_BACKENDS: dict[tuple[str, str | None, str | None], Backend] = {}
_BACKENDS_LOCK = threading.Lock()


def _cached_backend(kind: str, remote_url: str | None, api_key: str | None) -> Backend:
    """The process's backend for (kind, URL, key), built by the first session that asks (the others
    wait for it) and kept for the life of the process."""
    key = (kind, remote_url, api_key)
    found = _BACKENDS.get(key)
    if found is not None:
        return found
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            s = settings().model_copy(update={"backend": kind, "remote_url": remote_url,
                                              "api_key": SecretStr(api_key) if api_key else None})
            with st.spinner("Starting the backend…"):
                _BACKENDS[key] = get_backend(s)
        return _BACKENDS[key]


def backend() -> Backend:
    """The backend this session chose in the sidebar (`backend_kind`). The remote URL and key come
    only from settings, secrets or the environment: a visitor cannot point the server elsewhere."""
    require_access()
    s = settings()
    kind = st.session_state.get("backend_kind", s.backend)
    key = s.api_key.get_secret_value() if s.api_key else None
    return _cached_backend(kind, s.remote_url, key)


def show_error(exc: BackendError) -> None:
    """A BackendError, shown politely: what happened and what to do."""
    if isinstance(exc, NotImplementedYet):
        st.info(exc.message, icon=":material/construction:")
    elif isinstance(exc, LimitExceeded):
        st.warning(exc.message, icon=":material/straighten:")
    else:
        st.error(exc.message, icon=":material/error:")


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run a backend call; show a BackendError and return None instead of raising."""
    try:
        return fn(*args, **kwargs)
    except BackendError as exc:
        show_error(exc)
        return None


@contextlib.contextmanager
def progress(label: str) -> Iterator[Callable[[float | None, str], None]]:
    """A status box with a progress bar, fed by the backend's progress callback."""
    with st.status(label, expanded=False) as status:
        bar = st.progress(0.0)

        def update(fraction: float | None, message: str) -> None:
            status.update(label=message)
            if fraction is not None:
                bar.progress(min(max(fraction, 0.0), 1.0), text=message)

        yield update
        bar.empty()
        status.update(label=label.removesuffix("…") + " — done", state="complete")


def session_cached(name: str, method: str, req: Any, label: str, *, size: int = 16,
                   refresh: bool = False) -> Any | None:
    """`backend().<method>(req)` with a progress box, its last `size` answers kept for this session
    by request, so going back to a view (a selection, a tab) costs nothing. None on a BackendError,
    which is shown."""
    cache: dict[str, Any] = st.session_state.setdefault(f"{name}_cache", {})
    key = req.model_dump_json()
    if refresh or key not in cache:
        with progress(label) as update:
            result = call(getattr(backend(), method), req, progress=update)
        if result is None:
            return None
        cache.pop(key, None)
        while len(cache) >= size:
            cache.pop(next(iter(cache)))
        cache[key] = result
    return cache[key]


@st.cache_data(ttl=60, show_spinner=False)
def _catalog(kind: str) -> CatalogResult:
    return backend().catalog()


def catalog() -> CatalogResult | None:
    require_access()
    try:
        return _catalog(st.session_state.get("backend_kind", settings().backend))
    except BackendError as exc:
        show_error(exc)
        return None


def model_info(model_id: str) -> ModelInfo | None:
    cat = catalog()
    if cat is None:
        return None
    return next((m for m in cat.models if m.id == model_id), None)


def query_param(name: str, default: str | None = None) -> str | None:
    value = st.query_params.get(name)
    return value if value not in (None, "") else default


def snapshot_query_params() -> None:
    """Remember the URL's parameters as this run found them, before the sidebar rewrites any
    (app.py calls this first), so a page can honour a link's `sae_set` the sidebar does not list."""
    st.session_state["_run_query"] = {k: st.query_params.get(k) for k in st.query_params}


def query_param_at_start(name: str) -> str | None:
    """A URL parameter as it was when this run started (see `snapshot_query_params`)."""
    value = st.session_state.get("_run_query", {}).get(name)
    return value if value not in (None, "") else None


def set_query_params(**values: Any) -> None:
    """Put shareable state in the URL; None removes a parameter."""
    for name, value in values.items():
        if value is None:
            st.query_params.pop(name, None)
        elif st.query_params.get(name) != str(value):
            st.query_params[name] = str(value)


# Pages registered by app.py, by short name, so pages can link to each other when both exist.
PAGES: dict[str, Any] = {}


def page(name: str) -> Any | None:
    return PAGES.get(name)


def selection() -> Any | None:
    """The sidebar's current choice (components.sidebar.Selection), set by app.py each run."""
    require_access()
    return st.session_state.get("selection")
