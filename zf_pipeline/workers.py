"""Worker process pools that end cleanly whatever the launcher did to signals.

``multiprocessing.Pool`` as a context manager ends with ``terminate()``: SIGTERM to each worker, then a join.
A process started with SIGTERM ignored (some shells, schedulers and job runners do this, and children inherit
it) keeps workers that never die, and the join waits forever. Here a pool that finished its work is closed and
joined (no signal needed), and every worker restores SIGTERM's default action, so ``terminate()`` on an error
still stops it.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.pool import Pool


def default_sigterm() -> None:
    """Make SIGTERM end this process again (the default), in case the parent ignored it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the thread that started it exits (Linux; elsewhere nothing), so
    a ``kill -9`` of a run leaves no training child holding the GPU."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _start(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    default_sigterm()
    if initializer is not None:
        initializer(*initargs)


@contextmanager
def process_pool(
    workers: int,
    start_method: str = "forkserver",
    *,
    preload: Sequence[str] = (),
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[Pool]:
    """A ``multiprocessing.Pool`` of ``workers`` processes: closed and joined when the block ends normally,
    terminated when it raises. ``preload``: modules the forkserver imports once, before forking workers."""
    context = multiprocessing.get_context(start_method)
    if preload:
        context.set_forkserver_preload(list(preload))
    pool = context.Pool(workers, _start, (initializer, initargs))
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    pool.close()
    pool.join()
