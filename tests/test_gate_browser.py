"""The password gate (and its Lock button) in the real app, in headless Chromium, on a fresh
server whose first visitor asks for /system directly: Streamlit then runs pages/system.py without
app.py, so the gate must hold there too (components.state.require_access)."""

from __future__ import annotations

import pytest

from tests.servers import streamlit_server

PASSWORD = "plasma-2024"


@pytest.fixture(scope="module")
def gated_server(hf_cache):
    with streamlit_server(FEATURESCOPE_APP_AUTH="password", FEATURESCOPE_APP_PASSWORD=PASSWORD) as url:
        yield url


def test_first_visitor_to_a_page_url_meets_the_gate(gated_server, browser, output_dir):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"{gated_server}/system", wait_until="domcontentloaded")
    box = page.get_by_label("Team password")
    box.wait_for(timeout=120_000)
    page.screenshot(path=str(output_dir / "gate.png"))
    body = page.locator("body").inner_text()
    for secret in ("Memory used", "Loaded models", "Diagnostics", "Memory before loading"):
        assert secret not in body, f"{secret!r} shown before the password"
    box.fill("wrong")
    page.get_by_role("button", name="Enter").click()
    page.get_by_text("Wrong password.").wait_for(timeout=60_000)
    assert "Memory used" not in page.locator("body").inner_text()
    page.get_by_label("Team password").fill(PASSWORD)
    page.get_by_role("button", name="Enter").click()
    page.get_by_role("button", name="Analyse").wait_for(
        timeout=120_000
    )  # in: the app opens on its first page
    page.get_by_role("button", name="Lock").click()
    page.get_by_label("Team password").wait_for(timeout=60_000)
    assert "Analyse" not in page.locator("body").inner_text()
