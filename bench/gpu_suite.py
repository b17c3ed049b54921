"""Every benchmark at real shapes in one run, with a markdown table of the figures.

GPT-2 small and Gemma-2-2B shapes with random weights (nothing from the hub), dictionaries
calibrated to fire on about 96 features per token (bench/shapes.py; the measured L0 is in the
table). Each benchmark runs in its own process with its own time limit, so one failure leaves the
others' figures; each compares our path with its floor measured in the same process:

| benchmark | floor | ours |
|---|---|---|
| highlighter (bench/analyze.py) | forward to the last hooked layer + the encodes alone | the analysis |
| steering (bench/steer.py) | unsteered generation | steered generation |
| corpus build (bench/corpus_build.py) | forward through the same layers | the shard build |
| graph (bench/graph.py) | circuit-tracer's `attribute` alone | our whole request |

    python bench/gpu_suite.py                 # on a GPU host: under 8 minutes on one H100/H200
    python bench/gpu_suite.py --smoke         # tiny sizes, any machine: checks the suite itself runs
    python bench/gpu_suite.py --out DIR       # also write the table into DIR

The table goes to bench/results/gpu_suite-<device>.md (and DIR). Last line: `suite_passed: <n>/<m>`.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Case:
    name: str
    args: list[str]
    timeout_s: int
    floor: tuple[str, str]  # (key printed by the benchmark, unit)
    ours: tuple[str, str]
    ratio: str  # key of the ratio line
    goal: str  # in words, for the table
    check: object  # (figures) -> bool | None


def _le(key: str, limit: float):
    return lambda f: f[key] <= limit if key in f else None


def _ge(key: str, limit: float):
    return lambda f: f[key] >= limit if key in f else None


def _all(*checks):
    def run(f):
        got = [c(f) for c in checks]
        return None if any(g is None for g in got) else all(got)
    return run


def cases(smoke: bool) -> list[Case]:
    gemma_small = ["--gemma-layers", "2", "--vocab", "4096"] if smoke else []
    toks = ["--tokens", "64", "--repeats", "2"] if smoke else ["--tokens", "512", "--repeats", "10"]
    steer_n = ["--repeats", "1", "--new-tokens", "8"] if smoke else ["--repeats", "2"]
    analyze = Case("", [], 0, ("floor_ms", "ms"), ("full_analysis_ms", "ms"), "analysis_over_floor", "", None)
    steer = Case("", [], 0, ("unsteered_tokens_per_s", "tok/s"), ("steered_tokens_per_s", "tok/s"),
                 "steered_over_unsteered_tokens_per_s", "", None)
    return [
        Case(**{**analyze.__dict__, "name": "highlighter, GPT-2 small shape, 512 tok, 12 x 24,576 SAEs",
                "args": ["bench/analyze.py", "--shape", "gpt2", *toks], "timeout_s": 60,
                "goal": "<= 12 ms; <= 1.15 x floor",
                "check": _all(_le("full_analysis_ms", 12), _le("analysis_over_floor", 1.15))}),
        Case(**{**analyze.__dict__, "name": "highlighter, Gemma-2-2B shape (bf16), 512 tok, 26 x 16,384 JumpReLU",
                "args": ["bench/analyze.py", "--shape", "gemma", *toks, *gemma_small], "timeout_s": 90,
                "goal": "<= 45 ms; <= 1.15 x floor",
                "check": _all(_le("full_analysis_ms", 45), _le("analysis_over_floor", 1.15))}),
        Case(**{**steer.__dict__, "name": "steering, GPT-2 small shape, 32 + 48 tokens",
                "args": ["bench/steer.py", "--shape", "gpt2", *steer_n], "timeout_s": 60,
                "goal": ">= 250 tok/s", "check": _ge("steered_tokens_per_s", 250)}),
        Case("corpus build, GPT-2 shape, 262k tokens, one 24,576 SAE at layer 8",
             ["bench/corpus_build.py", "--gpt2-shape", "--tokens", "2048" if smoke else "262144",
              "--batch-tokens", "1024" if smoke else "65536", "--repeats", "1"], 75,
             ("forward_same_layers_tokens_per_s", "tok/s"), ("build_tokens_per_s", "tok/s"),
             "build_over_forward", ">= 0.7 x forward", _ge("build_over_forward", 0.7)),
        Case("graph, Gemma-2-2B shape (bf16), 64 tok, defaults",
             ["bench/graph.py", "--gemma-shape", "--repeats", "1", "--quick",
              *(["--layers", "2", "--width", "512", "--vocab", "4096", "--tokens", "16", "--max-feature-nodes",
                 "100"] if smoke else [])], 200,
             ("attribute_alone_ms", "ms"), ("whole_request_ms", "ms"), "graph_request_over_attribute",
             "<= 20 s; our share <= 10%", _all(_le("whole_request_ms", 20_000),
                                               _le("graph_request_over_attribute", 1.10))),
        Case(**{**steer.__dict__, "name": "steering, Gemma-2-2B shape (bf16), 32 + 48 tokens",
                "args": ["bench/steer.py", "--shape", "gemma", *steer_n, *gemma_small], "timeout_s": 75,
                "goal": ">= 60 tok/s", "check": _ge("steered_tokens_per_s", 60)}),
    ]


LINE = re.compile(r"^([a-z_0-9]+): ([-+0-9.,]+)")


def figures(output: str) -> dict[str, float]:
    out = {}
    for line in output.splitlines():
        m = LINE.match(line.strip())
        if m:
            try:
                out[m.group(1)] = float(m.group(2).replace(",", ""))
            except ValueError:
                continue
    return out


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ms":
        return f"{value:,.1f} ms" if value < 1000 else f"{value / 1000:,.2f} s"
    return f"{value:,.0f} {unit}"


def device_line() -> str:
    import torch

    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads), torch {torch.__version__}"


def write_table(rows, args, kind: str, stamp: str, wall_s: float, log: list[str]) -> str:
    head = (f"# GPU benchmark suite{' (smoke sizes)' if args.smoke else ''}\n\n"
            f"{stamp}; {device_line()}; random weights at real shapes, dictionaries calibrated to about 96 "
            f"features per token (`bench/shapes.py`); suite wall time {wall_s:.0f} s.\n\n"
            "| workload | floor | ours | ratio | measured L0 | goal | met |\n|---|---|---|---|---|---|---|\n")
    body = ""
    for case, f, status, met in rows:
        floor, ours = f.get(case.floor[0]), f.get(case.ours[0])
        ratio = f.get(case.ratio)
        l0 = f.get("measured_l0")
        extra = ""
        if "bare_forward_ms" in f:
            extra = f" (bare forward {fmt(f['bare_forward_ms'], 'ms')})"
        elif "bare_forward_tokens_per_s" in f:
            extra = f" (forward with logits {fmt(f['bare_forward_tokens_per_s'], 'tok/s')})"
        verdict = {True: "yes", False: "**no**", None: status if status != "ok" else "—"}[met]
        body += (f"| {case.name} | {fmt(floor, case.floor[1])}{extra} | {fmt(ours, case.ours[1])} | "
                 f"{'—' if ratio is None else f'{ratio:.2f}'} | {'—' if l0 is None else f'{l0:.0f}'} | "
                 f"{case.goal} | {verdict} |\n")
    table = head + body
    name = f"gpu_suite-{kind}{'-smoke' if args.smoke else ''}.md"
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / name).write_text(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / name).write_text(table)
        (args.out / name.replace(".md", ".log")).write_text("\n".join(log))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that the suite runs")
    parser.add_argument("--out", type=Path, default=None, help="also write the table and log here")
    parser.add_argument("--only", default=None, help="run only the cases whose name contains this")
    parser.add_argument("--budget-s", type=float, default=450,
                        help="stop starting cases after this many seconds; each case's limit is cut to fit")
    args = parser.parse_args()
    import torch

    kind = "cuda" if torch.cuda.is_available() else "cpu"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    rows, log = [], []
    started = time.monotonic()
    for case in cases(args.smoke):
        if args.only and args.only not in case.name:
            continue
        left = args.budget_s - (time.monotonic() - started)
        if left < 20:
            rows.append((case, {}, "not run: the suite's time budget was spent", None))
            print(f"== {case.name}: not run (budget spent)", flush=True)
            continue
        limit = int(min(case.timeout_s, left))
        t0 = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, *case.args], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=limit)
            output, status = proc.stdout + proc.stderr, "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired as e:
            output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            status = f"timed out after {limit} s"
        took = time.monotonic() - t0
        f = figures(output)
        met = case.check(f) if status == "ok" else None
        rows.append((case, f, status, met))
        log.append(f"== {case.name} ({' '.join(case.args)}): {status}, {took:.0f} s\n{output}")
        print(f"== {case.name}: {status} in {took:.0f} s", flush=True)
        for line in output.splitlines():
            if LINE.match(line.strip()) or line.startswith(("model:", "  of which", "active features")):
                print("   " + line, flush=True)
        if status != "ok":
            print("\n".join(output.splitlines()[-15:]), flush=True)
        write_table(rows, args, kind, stamp, time.monotonic() - started, log)

    table = write_table(rows, args, kind, stamp, time.monotonic() - started, log)
    print(table)
    passed = sum(1 for *_, met in rows if met)
    print(f"suite_passed: {passed}/{len(rows)}")


if __name__ == "__main__":
    main()
