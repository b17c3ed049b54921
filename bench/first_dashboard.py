"""How long a new user waits for their first feature dashboard on the demo pack, in headless Chromium.

A fresh app server with an empty data folder (no corpus store yet), as on a fresh clone, in two runs:

- **cold**: store prebuilding off; the user opens a dashboard link straight away. Timed from the
  page load: the explanation (and logits) showing, then the top examples (the store is built meanwhile,
  with progress under the dashboard already shown).
- **prebuilt**: as shipped (the app starts building the demo stores when it first runs); the user
  reads the highlighter for `--read-s` seconds, then opens the same dashboard.

    python bench/first_dashboard.py                          # a 10k-token store (about a minute)
    python bench/first_dashboard.py --store-tokens 300000    # the app's default store size

Needs Chromium (`make browser`) and Playwright. Last line: `first_dashboard_explanation_s: <cold>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers import streamlit_server  # noqa: E402

LINK = "/features?model=demo&sae_set=res&feature=1:7"


def timed_dashboard(page, url: str, timeout_ms: int) -> tuple[float, float]:
    """(seconds to the explanation, seconds to the first top example), from the page load."""
    start = time.perf_counter()
    page.goto(url + LINK, wait_until="domcontentloaded")
    try:
        page.get_by_role("heading", name="Feature browser").wait_for(timeout=timeout_ms)
        print(f"  page drawn after {time.perf_counter() - start:.1f} s", file=sys.stderr)
        page.get_by_role("button", name="Save explanation").wait_for(timeout=timeout_ms)
        explanation = time.perf_counter() - start
        print(f"  explanation shown after {explanation:.1f} s", file=sys.stderr)
        page.locator(".fs-ex").first.wait_for(timeout=timeout_ms)
    except Exception:
        page.screenshot(path="first-dashboard-timeout.png", full_page=True)
        print("  timed out: see first-dashboard-timeout.png", file=sys.stderr)
        raise
    return explanation, time.perf_counter() - start


def run(*, prebuild: bool, store_tokens: int, read_s: float, timeout_ms: int) -> tuple[float, float]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as data:
        env = {"FEATURESCOPE_DATA_DIR": data, "FEATURESCOPE_DEMO_STORE_MAX_TOKENS": str(store_tokens),
               "FEATURESCOPE_UI_PREBUILD_STORES": "1" if prebuild else "0", "HF_HUB_OFFLINE": "1"}
        with streamlit_server(**env) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            if prebuild:  # the first visit starts the builds; the user reads the highlighter meanwhile
                page.goto(url, wait_until="domcontentloaded")
                page.get_by_role("button", name="Analyse").click(timeout=timeout_ms)
                page.locator(".fs-tok").first.wait_for(timeout=timeout_ms)
                print("  highlighter analysed", file=sys.stderr)
                page.wait_for_timeout(read_s * 1000)
            out = timed_dashboard(page, url, timeout_ms)
            browser.close()
            return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store-tokens", type=int, default=10_000,
                    help="tokens of the demo corpus in the store built on first use (the app's default: 300000)")
    ap.add_argument("--read-s", type=float, default=8.0, help="seconds spent in the highlighter first")
    ap.add_argument("--timeout-s", type=float, default=600.0)
    args = ap.parse_args()
    timeout_ms = int(args.timeout_s * 1000)
    cold = run(prebuild=False, store_tokens=args.store_tokens, read_s=0, timeout_ms=timeout_ms)
    warm = run(prebuild=True, store_tokens=args.store_tokens, read_s=args.read_s, timeout_ms=timeout_ms)
    print(f"store of {args.store_tokens:,} tokens, built on first use, empty data folder")
    print(f"cold (no prebuilding), link opened at once: explanation {cold[0]:.1f} s, examples {cold[1]:.1f} s")
    print(f"as shipped, after {args.read_s:g} s in the highlighter: explanation {warm[0]:.1f} s, "
          f"examples {warm[1]:.1f} s")
    print(f"examples_wait_saved_by_prebuilding_s: {cold[1] - warm[1]:.1f}")
    print(f"first_dashboard_explanation_s: {cold[0]:.2f}")


if __name__ == "__main__":
    main()
