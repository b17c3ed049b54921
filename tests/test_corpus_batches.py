"""Batch sizing from free device memory and the store writer's background thread (backend/corpus/shards.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from backend.corpus.shards import BatchWriter, rows_that_fit


def test_rows_that_fit_counts_bytes_per_row():
    # One row: 128 tokens x 4 bytes x (3 x 24,576 + 16 x 768) = 128 x 4 x 86,016 = 44,040,192 bytes.
    per_row = 44_040_192
    assert rows_that_fit(10 * per_row, seq_len=128, d_model=768, d_sae=24_576, requested=64) == 5  # half of 10
    assert rows_that_fit(10 * per_row + per_row, seq_len=128, d_model=768, d_sae=24_576, requested=64) == 5
    assert rows_that_fit(12 * per_row, seq_len=128, d_model=768, d_sae=24_576, requested=64) == 6
    assert rows_that_fit(12 * per_row, seq_len=128, d_model=768, d_sae=24_576, requested=64, fraction=1.0) == 12


def test_rows_that_fit_keeps_what_fits_and_never_goes_below_one():
    assert rows_that_fit(80 * 2**30, seq_len=128, d_model=768, d_sae=24_576, requested=64) == 64
    assert rows_that_fit(0, seq_len=128, d_model=768, d_sae=24_576, requested=64) == 1


class Recorder:
    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple[int, int, str]] = []
        self.fail_at = fail_at

    def add_activations(self, layer, z_idx, z_val, stats):
        if self.fail_at is not None and int(z_idx[0, 0]) == self.fail_at:
            raise OSError("disk full")
        self.calls.append((layer, int(z_idx[0, 0]), threading.current_thread().name))


def batch(i: int) -> dict:
    arr = np.full((1, 1), i)
    return {3: (arr, arr.astype(np.float32), ()), 5: (arr, arr.astype(np.float32), ())}


def test_batch_writer_writes_every_batch_in_order_on_its_own_thread():
    rec = Recorder()
    w = BatchWriter(rec, depth=2)  # type: ignore[arg-type]
    for i in range(20):
        w.put(batch(i))
    w.close()
    assert [(layer, i) for layer, i, _ in rec.calls] == [(layer, i) for i in range(20) for layer in (3, 5)]
    assert {name for *_, name in rec.calls} == {"featurescope-store-writer"}


def test_batch_writer_raises_the_writers_error_on_the_callers_thread():
    rec = Recorder(fail_at=4)
    w = BatchWriter(rec, depth=1)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="disk full"):
        for i in range(50):
            w.put(batch(i))
        w.close()
    assert [i for _, i, _ in rec.calls] == [0, 0, 1, 1, 2, 2, 3, 3]
