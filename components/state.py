"""UI plumbing shared by every page: settings, the cached backend, errors, progress, URL state.

Pages call `backend()` and never construct one; the backend is created once per process per
(kind, URL, key) and kept in a process-level holder of our own, so every session shares the loaded
models. Not in `st.cache_resource`: any websocket client, signed in or not, can clear that for
everyone with one protocol message (`BackMsg(clear_cache=True)`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import streamlit as st
from pydantic import SecretStr, ValidationError

from backend import get_backend
from backend.errors import BackendError, NotImplementedYet
from backend.protocol import Backend
from backend.schemas import CatalogResult, ModelInfo
from backend.settings import Limits, Settings, get_settings
from components import gate

T = TypeVar("T")
log = logging.getLogger("featurescope.ui")


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


MAX_ECHO = 80  # characters of user input a message may repeat


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """`text` cut to `limit` characters (with its full length said), for messages that quote input."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit - 1]}… ({len(text):,} characters)"


_LONG = f"{{{MAX_ECHO + 1},}}"
_QUOTED = re.compile(f"'([^'\\n]{_LONG})'|\"([^\"\\n]{_LONG})\"|(\\S{_LONG})")


def clip_message(message: str, limit: int = 600) -> str:
    """A message safe to show: quoted input and unbroken runs cut to MAX_ECHO characters, the whole
    cut to `limit`, control characters dropped."""
    def short(m: re.Match) -> str:
        quoted = m.group(1) if m.group(1) is not None else m.group(2)
        if quoted is None:
            return clip(m.group(3))
        q = "'" if m.group(1) is not None else '"'
        return f"{q}{clip(quoted)}{q}"

    text = "".join(ch for ch in str(message) if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    return clip(_QUOTED.sub(short, text), limit)


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!<>|~$:=^])")


# What GitHub-flavoured markdown turns into links after parsing, escapes or not (remark's autolink
# literal runs a regex over the text: `https://…`, `www.…`, `name@host.tld`). An invisible word
# joiner (U+2060) after the `:`, between `www` and its dot, and after the `@` stops the match.
_AUTOLINK = re.compile(r"(?i)(?<=https:)|(?<=http:)|(?<=\bwww)(?=\.)|(?<=@)(?=[\w-])")


def markdown_text(text: str) -> str:
    """`text` for a place that renders markdown (st.error, st.warning, st.caption): every markdown
    character escaped, so a link, emphasis, colour directive or formula in data stays text, and
    bare URLs and e-mail addresses are kept from becoming links (they read the same)."""
    return _MARKDOWN.sub(r"\\\1", _AUTOLINK.sub("\u2060", text))


def warn(message: str) -> None:
    """What the user should fix in their input, shown as a warning (escaped once, for markdown)."""
    st.warning(markdown_text(clip_message(message)), icon=":material/edit:")


def input_message(exc: ValidationError) -> str:
    """A pydantic ValidationError as one sentence per field, without echoing the input."""
    parts = []
    for err in exc.errors()[:4]:
        where = " ".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int)) or "input"
        msg = str(err.get("msg", "is not valid")).removeprefix("Value error, ")
        parts.append(f"{where.replace('_', ' ').capitalize()}: {msg}.")
    return clip_message(" ".join(parts) or "The input is not valid.")


def show_error(exc: BaseException) -> None:
    """An error, shown politely and visibly: what happened and what to do. A BackendError shows its
    own message; invalid input says which field; anything else says where to look (the log)."""
    if isinstance(exc, NotImplementedYet):
        st.info(markdown_text(clip_message(exc.message)), icon=":material/construction:")
    elif isinstance(exc, BackendError):
        st.error(markdown_text(clip_message(exc.message)), icon=":material/error:")
    elif isinstance(exc, ValidationError):
        warn(input_message(exc))
    else:
        log.error("unexpected error in a backend call", exc_info=exc)
        st.error(f"Something went wrong ({type(exc).__name__}); the server log has the details. "
                 "Try again, or try a shorter input.", icon=":material/error:")


class _Box:
    """An open progress box: the errors of calls made inside it are shown after it closes."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []


_boxes = threading.local()


def _open_boxes() -> list[_Box]:
    if not hasattr(_boxes, "stack"):
        _boxes.stack = []
    return _boxes.stack


def _report(exc: BaseException) -> None:
    stack = _open_boxes()
    if stack:
        stack[-1].errors.append(exc)  # shown under the box when it closes, not inside it
    else:
        show_error(exc)


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run a backend call; show its error (BackendError, invalid input, anything unexpected) as an
    error and return None instead of raising. Inside `progress()` the box ends in an error state and
    the error is shown under it, visible without a click."""
    try:
        return fn(*args, **kwargs)
    except (BackendError, ValidationError) as exc:
        _report(exc)
    except Exception as exc:  # noqa: BLE001 - never a traceback on the screen; logged in show_error
        _report(exc)
    return None


@contextlib.contextmanager
def progress(label: str) -> Iterator[Callable[[float | None, str], None]]:
    """A status box with a progress bar, fed by the backend's progress callback. It ends "done" only
    when every `call` inside succeeded; otherwise in an error state, with the errors below it."""
    box = _Box()
    _open_boxes().append(box)
    try:
        with st.status(label, expanded=False) as status:
            bar = st.progress(0.0)

            def update(fraction: float | None, message: str) -> None:
                status.update(label=clip(message, 200))
                if fraction is not None:
                    bar.progress(min(max(fraction, 0.0), 1.0), text=clip(message, 200))

            yield update
            bar.empty()
            if box.errors:
                status.update(label=label.removesuffix("…") + " — failed", state="error", expanded=False)
            else:
                status.update(label=label.removesuffix("…") + " — done", state="complete")
    finally:
        _open_boxes().remove(box)
    for exc in box.errors:
        show_error(exc)


def build(request_model: type[T], /, **fields: Any) -> T | None:
    """A request model from the page's fields, or None with a message saying which field to fix
    (never pydantic's dump)."""
    try:
        return request_model(**fields)
    except ValidationError as exc:
        warn(input_message(exc))
        return None


def run(label: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """THE way a page runs a backend call: `fn(*args, progress=…, **kwargs)` under a progress box,
    None (and the error shown, the box marked failed) on any error."""
    with progress(label) as update:
        return call(fn, *args, progress=update, **kwargs)


def session_has(name: str, req: Any) -> bool:
    """Whether `session_cached(name, ...)` holds the answer to `req` already."""
    return req.model_dump_json() in st.session_state.get(f"{name}_cache", {})


def session_cached(name: str, method: str, req: Any, label: str, *, size: int = 16,
                   refresh: bool = False) -> Any | None:
    """`backend().<method>(req)` with a progress box, its last `size` answers kept for this session
    by request, so going back to a view (a selection, a tab) costs nothing. None on a BackendError,
    which is shown."""
    cache: dict[str, Any] = st.session_state.setdefault(f"{name}_cache", {})
    key = req.model_dump_json()
    if refresh or key not in cache:
        result = run(label, getattr(backend(), method), req)
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
        if value is None and name in st.query_params:
            st.query_params.pop(name, None)
    changed = {name: str(value) for name, value in values.items()
               if value is not None and st.query_params.get(name) != str(value)}
    if changed:  # one message, so one browser history entry, for all of them
        st.query_params.update(changed)


# Pages registered by app.py, by short name, so pages can link to each other when both exist.
PAGES: dict[str, Any] = {}


def page(name: str) -> Any | None:
    return PAGES.get(name)


def selection() -> Any | None:
    """The sidebar's current choice (components.sidebar.Selection), set by app.py each run."""
    require_access()
    return st.session_state.get("selection")


class UiLimits(Limits):
    """The backend's limits as the UI needs them (`limits()`); fields it does not publish keep
    their defaults."""

    # TODO(limits): max_graph_slug_chars is not in info().limits yet; GraphRequest.slug_identifier's
    # max_length (128) is what the backend refuses beyond.
    max_graph_slug_chars: int = 128
    # TODO(limits): max_experiment_batch_size is not in info().limits yet; a batch never needs to
    # be larger than the passages of one call.
    max_experiment_batch_size: int = 64


def _derive(published: dict[str, float]) -> UiLimits:
    values = {k: (int(v) if float(v).is_integer() else v) for k, v in published.items()
              if k in UiLimits.model_fields}
    try:
        out = UiLimits.model_validate(values)
    except ValidationError:
        out = UiLimits()
    if "max_experiment_batch_size" not in published:
        out = out.model_copy(update={"max_experiment_batch_size": out.max_experiment_passages})
    if "max_graph_slug_chars" not in published:
        from backend.schemas import GraphRequest

        for meta in GraphRequest.model_fields["slug_identifier"].metadata:
            if getattr(meta, "max_length", None):
                out = out.model_copy(update={"max_graph_slug_chars": int(meta.max_length)})
    return out


def limits() -> UiLimits:
    """Widget bounds: the backend's `info().limits`, fetched once per session and backend kind, so
    the UI never offers what the backend refuses. The defaults stand in when info() fails."""
    kind = st.session_state.get("backend_kind", settings().backend)
    cached = st.session_state.get("_limits")
    if cached is not None and cached[0] == kind:
        return cached[1]
    try:
        out = _derive(backend().info().limits)
    except Exception:  # noqa: BLE001 - the pages work with the defaults; a failing call shows its own error
        return _derive({})
    st.session_state["_limits"] = (kind, out)
    return out


def too_long(what: str, text: str, limit: int) -> str | None:
    """A friendly message when `text` is over `limit` characters, else None."""
    if len(text) > limit:
        return f"{what} is {len(text):,} characters; the limit is {limit:,}. Shorten it."
    return None


def blank(text: str | None) -> bool:
    """Empty, or only whitespace and invisible characters."""
    return not text or not "".join(ch for ch in text if unicodedata.category(ch)[0] not in "CZ")


def text_problem(text: str | None, what: str, if_blank: str, limit: int | None = None) -> str | None:
    """The one check of a typed text before it is sent: `if_blank` when it is blank, a message naming
    `what` when it is over `limit` characters (default: the backend's max_text_chars), else None."""
    if blank(text):
        return if_blank
    return too_long(what, text or "", limits().max_text_chars if limit is None else limit)


_prebuild = {"started": False}
_prebuild_lock = threading.Lock()
PREBUILD_ENV = "FEATURESCOPE_UI_PREBUILD_STORES"  # "0": build the demo stores on first use only


def prebuild_demo_stores() -> None:
    """Start building the demo model's corpus stores (one per SAE and per-layer transcoder set) in a
    background thread when the app first runs in-process, so a user who spends a minute in the
    highlighter finds the feature dashboards' examples ready. Once per process; a dashboard opened
    meanwhile waits for the build of its set (the backend's build lock), then reads the store."""
    import os

    if os.environ.get(PREBUILD_ENV, "1") == "0":
        return
    if st.session_state.get("backend_kind", settings().backend) != "local":
        return
    with _prebuild_lock:
        if _prebuild["started"]:
            return
        _prebuild["started"] = True
    cat = catalog()
    demo = next((m for m in cat.models if m.source == "demo" and m.available), None) if cat else None
    if demo is None:
        return
    jobs = [(s.id, s.layers[0]) for s in demo.sae_sets if s.layers]
    jobs += [(t.id, 0) for t in demo.transcoder_sets if t.kind == "per_layer"]
    b = backend()

    def work() -> None:
        from backend.schemas import FeatureRef, FeatureRequest

        for set_id, layer in jobs:
            req = FeatureRequest(feature=FeatureRef(model=demo.id, sae_set=set_id, layer=layer, index=0),
                                 n_examples=0, n_quantiles=0, examples_per_quantile=0, n_logits=0)
            try:
                b.feature(req)
                log.info("demo corpus store for %s is ready", set_id)
            except Exception:  # the dashboard builds it on first use instead, and shows why not
                log.warning("building the demo corpus store for %s failed", set_id, exc_info=True)

    threading.Thread(target=work, name="featurescope-demo-stores", daemon=True).start()
