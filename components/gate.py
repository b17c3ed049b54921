"""Who may open the app at a team-shared URL (FEATURESCOPE_APP_AUTH):

- `none` (default): everyone who reaches the URL.
- `password`: one shared password, from FEATURESCOPE_APP_PASSWORD or, better, its hash in
  FEATURESCOPE_APP_PASSWORD_HASH (environment or Streamlit secrets). Passwords are compared as
  PBKDF2-SHA256 hashes with `hmac.compare_digest`; a plain password is hashed once, in memory.
  Make a hash with `python -m components.gate`.
- `oidc`: Streamlit's own OpenID Connect login (`st.login`), configured in `[auth]` of
  `.streamlit/secrets.toml`; FEATURESCOPE_APP_ALLOWED_EMAILS may restrict it to emails or @domains.

A visitor without access sees the sign-in page and nothing else: app.py shows it as the only page.
After FREE_TRIES wrong passwords from one client (its IP address), each further try waits longer
(1 s, 2 s, 4 s, … up to MAX_DELAY_S) before it is checked; a right password clears the count.
What the gate does not protect (Streamlit's own protocol) is in the README's deployment notes.
"""

from __future__ import annotations

import argparse
import base64
import functools
import getpass
import hashlib
import hmac
import importlib.util
import os
import sys
import threading
import time

import streamlit as st

from backend.settings import Settings

ITERATIONS = 310_000  # OWASP's figure for PBKDF2-HMAC-SHA256
_PASSED = "gate_passed"
FREE_TRIES = 3  # wrong passwords per client before tries are slowed down
MAX_DELAY_S = 30.0


class Throttle:
    """Wrong passwords per client, for the whole process: (failures, time of the last one). A try
    first waits out the delay the client's failures earned; one client's tries run one at a time, so
    parallel sessions do not share out the wait."""

    def __init__(self, sleep=time.sleep, clock=time.monotonic) -> None:
        self.sleep = sleep
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @staticmethod
    def delay_after(failures: int) -> float:
        return 0.0 if failures < FREE_TRIES else min(MAX_DELAY_S, 2.0 ** (failures - FREE_TRIES))

    def attempt(self, client: str, check) -> bool:
        """Wait as long as `client`'s earlier failures ask, then `check()`; record the outcome."""
        with self._guard:
            lock = self._locks.setdefault(client, threading.Lock())
        with lock:
            failures, last = self._failures.get(client, (0, 0.0))
            wait = last + self.delay_after(failures) - self.clock()
            if failures and wait > 0:
                self.sleep(wait)
            ok = bool(check())
            with self._guard:
                if ok:
                    self._failures.pop(client, None)
                else:
                    self._failures[client] = (failures + 1, self.clock())
            return ok


THROTTLE = Throttle()


def _client() -> str:
    """The visitor's IP address (None on localhost, where every visitor is this machine)."""
    try:
        ip = st.context.ip_address
    except AttributeError:
        return "unknown"
    return ip if isinstance(ip, str) and ip else "localhost"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """`pbkdf2_sha256$<iterations>$<salt>$<hash>`, salt and hash in url-safe base64."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` hashes to `encoded`, compared in constant time; False for a malformed hash."""
    try:
        algorithm, iterations, salt, want = encoded.strip().split("$")
        if algorithm != "pbkdf2_sha256" or not 1 <= int(iterations) <= 10_000_000:
            return False
        expected = _unb64(want)
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), _unb64(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


@functools.cache
def _hash_of_plain(password: str) -> str:
    return hash_password(password)


def configured_hash(settings: Settings) -> str | None:
    if settings.app_password_hash is not None:
        return settings.app_password_hash.get_secret_value()
    if settings.app_password is not None and settings.app_password.get_secret_value():
        return _hash_of_plain(settings.app_password.get_secret_value())
    return None


def _fingerprint(encoded: str) -> str:
    """What a session remembers after a right password: changing the password logs everyone out."""
    return hashlib.sha256(encoded.encode()).hexdigest()


def email_allowed(email: str | None, allowed: str) -> bool:
    entries = [e.strip().lower() for e in allowed.split(",") if e.strip()]
    if not entries:
        return True
    email = (email or "").strip().lower()
    return any(email == e or (e.startswith("@") and email.endswith(e)) for e in entries)


def _logged_in() -> bool:
    return bool(st.user.get("is_logged_in", False))


def allowed(settings: Settings) -> bool:
    """Whether this session may see the app."""
    if settings.app_auth == "none":
        return True
    if settings.app_auth == "password":
        encoded = configured_hash(settings)
        return encoded is not None and st.session_state.get(_PASSED) == _fingerprint(encoded)
    return _logged_in() and email_allowed(st.user.get("email"), settings.app_allowed_emails)  # type: ignore[arg-type]


def render_gate(settings: Settings) -> None:
    """The sign-in page: the only page a visitor without access gets (the caller passes the
    settings, so this module does not import components.state, which imports it)."""
    st.title("Featurescope")
    st.caption("This explorer is shared with a team. Sign in to continue.")
    if settings.app_auth == "password":
        _password_form(settings)
    else:
        _oidc_login(settings)


def _password_form(settings: Settings) -> None:
    encoded = configured_hash(settings)
    if encoded is None:
        st.error(
            "This app is closed: FEATURESCOPE_APP_AUTH=password needs FEATURESCOPE_APP_PASSWORD or "
            "FEATURESCOPE_APP_PASSWORD_HASH (environment or Streamlit secrets).",
            icon=":material/lock:",
        )
        return
    with st.form("gate_form"):
        password = st.text_input("Team password", type="password", key="gate_password")
        submitted = st.form_submit_button("Enter")
    if submitted:
        if THROTTLE.attempt(_client(), lambda: verify_password(password or "", encoded)):
            st.session_state[_PASSED] = _fingerprint(encoded)
            del st.session_state["gate_password"]
            st.rerun()
        st.error("Wrong password.", icon=":material/lock:")


def _oidc_login(settings: Settings) -> None:
    if importlib.util.find_spec("authlib") is None:
        st.error(
            "This app is closed: FEATURESCOPE_APP_AUTH=oidc needs Authlib (pip install Authlib).",
            icon=":material/lock:",
        )
        return
    if _logged_in():
        st.error(
            f"{st.user.get('email') or 'This account'} may not open this app "
            "(FEATURESCOPE_APP_ALLOWED_EMAILS).",
            icon=":material/block:",
        )
        st.button("Log out", on_click=st.logout, key="gate_logout")
        return
    provider = settings.app_oidc_provider
    st.button(
        "Log in", on_click=st.login, args=(provider,) if provider else (), key="gate_login", type="primary"
    )
    st.caption("Log in with your organisation's account (configured in [auth] of .streamlit/secrets.toml).")


def render_account(settings: Settings) -> None:
    """In the sidebar of a signed-in session: who is signed in, and a way out."""
    if settings.app_auth == "password":
        if st.button("Lock", key="gate_lock", help="Forget the password in this browser session"):
            st.session_state.pop(_PASSED, None)
            st.rerun()
    elif settings.app_auth == "oidc":
        st.caption(f"Signed in as {st.user.get('email') or 'you'}")
        st.button("Log out", on_click=st.logout, key="gate_sidebar_logout")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.gate",
        description="Print the hash to put in FEATURESCOPE_APP_PASSWORD_HASH.",
    )
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    args = parser.parse_args(argv)
    password = getpass.getpass("Team password: ")
    if not password or password != getpass.getpass("Again: "):
        print("The two entries differ (or are empty).", file=sys.stderr)
        return 2
    print(hash_password(password, iterations=args.iterations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
