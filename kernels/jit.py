"""Compiling the generated micro-kernels with LLVM's SLP vectorizer switched on.

Numba leaves SLP vectorisation off by default (it miscompiled some code in the past), but the
micro-kernels in kernels/microkernels_<isa>.py are fast only with it. It is switched on just while
these kernels compile (or load from Numba's cache), under a lock, and each is then sealed
against recompilation so that no unvectorised specialisation can appear silently. Their
results are checked against the NumPy reference ops by the test suite.
"""
from __future__ import annotations

import threading

import numba

_LOCK = threading.Lock()


def compile_vectorized(dispatcher, signature: str):
    """Compile (or load from cache) `dispatcher` for `signature` with SLP vectorisation on;
    afterwards the dispatcher accepts only the compiled signature."""
    with _LOCK:
        if dispatcher.signatures:
            return dispatcher
        old = numba.config.SLP_VECTORIZE
        numba.config.SLP_VECTORIZE = 1
        try:
            dispatcher.compile(signature)
        finally:
            numba.config.SLP_VECTORIZE = old
        dispatcher.disable_compile()
    return dispatcher
