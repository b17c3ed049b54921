"""Issue 12's repros replayed in headless Chromium on the real app (one server for the module):
errors are errors, the user's place is kept, links carry their context. Screenshots go to
test-output/ (journey-*.png)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

from playwright.sync_api import expect

LONG = 120_000  # ms: the first analysis loads the demo model


def query(page) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlparse(page.url).query).items()}


def errors(page) -> list[str]:
    return page.locator('[data-testid="stAlertContentError"]').all_inner_texts()


def warnings(page) -> list[str]:
    return page.locator('[data-testid="stAlertContentWarning"]').all_inner_texts()


def analyse(page, text: str) -> None:
    area = page.get_by_label("Text", exact=True)
    area.wait_for(timeout=LONG)
    area.fill(text)
    page.get_by_role("button", name="Analyse").click()


def settled(page) -> None:
    """Wait for the script run to finish (Streamlit shows a running indicator meanwhile)."""
    page.wait_for_timeout(400)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=LONG)
    page.wait_for_timeout(300)


def steady_text(page, locator, quiet_ms: int = 1500, timeout_ms: int = LONG) -> str:
    """The locator's text once it has not changed for `quiet_ms` (reruns can follow one another)."""
    last, quiet, waited = locator.inner_text(), 0, 0
    while quiet < quiet_ms:
        assert waited < timeout_ms, f"still changing: {last!r}"
        page.wait_for_timeout(250)
        waited += 250
        now = locator.inner_text()
        quiet = quiet + 250 if now == last else 0
        last = now
    return last


def test_errors_are_errors_and_input_is_checked_first(server, browser, output_dir):
    """Repros 1, 4 and 10: over-limit text, a feature that does not exist, empty input and a
    100,000-character field give visible errors or messages, never a 'done' over nothing."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(server, wait_until="domcontentloaded")
    analyse(page, "word " * 4000)  # 20,000 characters: over the token limit
    page.locator('[data-testid="stAlertContentError"]').first.wait_for(timeout=LONG)
    assert any("limit" in e for e in errors(page)), errors(page)
    assert page.get_by_text("Analysing — failed").count() == 1
    assert page.get_by_text("— done").count() == 0
    page.screenshot(path=str(output_dir / "journey-error.png"), full_page=True)

    analyse(page, "   ")  # blank: a friendly message, nothing sent
    page.get_by_text("Type or paste some text to analyse.").wait_for(timeout=30_000)
    assert "validation" not in page.locator("body").inner_text().lower()

    page.get_by_label("Text", exact=True).fill("Plain words.")
    page.get_by_label("Track features (layer:index, comma-separated)").fill("y" * 100_000)
    page.get_by_role("button", name="Analyse").click()
    page.locator('[data-testid="stAlertContentWarning"]').filter(has_text="Track features").wait_for(timeout=30_000)
    shown = " ".join(warnings(page))
    assert "Track features" in shown and "y" * 81 not in shown

    page.goto(f"{server}/features?model=demo&sae_set=res&feature=1:99999", wait_until="domcontentloaded")
    page.locator('[data-testid="stAlertContentError"]').first.wait_for(timeout=LONG)
    assert any("1:99999 does not exist" in e for e in errors(page)), errors(page)
    page.screenshot(path=str(output_dir / "journey-no-such-feature.png"), full_page=True)


def test_the_users_place_is_kept(server, browser, output_dir):
    """Repros 6, 7 and 9: the layer picker follows the mode at once; typed text survives another
    page and browser Back; a ticked table row does not jump to another feature on a new text."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(server, wait_until="domcontentloaded")
    page.get_by_label("Text", exact=True).wait_for(timeout=LONG)
    layer = page.locator('[data-testid="stSelectbox"]').filter(has_text="Layer").last
    settled(page)
    page.get_by_text("All layers").click()
    expect(layer.locator("input")).to_be_disabled(timeout=60_000)
    settled(page)
    page.get_by_text("One layer").click()
    expect(layer.locator("input")).to_be_enabled(timeout=60_000)  # without pressing Analyse

    mine = "Cats chase mice in the old barn every night."
    analyse(page, mine)
    page.locator(".fs-tok").first.wait_for(timeout=LONG)
    settled(page)
    # Tick row 3 of the per-token table: the feature of that row is selected.
    grid = page.locator('[data-testid="stDataFrame"]').first
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 12, box["y"] + 35 + 35 * 2 + 17)
    page.wait_for_function("() => location.search.includes('feature=')", timeout=60_000)
    settled(page)
    picked = query(page)["feature"]
    page.screenshot(path=str(output_dir / "journey-selected.png"), full_page=True)

    analyse(page, "Dogs bark at the mail carrier.")
    page.wait_for_function("() => location.search.includes('Dogs')", timeout=LONG)
    settled(page)
    assert query(page)["feature"] == picked, "the selection stays on its feature, not on row 3"

    page.get_by_role("link", name="Steering").first.click()
    page.get_by_role("textbox", name="Prompt").wait_for(timeout=LONG)
    settled(page)
    page.get_by_role("link", name="Text highlighter").first.click()
    page.get_by_label("Text", exact=True).wait_for(timeout=LONG)
    settled(page)
    assert page.get_by_label("Text", exact=True).input_value() == "Dogs bark at the mail carrier."
    # Browser Back, page by page, until the highlighter shows again: its text is the user's.
    for _ in range(6):
        page.go_back()
        settled(page)
        if urlparse(page.url).path.rstrip("/").endswith(("highlighter", "")) and \
                page.get_by_label("Text", exact=True).count():
            break
    page.get_by_label("Text", exact=True).wait_for(timeout=LONG)
    assert page.get_by_label("Text", exact=True).input_value() == "Dogs bark at the mail carrier."
    page.screenshot(path=str(output_dir / "journey-kept.png"), full_page=True)


def test_explanations_stay_with_their_feature_and_links_carry_context(server, browser, output_dir):
    """Repro 2 (an explanation typed for 1:1636 does not follow Next →) and the links: the dashboard's
    Steer it, the highlighter's Steer it with its text."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{server}/features?model=demo&sae_set=res&feature=1:1636", wait_until="domcontentloaded")
    editor = page.get_by_role("textbox", name="Your explanation")
    editor.wait_for(timeout=LONG * 2)
    editor.fill("typed for 1:1636")
    page.get_by_role("button", name="Next →").click()
    page.get_by_text("Feature 1:1637").wait_for(timeout=LONG)
    settled(page)
    assert page.get_by_role("textbox", name="Your explanation").input_value() != "typed for 1:1636"
    steer = page.get_by_role("link", name="Steer it")
    assert "feature=1%3A1637" in steer.get_attribute("href") or "feature=1:1637" in steer.get_attribute("href")
    page.screenshot(path=str(output_dir / "journey-dashboard.png"), full_page=True)

    text = "The river flows to the sea."
    page.goto(f"{server}/?model=demo&sae_set=res&layer=1&feature=1:5&text={text.replace(' ', '+')}",
              wait_until="domcontentloaded")
    page.locator(".fs-tok").first.wait_for(timeout=LONG)
    settled(page)
    link = page.get_by_role("link", name="Steer it")
    link.wait_for(timeout=LONG)
    page.screenshot(path=str(output_dir / "journey-highlighter-link.png"), full_page=True)
    link.click()
    prompt = page.get_by_role("textbox", name="Prompt")
    prompt.wait_for(timeout=LONG)
    settled(page)
    assert prompt.input_value() == text
    assert query(page).get("feature") == "1:5" and query(page).get("sae_set") == "res"
    page.screenshot(path=str(output_dir / "journey-steer-link.png"), full_page=True)
    assert re.search(r"sae_set=res", page.url)


def test_a_graph_node_steers_on_the_graphs_prompt_and_the_graph_page_keeps_its_place(server, browser, output_dir):
    """Repros 3, 5 and 7 on the graph page: 'Steer this feature' opens steering on the graph's own
    prompt, transcoder set, layer:index and position; back on the graph page (sidebar), the same graph
    shows with the user's prune setting and its prompt; a 300-character slug gets a message and the
    page keeps working."""
    from urllib.parse import quote

    from tests.test_graph_browser import settled_centres, view_frame, wait_selected

    prompt = "The function returns the value of the"
    page = browser.new_page(viewport={"width": 1500, "height": 1800})
    page.goto(f"{server}/graph?prompt={quote(prompt)}&max_feature_nodes=60", wait_until="domcontentloaded")
    chart, _ = view_frame(page)
    settled(page)
    where = settled_centres(page)
    i = next(k for k, n in enumerate(where["ids"]) if re.fullmatch(r"\d+_\d+_\d+", n) and where["y"][k] > 0)
    node = where["ids"][i]
    layer, index, pos = node.split("_")
    page.mouse.click(where["x"][i], where["y"][i])
    wait_selected(page, node)
    settled(page)
    # the user's own prune setting: the node threshold slider moved from the keyboard
    nt = page.locator('[data-testid="stSlider"]').filter(has_text="Node threshold")
    before = nt.get_by_test_id("stSliderThumbValue").inner_text()
    shown = page.get_by_text(re.compile(r"^Showing \d+ of \d+ nodes"))
    all_shown = shown.inner_text()
    track = nt.locator("[role=group] > div").first.bounding_box()  # one click on the track: one
    page.mouse.click(track["x"] + track["width"] * 0.45, track["y"] + track["height"] / 2)  # new value
    settled(page)
    moved = nt.get_by_test_id("stSliderThumbValue").inner_text()
    assert moved != before, before
    expect(shown).not_to_have_text(all_shown, timeout=LONG)  # the view is pruned at the new threshold
    settled(page)
    pruned = steady_text(page, shown)  # each key press is a rerun: the last one's answer
    _, frame = view_frame(page)
    frame.wait_for_function("() => document.getElementById('base').dataset.nodes > 0", timeout=LONG)
    page.screenshot(path=str(output_dir / "journey-graph.png"), full_page=True)

    page.get_by_role("link", name="Steer this feature").click()
    page.get_by_role("heading", name="Steering playground").wait_for(timeout=LONG)  # (the graph page
    box = page.get_by_role("textbox", name="Prompt")  # has a Prompt box too)
    settled(page)
    assert box.input_value() == prompt, "steering opens on the graph's prompt"
    q = query(page)
    assert (q.get("sae_set"), q.get("feature"), q.get("position")) == ("demo", f"{layer}:{index}", pos)
    page.screenshot(path=str(output_dir / "journey-graph-steer.png"), full_page=True)

    page.get_by_role("link", name="Attribution graph").first.click()
    page.get_by_role("heading", name="Attribution graph").wait_for(timeout=LONG)
    view_frame(page)
    settled(page)
    assert page.get_by_role("textbox", name="Prompt").input_value() == prompt
    assert nt.get_by_test_id("stSliderThumbValue").inner_text() == moved, "the prune setting is kept"
    assert steady_text(page, shown) == pruned, "and the view is pruned by it"

    page.get_by_text("Attribution settings").click()
    slug = page.get_by_role("textbox", name="slug")
    slug.fill("s" * 300)
    page.get_by_role("button", name="Estimate").click()
    page.locator('[data-testid="stAlertContentWarning"]').filter(has_text="slug").wait_for(timeout=LONG)
    assert "s" * 81 not in " ".join(warnings(page))
    page.get_by_role("tab", name="Open a graph file").click()
    page.get_by_role("textbox", name="…or a path on the server").wait_for(timeout=30_000)
    assert not errors(page)


def test_text_is_shown_as_written_and_amounts_are_read_strictly(server, browser, output_dir, tmp_path):
    """Repros 8, 11 and 12: a graph file's slug with markdown and a URL stays text (no live link, not
    even GFM's autolink of a bare URL) and a node title shows its quote as a quote; '3:51' typed in the
    steering grid's amount column is an error, not 351; sweep generations and the chart title have
    spaces, not the token view's dots."""
    import json

    from tests.test_graph_page import LITERAL_GRAPH

    raw = {**LITERAL_GRAPH, "qParams": {"clickedId": "0_5_2"}}
    path = tmp_path / "markdown-slug.json"
    path.write_text(json.dumps(raw))
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{server}/graph", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Open a graph file").click()
    box = page.get_by_role("textbox", name="…or a path on the server")
    box.fill(str(path))
    box.press("Enter")
    page.get_by_role("button", name="Open path").click()
    # as written (an invisible word joiner after "https:" keeps markdown from making it a link)
    page.get_by_text(re.compile(r"^\[click me\]\(https:\u2060?//example\.com\) \*bold\*$")).first.wait_for(
        timeout=LONG)
    settled(page)
    live = page.locator('a[href="https://example.com"]')
    assert live.count() == 0, ("the slug is not a live link", live.first.evaluate("a => a.parentElement.outerHTML"))
    page.get_by_text("feature 0:5 @2 ''.'").first.wait_for(timeout=LONG)  # quotes as written, not &#x27;
    assert "&#x27;" not in page.locator("body").inner_text()
    page.screenshot(path=str(output_dir / "journey-literal-slug.png"), full_page=True)

    page.goto(f"{server}/steer?model=demo&sae_set=res&feature=1:7&prompt=To+open+a+file",
              wait_until="domcontentloaded")
    page.get_by_role("heading", name="Steering playground").wait_for(timeout=LONG)
    settled(page)
    # Repro 12: '3:51' typed into the amount column (the grid's own editor) is an error, not 351
    where = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
    page.mouse.click(where["x"] + 60, where["y"] + 35 + 17)  # row 1, the feature cell
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")  # the amount cell
    page.keyboard.press("Enter")  # its editor
    page.wait_for_timeout(500)
    page.keyboard.press("Control+A")
    page.keyboard.insert_text("3:51")
    page.keyboard.press("Enter")
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Steer", exact=True).click()
    message = page.locator('[data-testid="stAlertContentWarning"], [data-testid="stAlertContentError"]')
    message.filter(has_text="'3:51' is not a number").first.wait_for(timeout=LONG)
    assert page.get_by_text("Steering — done").count() == 0, "nothing was steered"
    page.screenshot(path=str(output_dir / "journey-grid-amount.png"), full_page=True)

    page.get_by_role("tab", name="Alpha sweep").click()
    page.get_by_role("textbox", name="Alphas").fill("0, 2")
    page.get_by_role("button", name="Sweep").click()
    page.locator(".js-plotly-plot .gtitle").first.wait_for(timeout=LONG)
    settled(page)
    title = page.locator(".js-plotly-plot .gtitle").first.text_content()
    assert title == "Feature 1:7 scaled by alpha" and "·" not in title
    cells = page.locator('[data-testid="stDataFrame"]').last.locator("td").all_inner_texts()
    generations = [c for c in cells if "open" in c or len(c) > 12]
    assert generations and not any("·" in g for g in generations), cells
    page.screenshot(path=str(output_dir / "journey-sweep.png"), full_page=True)
