"""Locks shared by processes (the ranks of a launcher, two notebooks): what is built on
first use into the cache or the data root -- a tiny model, the teaching model, a converted
checkpoint, a rehearsal stand-in, generated data -- is built by one process while the
others wait, and then found built.

:func:`build_lock` is an exclusive ``flock`` on ``<cache>/.build.lock``, re-entrant within
a process (a build that resolves another model takes it again) and shared by its threads.
The kernel drops it when its holder dies, so a build killed half-way blocks nobody (the
builders redo an unfinished build: each checks for its last-written file).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from vgutils import context

_guard = threading.Lock()
_held: dict[Path, list] = {}
"""lock file -> [thread lock, depth, file descriptor] of this process."""


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` (created if absent) inside the block, waiting
    for it; re-entrant in this process."""
    path = Path(path)
    with _guard:
        state = _held.setdefault(path, [threading.RLock(), 0, None])
    with state[0]:
        if state[1] == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            state[2] = fd
        state[1] += 1
        try:
            yield
        finally:
            state[1] -= 1
            if state[1] == 0:
                fcntl.flock(state[2], fcntl.LOCK_UN)
                os.close(state[2])
                state[2] = None


def build_lock() -> contextlib.AbstractContextManager[None]:
    """The cache's build lock (``<cache>/.build.lock``; see the module docstring)."""
    return exclusive(context.current().cache_dir / ".build.lock")
