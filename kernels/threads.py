"""Coarse-grained parallelism for the kernels. Kernels are GIL-free Numba functions and
single-threaded BLAS calls, so plain threads run them in parallel:

* `parallel_parts`: the interpreter splits each batch into parts of about 32 images, and each
  worker thread takes a part through the whole network. There is no barrier per layer, and a
  part's activations stay in cache.
* `parallel_blocks`: one layer's images are split into blocks. Used when a batch is too small
  to split into parts.

BLAS is limited to one thread while `blas_single_threaded()` is active (through threadpoolctl
when it is installed; otherwise BLAS keeps its own threads and the pool is not used)."""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

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


#: images per part when a batch is split into parts that run through the whole network
PART_IMAGES = 32


def parallel_parts(fn, start: int, stop: int) -> None:
    """Call fn(a, b) over parts of range(start, stop), each part on one worker thread through
    the whole network (its kernels run serially there). Compared with splitting every layer
    across the threads, this has no barrier per layer and keeps a part's activations in
    cache. Batches too small to give every worker a part run as one."""
    w = workers()
    n = stop - start
    if not getattr(_STATE, "active", False) or w == 1 or n < 2 * w:
        fn(start, stop)
        return
    _run_split(fn, start, n, max(w, -(-n // PART_IMAGES)), w)


def _run_split(fn, start: int, n: int, pieces: int, w: int) -> None:
    """fn over `pieces` contiguous pieces of range(start, start + n) on the pool of `w`
    workers; returns when all are done (re-raising the first error)."""
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=w, thread_name_prefix="refdecomp")
    bounds = [start + n * i // pieces for i in range(pieces + 1)]
    futures = [_POOL.submit(fn, bounds[i], bounds[i + 1]) for i in range(pieces)]
    for f in futures:
        f.result()


def parallel_blocks(fn, n: int) -> None:
    """Call fn(start, stop) over contiguous blocks covering range(n), in parallel when inside
    `blas_single_threaded()` and more than one worker is available."""
    w = workers()
    if not getattr(_STATE, "active", False) or w == 1 or n < 2:
        fn(0, n)
        return
    _run_split(fn, 0, n, min(n, BLOCKS_PER_WORKER * w), w)   # several per worker: balance


_BUFFERS = threading.local()


def pad_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """This thread's reused float32 padding buffer for one layer call (the layers run one
    after another within a thread, so one buffer per thread serves every kernel)."""
    size = int(np.prod(shape))
    buf = getattr(_BUFFERS, "pad", None)
    if buf is None or buf.size < size:
        buf = _BUFFERS.pad = np.empty(size, np.float32)
    return buf[:size].reshape(shape)
