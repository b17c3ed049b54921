"""One timer for every benchmark: wall and CPU seconds of a call, with the GPU's queue drained
before and after (CUDA kernels run asynchronously, so an undrained timer measures only the launch)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of `fn()` on `device`."""
    import torch

    def drain() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    drain()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    drain()
    return time.perf_counter() - t0, time.process_time() - c0
