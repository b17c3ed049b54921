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
FIRST_FEATURE = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  const tr = gd._fullData.find(t => t.name === 'nodes');
  const i = tr.customdata.findIndex(id => /^\\d+_\\d+_\\d+$/.test(id));
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  return {id: tr.customdata[i], n: tr.customdata.length, webgl: gd.querySelectorAll('canvas').length,
          x: box.left + xa._offset + xa.l2p(tr.x[i]), y: box.top + ya._offset + ya.l2p(tr.y[i])};
}"""


def test_graph_view_in_chromium(server, browser, output_dir):
    """The graph page: the WebGL view draws, hovering shows a node, clicking selects it (into the URL)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server, wait_until="domcontentloaded")
    page.get_by_role("link", name="Attribution graph").click()
    prompt = page.get_by_role("textbox", name="Prompt")
    prompt.wait_for(timeout=120_000)
    prompt.fill("The <b>fox</b> jumps")
    page.get_by_role("button", name="Generate").click()
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for(timeout=240_000)
    chart.scroll_into_view_if_needed()
    page.wait_for_timeout(1500)
    node = page.evaluate(FIRST_FEATURE)
    assert node["webgl"] > 0, "the view is drawn with WebGL"
    page.mouse.move(node["x"], node["y"])
    page.locator(".hovertext").first.wait_for(timeout=30_000)
    assert "feature" in (page.locator(".hovertext").first.text_content() or "")
    page.mouse.click(node["x"], node["y"])
    page.wait_for_url(f"**node={node['id']}**", timeout=60_000)
    page.get_by_text("Strongest input edges").wait_for(timeout=60_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(output_dir / "graph.png"), full_page=True)
    assert page.locator("b", has_text="fox").count() == 0, "tokens are shown as text"
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
