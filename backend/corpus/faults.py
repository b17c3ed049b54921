"""Crash points for the crash/resume test.

`FEATURESCOPE_CORPUS_SIGKILL_AT=shard-batch:1:2` makes a build kill its own process with SIGKILL
(no clean-up, no finally blocks, like a lost machine) when it reaches that point; the test then
runs the build again and compares the store with one from an uninterrupted build.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "FEATURESCOPE_CORPUS_SIGKILL_AT"


def checkpoint(*point: object) -> None:
    target = os.environ.get(VARIABLE)
    if target and target == ":".join(str(p) for p in point):
        os.kill(os.getpid(), signal.SIGKILL)
