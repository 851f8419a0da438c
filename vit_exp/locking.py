"""An exclusive lock across processes (parallel sweep jobs share stores and caches)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if needed) for the block."""
    import fcntl

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def hold_if_free(lock_file: Path):
    """Take an exclusive lock on ``lock_file`` without waiting; return its open handle (the lock
    lasts until it is closed or the process ends, kill -9 included), or None when another holds it."""
    import fcntl

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    handle = lock_file.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def hold_against_other_processes(lock_file: Path, on_wait: Callable[[], None] = lambda: None):
    """Take an exclusive ``lockf`` lock on ``lock_file`` (``on_wait()`` before waiting); return its handle.
    The lock is the process's: taking it again does not wait; closing any handle of the file frees it."""
    import fcntl

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    handle = lock_file.open("a")
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # EAGAIN / EACCES: another process holds it
        on_wait()
        fcntl.lockf(handle, fcntl.LOCK_EX)
    return handle
