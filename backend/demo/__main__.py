"""`python -m backend.demo build [--smoke] [--out DIR]` and `python -m backend.demo corpus`.

build   train the demo pack (tokenizer, model, SAEs, transcoders, explanations, CARD.md) from the
        corpus into assets/demo (or --out); --smoke runs the same pipeline at tiny sizes (~1 min).
corpus  regenerate assets/demo/corpus.txt.gz from Debian's python3.11-doc (apt-get download).
card    re-render CARD.md and SOURCES.md of a pack from its metrics.json (no training).
explain regenerate a pack's explanations, showcase and card from its saved files (no training).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from backend.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the demo pack")
    b.add_argument("--smoke", action="store_true", help="tiny sizes, about a minute (for tests)")
    b.add_argument("--out", type=Path, default=None, help="pack directory (default: assets/demo)")
    b.add_argument("--corpus", type=Path, default=None,
                   help="corpus file, one document per line (default: the pack's corpus.txt.gz)")
    b.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (default 2, the reference machine's cores; the weights are "
                        "byte-identical only between builds with the same thread count)")
    c = sub.add_parser("corpus", help="regenerate the corpus from Debian's python3.11-doc")
    c.add_argument("--out", type=Path, default=None, help="default: assets/demo/corpus.txt.gz")
    c.add_argument("--deb", type=Path, default=None, help="a python3.11-doc .deb you already have")
    r = sub.add_parser("card", help="re-render CARD.md and SOURCES.md from metrics.json")
    r.add_argument("--out", type=Path, default=None, help="pack directory (default: assets/demo)")
    e = sub.add_parser("explain", help="regenerate explanations, showcase and card (no training)")
    e.add_argument("--out", type=Path, default=None, help="pack directory (default: assets/demo)")
    args = parser.parse_args(argv)
    demo_dir = Settings().demo_dir
    # A terminated build still removes its half-written directory (the `finally` in build()).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if args.command == "card":
        from backend.demo.card import render_card, render_sources

        pack = args.out or demo_dir
        metrics = json.loads((pack / "metrics.json").read_text())
        (pack / "CARD.md").write_text(render_card(metrics))
        (pack / "SOURCES.md").write_text(render_sources(metrics))
        return 0

    if args.command == "explain":
        from backend.demo.build import reexplain

        reexplain(args.out or demo_dir)
        return 0

    if args.command == "corpus":
        from backend.demo.corpus import regenerate

        out = args.out or demo_dir / "corpus.txt.gz"
        print(f"{out}: sha256 of the text {regenerate(out, args.deb)}")
        return 0

    from backend.demo.build import FULL, SMOKE, build

    out = args.out or demo_dir
    corpus = args.corpus
    if corpus is None and not (out / "corpus.txt.gz").exists() and (demo_dir / "corpus.txt.gz").exists():
        corpus = demo_dir / "corpus.txt.gz"  # a build elsewhere reads the committed corpus
    build(out, SMOKE if args.smoke else FULL, corpus_path=corpus, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
