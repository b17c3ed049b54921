"""Issue 17, hole 6: a visitor who never signed in speaks Streamlit's protocol directly. Against the
real app with the password gate on (127.0.0.1 only): a raw websocket client sends
`BackMsg(clear_cache=True)`, and a signed-in user's loaded model must still be loaded. Also the
upload bound and the wrong-password delay."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import tomllib

from components.gate import FREE_TRIES, MAX_DELAY_S, Throttle
from tests.conftest import REPO
from tests.servers import streamlit_server

PASSWORD = "kettle-at-dawn-17"


@pytest.fixture(scope="module")
def gated(hf_cache):
    with streamlit_server(FEATURESCOPE_APP_AUTH="password", FEATURESCOPE_APP_PASSWORD=PASSWORD) as url:
        yield url


@contextlib.contextmanager
def anonymous_session(url: str) -> Iterator[tuple[object, str, list[str]]]:
    """A client that never signed in: /_stcore/stream opened and one script run asked for, as a
    browser would. Yields (websocket, session id, kinds of message received until that run ended)."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    ws_url = url.replace("http://", "ws://") + "/_stcore/stream"
    with connect(ws_url, subprotocols=["streamlit"], open_timeout=30, max_size=None) as ws:
        rerun = BackMsg()
        rerun.rerun_script.page_script_hash = ""
        ws.send(rerun.SerializeToString())
        kinds, session_id = [], ""
        while "script_finished" not in kinds:
            msg = ForwardMsg()
            msg.ParseFromString(ws.recv(timeout=120))
            kinds.append(msg.WhichOneof("type") or "")
            if kinds[-1] == "new_session":
                session_id = msg.new_session.initialize.session_id
        yield ws, session_id, kinds


def send_and_wait(ws, message) -> list[str]:
    """Send a BackMsg, then a rerun; the server handles a session's messages in order, so once that
    rerun has finished, the message was handled. Returns the kinds of message received."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    ws.send(message.SerializeToString())
    rerun = BackMsg()
    rerun.rerun_script.page_script_hash = ""
    ws.send(rerun.SerializeToString())
    kinds: list[str] = []
    while "script_finished" not in kinds:
        msg = ForwardMsg()
        msg.ParseFromString(ws.recv(timeout=120))
        kinds.append(msg.WhichOneof("type") or "")
    return kinds


def test_an_anonymous_clear_cache_does_not_drop_the_signed_in_users_model(gated, browser):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(gated, wait_until="domcontentloaded")
    page.get_by_label("Team password").wait_for(timeout=120_000)
    page.get_by_label("Team password").fill(PASSWORD)
    page.get_by_role("button", name="Enter").click()
    page.get_by_role("button", name="Analyse").wait_for(timeout=120_000)
    page.get_by_role("button", name="Analyse").click()
    page.locator(".fs-tok").first.wait_for(timeout=180_000)  # the demo model is loaded now

    from streamlit.proto.BackMsg_pb2 import BackMsg

    with anonymous_session(gated) as (ws, _, kinds):
        assert "new_session" in kinds
        assert "script_finished" in send_and_wait(ws, BackMsg(clear_cache=True))

    page.get_by_role("link", name="System").click()
    page.get_by_text("Featurescope diagnostics").wait_for(timeout=120_000)
    diagnostics = page.locator("code").filter(has_text="Featurescope diagnostics").inner_text()
    assert "loaded: demo" in diagnostics, diagnostics


def test_an_anonymous_session_cannot_upload_more_than_the_setting(gated):
    """The gate cannot stop an upload (Streamlit takes it before any script runs): its size is what
    stays bounded, by FEATURESCOPE_APP_MAX_UPLOAD_MB (32 MB by default; Streamlit's own is 200)."""
    from backend.settings import Settings

    limit = Settings.model_fields["app_max_upload_mb"].default * 1024 * 1024
    with anonymous_session(gated) as (_, session_id, _kinds), httpx.Client(base_url=gated, timeout=120) as http:
        http.get("/_stcore/health")  # the XSRF cookie, as a browser gets it
        token = http.cookies.get("_streamlit_xsrf")
        assert session_id and token

        def upload(n: int) -> int:
            files = {"file": ("big.json", b"0" * n, "application/json")}
            return http.put(f"/_stcore/upload_file/{session_id}/f{n}", files=files,
                            headers={"X-Xsrftoken": token}).status_code

        assert upload(limit + (8 << 20)) == 413
        assert upload(1 << 20) in (200, 204), "a file within the bound is still taken"


def test_uploads_are_bounded_by_a_setting():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    from backend.settings import Settings

    assert config["server"]["maxUploadSize"] == Settings.model_fields["app_max_upload_mb"].default <= 64
    probe = ("import components.state; from streamlit import config; "
             "print(config.get_option('server.maxUploadSize'))")
    env = {**__import__("os").environ, "FEATURESCOPE_APP_MAX_UPLOAD_MB": "5"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "5"


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds

    def clock(self) -> float:
        return self.now


def test_wrong_passwords_wait_longer_and_longer_per_client():
    t = FakeTime()
    throttle = Throttle(sleep=t.sleep, clock=t.clock)
    for _ in range(FREE_TRIES + 4):
        assert throttle.attempt("10.0.0.1", lambda: False) is False
    # The first FREE_TRIES tries are free; then each waits twice as long as the one before.
    assert t.slept == [1.0, 2.0, 4.0, 8.0]
    assert throttle.attempt("10.0.0.2", lambda: False) is False and len(t.slept) == 4, "another client: no wait"
    t.now += 3600  # time already waited counts: a try long after the last failure waits nothing
    assert throttle.attempt("10.0.0.1", lambda: False) is False and len(t.slept) == 4
    assert throttle.attempt("10.0.0.1", lambda: True) is True  # a right password waits its turn too…
    assert t.slept[-1] == MAX_DELAY_S  # (2 ** 5 s, capped)
    assert throttle.attempt("10.0.0.1", lambda: False) is False and len(t.slept) == 5  # …and clears the count


def test_the_sign_in_form_goes_through_the_throttle(hf_cache, monkeypatch):
    from components import gate
    from tests.test_app_remote import gated as gated_app
    from tests.test_app_remote import sees_only_the_gate

    t = FakeTime()
    monkeypatch.setattr(gate, "THROTTLE", Throttle(sleep=t.sleep, clock=t.clock))
    at = gated_app(FEATURESCOPE_APP_AUTH="password", FEATURESCOPE_APP_PASSWORD="plasma-2024").run()
    for _ in range(FREE_TRIES + 2):
        at.text_input(key="gate_password").input("tokamak")
        at.button[0].click().run()
        assert sees_only_the_gate(at) and any("Wrong password" in e.value for e in at.error)
    assert t.slept == [1.0, 2.0]
    at.text_input(key="gate_password").input("plasma-2024")
    at.button[0].click().run()
    assert not sees_only_the_gate(at) and t.slept == [1.0, 2.0, 4.0]
