"""Writers in several processes, one folder (two services, the app and a CLI on one data dir): graph
library saves and graph-cache writes never share a temporary file, never fail for one another, and
leave a whole file behind."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from backend.graphfile import save_to_library
from backend.local.graph_cache import GraphCache

ROUNDS = 150


def _save_many(folder: str, writer: int, barrier) -> None:
    barrier.wait(30)
    for i in range(ROUNDS):
        # The same slug every time: the same target file for every writer.
        doc = {"metadata": {"slug": "shared"}, "nodes": [{"writer": writer, "i": i, "pad": "x" * 2000}], "links": []}
        save_to_library(doc, folder)


def _put_many(root: str, writer: int, barrier) -> None:
    cache = GraphCache(Path(root), budget_bytes=1 << 30)
    barrier.wait(30)
    for i in range(ROUNDS):
        payload = {"slug": "", "graph": {"metadata": {}, "nodes": [{"writer": writer, "i": i}], "links": []}}
        cache.put_result("samekey", payload)


def _race(target, where: Path) -> list[int]:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=target, args=(str(where), w, barrier)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return [p.exitcode for p in procs]


def test_library_saves_from_three_processes_to_one_file_all_succeed(tmp_path):
    folder = tmp_path / "saved"
    assert _race(_save_many, folder) == [0, 0, 0]
    doc = json.loads((folder / "shared.json").read_text())  # whole, from one writer's last round
    assert doc["nodes"][0]["i"] == ROUNDS - 1
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "shared.json"], "no temporary file is left"


def test_graph_cache_writes_from_three_processes_all_succeed_and_read_back(tmp_path):
    root = tmp_path / "cache"
    assert _race(_put_many, root) == [0, 0, 0]
    hit = GraphCache(root, budget_bytes=1 << 30).get_result("samekey")
    assert hit is not None and hit["graph"]["nodes"][0]["i"] == ROUNDS - 1
    assert [p.name for p in (root / "results").iterdir() if p.name != ".lock"] == ["samekey.json.gz"]
