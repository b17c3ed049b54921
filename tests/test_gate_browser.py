"""The password gate (and its Lock button) in the real app, in headless Chromium, on a fresh
server whose first visitor asks for /system directly: Streamlit then runs pages/system.py without
app.py, so the gate must hold there too (components.state.require_access)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from tests.conftest import REPO
from tests.test_browser import browser, free_port  # noqa: F401 (the fixture)

PASSWORD = "plasma-2024"


@pytest.fixture(scope="module")
def gated_server(hf_cache):
    port = free_port()
    env = {
        **os.environ,
        "FEATURESCOPE_APP_AUTH": "password",
        "FEATURESCOPE_APP_PASSWORD": PASSWORD,
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(REPO / "app.py"),
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()
    lines: list[str] = []

    def drain() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "URL:" in line:
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(120) or proc.poll() is not None:
        proc.kill()
        raise RuntimeError("streamlit did not start:\n" + "".join(lines))
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def test_first_visitor_to_a_page_url_meets_the_gate(gated_server, browser, output_dir):  # noqa: F811
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
