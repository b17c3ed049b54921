"""The graph view in a real browser: a 5,000-node graph (synthesised in circuit-tracer /
Neuronpedia's schema, shaped like real ones: most features at the last position) opened from a
path in the app, in headless Chromium.

Prints the size of what the browser receives (the figure, plain and gzipped), the time from
pressing "Open path" to the drawn view, and the p95 latency of hovering a node (until plotly's
hover label shows it) and of clicking one (until the app has selected it: URL and panel). The
first draw is also given as a ratio to a 7-node graph's, measured in the same run (the floor: the
app's own round trip). Goal on this machine: first draw <= 2 s, p95 hover <= 100 ms.

    python bench/graph_browser.py [--nodes 5000] [--hovers 60] [--clicks 12]

Last line: `graph_first_draw_s: <seconds>`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
CHROMIUM = "/usr/bin/chromium"

NODES_JS = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  if (!gd || !gd._fullData) return null;
  const tr = gd._fullData.find(t => t.name === 'nodes');
  if (!tr) return null;
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  return {ids: Array.from(tr.customdata), n: tr.customdata.length,
          x: Array.from(tr.x, v => box.left + xa._offset + xa.l2p(v)),
          y: Array.from(tr.y, v => box.top + ya._offset + ya.l2p(v))};
}"""
RUNNING = "[data-testid=stStatusWidgetRunningIcon], [data-testid=stStatusWidgetRunningManIcon]"


def synthetic_graph(n_nodes: int, n_pos: int = 64, n_layers: int = 26, n_logits: int = 10,
                    seed: int = 0) -> dict:
    """A graph JSON in circuit-tracer's schema: embeddings, features (60% at the last position),
    logits, and about four edges per node."""
    rng = random.Random(seed)
    tokens = ["<bos>"] + [f" w{i}" for i in range(n_pos - 1)]
    nodes = [{"node_id": f"E_{i}_{p}", "feature": i, "layer": "E", "ctx_idx": p, "feature_type": "embedding",
              "jsNodeId": f"E_{i}-{p}", "clerp": "", "influence": None, "activation": None} for i, p in
             enumerate(range(n_pos))]
    n_features = n_nodes - n_pos - n_logits
    for i in range(n_features):
        layer = rng.randrange(n_layers)
        pos = n_pos - 1 if rng.random() < 0.6 else rng.randrange(1, n_pos)
        nodes.append({"node_id": f"{layer}_{i}_{pos}", "feature": i, "layer": str(layer), "ctx_idx": pos,
                      "feature_type": "cross layer transcoder", "jsNodeId": f"{layer}_{i}-0",
                      "influence": (i + 1) / (n_features + 1), "activation": rng.random() * 10,
                      "clerp": f"feature {i}: a made-up explanation of moderate length"})
    for k in range(n_logits):
        nodes.append({"node_id": f"{n_layers + 1}_{k}_{n_pos - 1}", "feature": k, "layer": str(n_layers + 1),
                      "ctx_idx": n_pos - 1, "feature_type": "logit", "token_prob": 0.5 / (k + 1),
                      "clerp": f'Output " t{k}" (p={0.5 / (k + 1):.3f})', "jsNodeId": f"L_{k}-{n_pos - 1}"})
    ids = [n["node_id"] for n in nodes]
    links = []
    for n in nodes[n_pos: n_pos + n_features]:
        links.append({"source": ids[n["ctx_idx"]], "target": n["node_id"], "weight": rng.gauss(0, 1)})
        links.append({"source": n["node_id"], "target": ids[-1 - rng.randrange(n_logits)],
                      "weight": rng.gauss(0, 1)})
        for _ in range(2):
            links.append({"source": n["node_id"], "target": ids[rng.randrange(n_pos, len(ids))],
                          "weight": rng.gauss(0, 0.3)})
    meta = {"slug": f"bench-{n_nodes}", "scan": "bench", "prompt_tokens": tokens, "prompt": "".join(tokens),
            "node_threshold": 0.8, "schema_version": 1}
    q = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": meta, "qParams": q, "nodes": nodes, "links": links}


def payload_bytes(doc: dict) -> tuple[int, int]:
    """The figure the page sends for this graph at the file's own thresholds: plain and gzipped."""
    from components.graph_display import display_graph
    from components.graph_view import graph_figure

    spec = graph_figure(display_graph(doc, 1.0, 1.0)).to_json().encode()
    return len(spec), len(gzip.compress(spec, 6))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "FEATURESCOPE_DATA_DIR": str(data_dir), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.port",
                             str(port), "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # ready when it prints its URL
        if "URL:" in line:
            break
    else:
        raise RuntimeError("the app did not start")
    return proc, f"http://127.0.0.1:{port}"


def wait_idle(page, quiet_ms: int = 500) -> None:
    quiet = 0
    while quiet < quiet_ms:
        page.wait_for_timeout(50)
        quiet = 0 if page.locator(RUNNING).count() else quiet + 50


def open_and_draw(page, path: Path, n_nodes: int) -> float:
    """Seconds from pressing 'Open path' to the drawn view of `path`."""
    page.get_by_role("tab", name="Open a graph file").click()
    box = page.get_by_role("textbox", name="…or a path on the server")
    box.fill(str(path))
    box.press("Enter")
    wait_idle(page)
    t0 = time.perf_counter()
    page.get_by_role("button", name="Open path").click()
    page.wait_for_function(f"() => {{ const r = ({NODES_JS})(); return r && r.n === {n_nodes} && "
                           "document.querySelector('.js-plotly-plot canvas'); }", timeout=600_000, polling=20)
    return time.perf_counter() - t0


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--hovers", type=int, default=40)
    ap.add_argument("--clicks", type=int, default=8)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="featurescope-bench-browser-"))
    big, small = work / "big.json", work / "small.json"
    doc = synthetic_graph(args.nodes)
    big.write_text(json.dumps(doc))
    tiny = synthetic_graph(7 + 3, n_pos=3, n_layers=2, n_logits=1)
    small.write_text(json.dumps(tiny))
    plain, zipped = payload_bytes(doc)
    print(f"graph: {args.nodes:,} nodes, {len(doc['links']):,} edges, file {big.stat().st_size:,} bytes")
    print(f"payload_bytes: {plain:,} (gzipped {zipped:,})")
    proc, url = start_app(work / "data")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-quic", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1500, "height": 2400})
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("link", name="Attribution graph").click()
            page.get_by_role("textbox", name="Prompt").wait_for(timeout=300_000)
            floor = open_and_draw(page, small, len(tiny["nodes"]))
            first = open_and_draw(page, big, args.nodes)
            print(f"first draw: {first:.2f} s (7-node graph: {floor:.2f} s)", flush=True)
            wait_idle(page)
            where = page.evaluate(NODES_JS)
            rng = random.Random(1)
            hovers, missed = [], 0
            features = [i for i, n in enumerate(where["ids"]) if n.count("_") == 2 and n[0].isdigit()]
            for i in rng.sample(features, min(args.hovers, len(features))):
                layer, index, pos = where["ids"][i].split("_")
                title = f"feature {layer}:{index} @{pos} "  # the hover label's first line starts so
                page.mouse.move(where["x"][i] + 60, where["y"][i] + 60)
                page.wait_for_timeout(30)
                t0 = time.perf_counter()
                page.mouse.move(where["x"][i], where["y"][i])
                try:
                    page.wait_for_function(
                        "t => [...document.querySelectorAll('.hoverlayer .hovertext')]"
                        ".some(h => h.textContent.startsWith(t))", arg=title, timeout=5_000, polling="raf")
                except Exception:
                    missed += 1
                    continue
                hovers.append((time.perf_counter() - t0) * 1000)
            clicks = []
            for i in rng.sample(range(where["n"]), min(args.clicks, where["n"])):
                node = where["ids"][i]
                t0 = time.perf_counter()
                page.mouse.click(where["x"][i], where["y"][i])
                page.wait_for_function("id => new URL(location.href).searchParams.get('node') === id", arg=node,
                                       timeout=300_000, polling=20)
                clicks.append(time.perf_counter() - t0)
                wait_idle(page)
            browser.close()
    finally:  # the app server goes with the bench, also on Ctrl-C
        proc.terminate()
        proc.wait(timeout=30)
    print(f"first draw of a 7-node graph (floor): {floor:.2f} s")
    print(f"first_draw_over_floor: {first / floor:.2f}")
    if not hovers:
        hovers = [float("nan")]
    print(f"hover_ms: median {statistics.median(hovers):.1f}, p95 {p95(hovers):.1f} (goal <= 100); "
          f"{missed} of {missed + len(hovers)} hovers showed no label within 5 s")
    print(f"click_to_selected_s: median {statistics.median(clicks):.2f}, p95 {p95(clicks):.2f}")
    print(f"graph_first_draw_s: {first:.2f}")


if __name__ == "__main__":
    main()
