"""Element-wise sum of same-shape float32 arrays, optionally followed by an activation, in one
parallel pass."""
from __future__ import annotations

import numpy as np
from numba import njit

from .epilogue import apply_activation, is_plain_relu
from .threads import parallel_blocks


@njit(nogil=True, cache=True)
def _add2(a, b, out, code, p0, p1, p2):
    """out = act(a + b); linear and plain relu get branch-free loops that vectorise."""
    if code == 0:
        for i in range(a.shape[0]):
            out[i] = a[i] + b[i]
    elif is_plain_relu(code, p0, p1, p2):
        for i in range(a.shape[0]):
            out[i] = max(a[i] + b[i], np.float32(0.0))
    else:
        for i in range(a.shape[0]):
            out[i] = apply_activation(a[i] + b[i], code, p0, p1, p2)


def add(arrays, act=(0, 0.0, 0.0, 0.0)) -> np.ndarray:
    """act(sum(arrays)); arrays must share one shape (broadcasting is left to NumPy callers)."""
    out = np.empty(arrays[0].shape, np.float32)
    flat = out.reshape(-1)
    acc = np.ascontiguousarray(arrays[0]).reshape(-1)
    for k, b in enumerate(arrays[1:]):
        last = k == len(arrays) - 2
        _add_blocks(acc, np.ascontiguousarray(b).reshape(-1), flat,
                    act if last else (0, 0.0, 0.0, 0.0))
        acc = flat
    if len(arrays) == 1:
        _add_blocks(acc, np.zeros_like(acc), flat, act)
    return out


def _add_blocks(a, b, out, act) -> None:
    def block(i0, i1):
        _add2(a[i0:i1], b[i0:i1], out[i0:i1], *act)
    parallel_blocks(block, a.shape[0])
