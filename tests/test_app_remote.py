"""The app side of the remote backend and of team URLs, under AppTest: the sidebar switch to the
service started by the `remote_service` fixture, the System page's view of it, and the gate."""

from __future__ import annotations

import json

import httpx
from streamlit.testing.v1 import AppTest

from backend.schemas import AnalyzeRequest
from components.gate import hash_password, verify_password
from tests.test_app_pages import all_markup, app, token_view


def gated(**secrets: str):
    at = app()
    for k, v in secrets.items():
        at.secrets[k] = v
    return at


def sees_only_the_gate(at) -> bool:
    return (
        not at.exception
        and not at.sidebar.selectbox
        and not at.text_area
        and not at.get("bidi_component")
        and not at.dataframe
        and at.title
        and at.title[0].value == "Featurescope"
    )


def _get(url: str, key: str | None = None) -> str:
    return httpx.get(url, headers={"X-Api-Key": key} if key else {}, timeout=30).text


def _switch_script() -> None:
    from components.sidebar import render_backend_switch

    render_backend_switch()


def test_the_switch_sets_the_backend_of_the_session(remote_service):
    at = AppTest.from_function(_switch_script)
    at.secrets["FEATURESCOPE_REMOTE_URL"] = remote_service.url
    at.run()
    radio = at.radio(key="backend_switch")
    assert radio.value == "local" and not radio.disabled and radio.options == ["In-process", "Remote"]
    radio.set_value("remote").run()
    assert at.session_state["backend_kind"] == "remote"
    assert any(remote_service.url in c.value for c in at.caption)
    at.radio(key="backend_switch").set_value("local").run()
    assert at.session_state["backend_kind"] == "local"


def test_pages_run_on_the_remote_service_when_it_is_chosen(remote_service, backend):
    at = gated(FEATURESCOPE_REMOTE_URL=remote_service.url, FEATURESCOPE_API_KEY=remote_service.key)
    at.session_state["backend_kind"] = "remote"  # as the switch leaves it (AppTest's reruns skip app.py)
    at.run()
    assert not at.exception, at.exception
    assert at.sidebar.radio(key="backend_switch").value == "remote"
    assert any(remote_service.url in c.value for c in at.sidebar.caption)
    remote_models = json.loads(_get(remote_service.url + "/models", remote_service.key))["models"]
    options = at.sidebar.selectbox(key="model").options
    assert [o.split(" · ")[0].removesuffix(" (unavailable)") for o in options] == [
        m["display_name"] for m in remote_models
    ]

    text = "Remote <b>tokens</b> too"
    at.text_area(key="hl.text").input(text)
    at.selectbox(key="hl.layer").select(1)
    at.button[0].click().run()
    assert not at.exception, at.exception
    want = backend.analyze(AnalyzeRequest(model="demo", sae_set="res", text=text, layers=[1], k=10))
    data = token_view(at)
    assert [t["t"] for t in data["tokens"]] == [t.text for t in want.tokens]
    assert [[f[1] for f in feats] for feats in data["features"]] == want.layers[0].indices

    at.switch_page("pages/system.py").run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    health = json.loads(_get(remote_service.url + "/health"))
    assert metrics["Remote status"] == "ok" == health["status"]
    assert metrics["Remote device"] == health["device"].upper()
    assert "demo" in health["loaded"] and int(metrics["Remote models loaded"]) == len(health["loaded"])
    assert f"backend: remote ({remote_service.url})" in at.code[0].value
    assert "**remote**" in all_markup(at) and remote_service.url in all_markup(at)


def test_without_a_remote_url_the_switch_stays_in_process(hf_cache):
    at = app().run()
    assert not at.exception
    radio = at.radio(key="backend_switch")
    assert radio.value == "local" and radio.disabled
    assert any("FEATURESCOPE_REMOTE_URL" in c.value for c in at.sidebar.caption)


def test_a_visitor_without_the_password_sees_only_the_gate(hf_cache):
    at = gated(FEATURESCOPE_APP_AUTH="password", FEATURESCOPE_APP_PASSWORD="plasma-2024").run()
    assert sees_only_the_gate(at), at
    at.text_input(key="gate_password").input("tokamak")
    at.button[0].click().run()
    assert sees_only_the_gate(at)
    assert any("Wrong password" in e.value for e in at.error)
    at.text_input(key="gate_password").input("plasma-2024")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.text_area(key="hl.text") is not None and at.button[0].label == "Analyse"


def test_password_hash_from_secrets_and_a_closed_gate_without_any(hf_cache):
    encoded = hash_password("s3cret", iterations=1000)
    assert verify_password("s3cret", encoded) and not verify_password("s3cre", encoded)
    assert not verify_password("s3cret", encoded.replace("pbkdf2_sha256", "md5")) and not verify_password(
        "x", "junk"
    )
    at = gated(FEATURESCOPE_APP_AUTH="password", FEATURESCOPE_APP_PASSWORD_HASH=encoded).run()
    assert sees_only_the_gate(at)
    at.text_input(key="gate_password").input("s3cret")
    at.button[0].click().run()
    assert at.text_area(key="hl.text") is not None
    closed = gated(FEATURESCOPE_APP_AUTH="password").run()
    assert sees_only_the_gate(closed) and not closed.text_input
    assert any("FEATURESCOPE_APP_PASSWORD" in e.value for e in closed.error)


def test_oidc_gate_shows_login_until_an_allowed_user_is_logged_in(hf_cache):
    secrets = {"FEATURESCOPE_APP_AUTH": "oidc", "FEATURESCOPE_APP_ALLOWED_EMAILS": "boss@lab.org, @team.org"}
    at = gated(**secrets)
    at.user = {"is_logged_in": False}
    at.run()
    assert sees_only_the_gate(at) and [b.label for b in at.button] == ["Log in"]
    at = gated(**secrets)
    at.user = {"is_logged_in": True, "email": "eve@elsewhere.com"}
    at.run()
    assert sees_only_the_gate(at) and any("eve@elsewhere.com" in e.value for e in at.error)
    at = gated(**secrets)
    at.user = {"is_logged_in": True, "email": "ada@team.org"}
    at.run()
    assert not at.exception and at.text_area(key="hl.text") is not None
    assert any("ada@team.org" in c.value for c in at.sidebar.caption)
