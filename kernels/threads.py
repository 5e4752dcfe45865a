"""Coarse-grained parallelism for the kernels: a batch is split into contiguous blocks of
images that worker threads process independently (kernels are GIL-free Numba functions and
single-threaded BLAS calls), so no core ever spins waiting on a barrier inside a layer.

BLAS is limited to one thread while `blas_single_threaded()` is active (through threadpoolctl
when it is installed; otherwise BLAS keeps its own threads and the pool is not used)."""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

_POOL: ThreadPoolExecutor | None = None
BLOCKS_PER_WORKER = 4
_STATE = threading.local()
_LOCK = threading.Lock()


def workers() -> int:
    """Threads to use: REFDECOMP_THREADS, else the CPU cores available to this process."""
    env = os.environ.get("REFDECOMP_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def blas_single_threaded():
    """Within this context, `parallel_blocks` runs on worker threads with one BLAS thread each."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        _STATE.active = True
        try:
            yield
        finally:
            _STATE.active = False


def parallel_blocks(fn, n: int) -> None:
    """Call fn(start, stop) over contiguous blocks covering range(n), in parallel when inside
    `blas_single_threaded()` and more than one worker is available."""
    global _POOL
    w = workers()
    if not getattr(_STATE, "active", False) or w == 1 or n < 2:
        fn(0, n)
        return
    with _LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=w, thread_name_prefix="refdecomp")
    blocks = min(n, BLOCKS_PER_WORKER * w)     # several per worker: balances uneven load
    bounds = [n * i // blocks for i in range(blocks + 1)]
    futures = [_POOL.submit(fn, bounds[i], bounds[i + 1]) for i in range(blocks)]
    for f in futures:
        f.result()
