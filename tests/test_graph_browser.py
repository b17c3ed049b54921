"""The graph page in headless Chromium: picking nodes by clicking their centres, the node detail
with corpus examples, and screenshots of a 64-token graph and its pinned subgraph (test-output/)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from tests.test_graph_layout import crowded_graph

PICKS = 50
DENSE = 500
SELECTED = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  const ring = gd._fullData.find(t => t.name === 'pinned / selected');
  return ring ? ring.customdata[ring.customdata.length - 1] : null;
}"""

# Screen centres of the chart's nodes, from plotly's own axes (the first chart is the graph view).
NODE_CENTRES = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  const tr = gd._fullData.find(t => t.name === 'nodes');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  return {ids: Array.from(tr.customdata), scale: xa._length / (xa.range[1] - xa.range[0]),
          x: Array.from(tr.x, v => box.left + xa._offset + xa.l2p(v)),
          y: Array.from(tr.y, v => box.top + ya._offset + ya.l2p(v))};
}"""


RUNNING = "[data-testid=stStatusWidgetRunningIcon], [data-testid=stStatusWidgetRunningManIcon]"


def wait_idle(page, quiet_ms: int = 800, timeout_ms: int = 120_000) -> None:
    """Until the app has not been running a script for `quiet_ms` (a rerun can follow a rerun)."""
    quiet = waited = 0
    while quiet < quiet_ms:
        assert waited < timeout_ms, "the app kept running"
        page.wait_for_timeout(100)
        waited += 100
        quiet = 0 if page.locator(RUNNING).count() else quiet + 100


def wait_selected(page, node: str, timeout_ms: int = 120_000) -> None:
    """Until the URL names `node` (Streamlit sets query parameters with history.replaceState)."""
    page.wait_for_function("id => new URL(location.href).searchParams.get('node') === id", arg=node,
                           timeout=timeout_ms, polling=100)


def settled_centres(page) -> dict:
    """The node centres once they stop moving (after a scroll or a rerun's re-layout)."""
    before = page.evaluate(NODE_CENTRES)
    for _ in range(50):
        page.wait_for_timeout(200)
        now = page.evaluate(NODE_CENTRES)
        if now == before:
            return now
        before = now
    raise AssertionError("the view kept moving")


def open_graph_page(browser, server, *, height: int = 1600):
    page = browser.new_page(viewport={"width": 1500, "height": height})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server, wait_until="domcontentloaded")
    page.get_by_role("link", name="Attribution graph").click()
    page.get_by_role("textbox", name="Prompt").wait_for(timeout=120_000)
    return page, dialogs


def open_file(page, path: Path) -> None:
    page.get_by_role("tab", name="Open a graph file").click()
    box = page.get_by_role("textbox", name="…or a path on the server")
    box.fill(str(path))
    box.press("Enter")
    page.get_by_role("button", name="Open path").click()


def test_clicking_a_nodes_centre_selects_that_node(server, browser, tmp_path):
    """A dense graph (500 nodes, most at the last of 47 positions, as real graphs are): clicking the
    centres of 50 random nodes selects each intended one (the URL's node and the panel say so)."""
    path = tmp_path / "dense.json"
    path.write_text(json.dumps(crowded_graph(DENSE, n_pos=47, n_logits=10, seed=3)))
    page, dialogs = open_graph_page(browser, server, height=2200)
    open_file(page, path)
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for(timeout=120_000)
    wait_idle(page)
    where = settled_centres(page)
    assert len(where["ids"]) == DENSE
    assert where["scale"] >= 0.75, "the view is drawn at (nearly) its layout's size, where markers keep apart"
    rng = random.Random(7)
    for i in rng.sample(range(len(where["ids"])), PICKS):
        node = where["ids"][i]
        page.mouse.click(where["x"][i], where["y"][i])
        wait_selected(page, node)
        wait_idle(page)
        assert page.evaluate(SELECTED) == node, "the view rings the node that was clicked"
        again = page.evaluate(NODE_CENTRES)  # the view did not move under the pointer
        assert (again["x"][i], again["y"][i]) == pytest.approx((where["x"][i], where["y"][i]), abs=0.5)
    assert dialogs == []


def prompt_of(backend, n_tokens: int) -> str:
    """A prompt of the demo pack that is `n_tokens` tokens long with the BOS token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(backend.pack().tokenizer_dir()))
    words = ("The old lighthouse keeper climbed the stairs every night, and the ships that passed the "
             "rocks saw his lamp burning until morning. ") * 8
    ids = tok(words, add_special_tokens=False).input_ids[: n_tokens - 1]
    return tok.decode(ids)


def test_a_64_token_graph_its_node_detail_and_subgraph(server, browser, backend, output_dir):
    """A 64-token graph built on the page: clicking a feature shows its corpus examples with the
    activating token highlighted; two pinned features make the subgraph. Screenshots for people:
    test-output/graph64.png (the page) and graph64-subgraph.png."""
    from urllib.parse import quote

    prompt = prompt_of(backend, 64)
    page = browser.new_page(viewport={"width": 1500, "height": 2400})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{server}/graph?prompt={quote(prompt)}&max_feature_nodes=400", wait_until="domcontentloaded")
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for(timeout=600_000)
    wait_idle(page)
    where = page.evaluate(NODE_CENTRES)
    ticks = page.evaluate("() => document.querySelector('.js-plotly-plot')._fullLayout.xaxis.ticktext.length")
    assert ticks == 64
    pinned = []
    for _ in range(2):
        chart.scroll_into_view_if_needed()
        where = settled_centres(page)
        i = next(i for i, n in enumerate(where["ids"]) if re.fullmatch(r"\d+_\d+_\d+", n)
                 and n not in pinned and 0 < where["y"][i] < 2300)
        page.mouse.click(where["x"][i], where["y"][i])
        try:
            wait_selected(page, where["ids"][i])
        except Exception:
            page.screenshot(path=str(output_dir / "graph64-failed-click.png"), full_page=True)
            raise AssertionError(f"clicked {where['ids'][i]} at {where['x'][i]:.0f},{where['y'][i]:.0f}; "
                                 f"URL {page.url}") from None
        wait_idle(page)
        page.get_by_role("button", name="Pin", exact=True).click()
        wait_idle(page)
        pinned.append(where["ids"][i])
    examples = page.locator(".fs-ex")
    examples.first.wait_for(timeout=300_000)
    assert page.locator(".fs-ex .tok.max").count() >= 1, "the activating token is highlighted"
    assert page.get_by_text("Top activating examples").count() == 1
    sub = page.locator(".js-plotly-plot").nth(1)
    sub.wait_for(timeout=60_000)
    groups = page.evaluate("""() => {
      const gd = document.querySelectorAll('.js-plotly-plot')[1];
      const tr = gd._fullData.find(t => t.name === 'groups');
      return {ids: Array.from(tr.customdata), y: Array.from(tr.y), ticks: gd._fullLayout.yaxis.tickvals};
    }""")
    assert sorted(groups["ids"]) == sorted(pinned)
    assert all(float(y).is_integer() and y in groups["ticks"] for y in groups["y"]), "layers on the grid"
    page.wait_for_timeout(500)
    page.screenshot(path=str(output_dir / "graph64.png"), full_page=True)
    sub.screenshot(path=str(output_dir / "graph64-subgraph.png"))
    assert dialogs == []
