"""Files that several processes write in one data dir (two services, the app and a CLI): each write
goes to a temporary file with a name no other writer can pick (`tempfile.mkstemp`), is flushed to
disk, and is renamed over the target while holding the folder's inter-process lock (`fcntl.flock`
on `<folder>/.lock`). A reader sees the old file or the new one, never a mixture, and two writers
never share a temporary file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """An exclusive lock on `folder`, held across processes (and threads: each call opens its own
    file description)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically, safe against other writers in this or another process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        with folder_lock(path.parent):
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
