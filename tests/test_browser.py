"""The real app in headless Chromium: type, analyse, hover, select; a screenshot for people."""

from __future__ import annotations

import re

from tests.servers import streamlit_server

XSS = "A <script>alert(1)</script> test <img src=x onerror=alert(1)> here"


def test_highlighter_in_chromium(server, browser, output_dir):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server, wait_until="domcontentloaded")
    area = page.locator("textarea").first
    area.wait_for(timeout=120_000)
    area.fill(XSS)
    page.get_by_role("button", name="Analyse").click()
    tokens = page.locator(".fs-tok")
    tokens.first.wait_for(timeout=180_000)
    texts = tokens.all_inner_texts()
    shown = "".join(texts).replace("\u00b7", " ")
    assert "<script>alert(1)</script>" in shown and "<img src=x onerror=alert(1)>" in shown
    assert page.locator("img[src='x']").count() == 0, "no token may become an element"
    # Hover a token: its top features appear; click the first to select it.
    tokens.nth(3).hover()
    feature = page.locator(".fs-tip .feat").first
    feature.wait_for(timeout=30_000)
    feature_id = feature.locator(".id").inner_text()
    feature.click()
    page.wait_for_url(f"**feature={feature_id.replace(':', '%3A')}**", timeout=60_000)
    page.get_by_text(f"Selected feature {feature_id}").wait_for(timeout=60_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(output_dir / "highlighter.png"), full_page=True)
    assert dialogs == [], "an alert ran: markup was injected"


def test_compare_in_chromium(server, browser, output_dir):
    """Model compare in the real app: tokens written as text (an <img> sentence stays text), charts
    drawn, and a screenshot of the page for people (test-output/compare.png)."""
    page = browser.new_page(viewport={"width": 1500, "height": 3400})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server, wait_until="domcontentloaded")
    page.get_by_role("link", name="Model compare").click()
    sentences = page.get_by_role("textbox", name=re.compile(r"^Sentences \(one per line"))
    sentences.wait_for(timeout=120_000)
    lines = sentences.input_value().splitlines() + [XSS]
    sentences.fill("\n".join(lines))
    page.get_by_role("button", name="Compare", exact=True).click()
    page.locator(".fs-cmp-tok").first.wait_for(timeout=240_000)
    page.locator(".js-plotly-plot").nth(1).wait_for(timeout=120_000)
    strips = page.locator(".fs-cmp-sent")
    assert strips.count() == len(lines)
    last = strips.nth(len(lines) - 1).locator(".fs-cmp-strip").first
    shown = "".join(last.locator(".fs-cmp-tok:not(.special)").all_inner_texts()).replace("\u00b7", " ")
    assert shown == XSS
    assert page.locator("img[src='x']").count() == 0, "no token may become an element"
    page.wait_for_timeout(1500)
    page.screenshot(path=str(output_dir / "compare.png"), full_page=True)
    assert dialogs == [], "an alert ran: markup was injected"


# Screen position of the first feature node of the chart, from plotly's own axes.
def test_graph_view_in_chromium(server, browser, output_dir):
    """The graph page on a generated graph: the canvas view draws, hovering a feature node shows its
    title (the prompt's markup as text), clicking its centre selects it into the URL and the panel."""
    from tests.test_graph_browser import NODE_CENTRES, canvas_data, settled_centres, view_frame, wait_idle

    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server, wait_until="domcontentloaded")
    page.get_by_role("link", name="Attribution graph").click()
    prompt = page.get_by_role("textbox", name="Prompt")
    prompt.wait_for(timeout=120_000)
    prompt.fill("The <b>fox</b> jumps")
    page.get_by_role("button", name="Generate").click()
    handle, frame = view_frame(page)
    wait_idle(page)
    handle.scroll_into_view_if_needed()
    where = settled_centres(page)
    assert len(where["ids"]) == int(canvas_data(page, "nodes") or 0) > 0
    i = next(k for k, node in enumerate(where["ids"]) if re.fullmatch(r"\d+_\d+_\d+", node))
    node = where["ids"][i]
    page.mouse.move(where["x"][i], where["y"][i])
    page.wait_for_timeout(150)
    assert canvas_data(page, "hovered") == node
    tip = frame.locator("#tip")
    assert tip.is_visible() and tip.text_content(), "the hovered node's title is shown"
    page.mouse.click(where["x"][i], where["y"][i])
    page.wait_for_url(f"**node={node}**", timeout=60_000)
    page.get_by_text("Strongest input edges").wait_for(timeout=60_000)
    wait_idle(page)
    assert canvas_data(page, "selected") == node
    assert NODE_CENTRES(page)["ids"] == where["ids"]
    page.screenshot(path=str(output_dir / "graph.png"), full_page=True)
    assert page.locator("b", has_text="fox").count() == 0, "tokens are shown as text"
    assert frame.locator("b").count() == 0
    assert dialogs == []


def test_first_visit_by_deep_link_opens_the_page_inside_the_app(hf_cache, browser):
    """On a fresh server no session has run app.py yet, and Streamlit runs `pages/x.py` on its own
    for a visitor whose first request is /x. The page must still open inside the app: its title,
    the sidebar's model picker and the navigation by page titles (not file names)."""
    with streamlit_server() as url:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"{url}/system?model=demo", wait_until="domcontentloaded")
        nav = page.locator("[data-testid=stSidebarNav]")
        nav.get_by_text("Text highlighter").wait_for(timeout=120_000)  # app.py's navigation, by title
        page.get_by_role("heading", name="System").wait_for(timeout=60_000)
        page.locator("[data-testid=stSidebar]").get_by_text("Model", exact=True).wait_for(timeout=60_000)
        titles = [t.split("\n")[-1] for t in nav.locator("a").all_inner_texts()]
        assert "System" in titles and "highlighter" not in titles and "app" not in titles
