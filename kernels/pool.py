"""Max and average pooling over NHWC batches (Keras semantics: `same` pads max pooling with
-inf and leaves padded cells out of the average)."""
from __future__ import annotations

import numpy as np
from numba import njit

from ..windows import geometry
from .threads import parallel_blocks


@njit(nogil=True, cache=True)
def _pool(x, out, KH, KW, sh, sw, pt, pl, is_max):
    n, H, W, C = x.shape
    OH, OW = out.shape[1], out.shape[2]
    for t in range(n * OH):
        b = t // OH
        oh = t % OH
        h0 = max(oh * sh - pt, 0)
        h1 = min(oh * sh - pt + KH, H)
        for ow in range(OW):
            w0 = max(ow * sw - pl, 0)
            w1 = min(ow * sw - pl + KW, W)
            for c in range(C):
                out[b, oh, ow, c] = -np.inf if is_max else 0.0
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    for c in range(C):
                        v = x[b, ih, iw, c]
                        if is_max:
                            if v > out[b, oh, ow, c]:
                                out[b, oh, ow, c] = v
                        else:
                            out[b, oh, ow, c] += v
            if not is_max:
                inv = 1.0 / ((h1 - h0) * (w1 - w0))
                for c in range(C):
                    out[b, oh, ow, c] *= inv


def pool2d(x, pool, strides, padding, is_max: bool) -> np.ndarray:
    """Pool an NHWC float32 batch."""
    (oh, pt, _), (ow, pl, _) = geometry(x.shape[1:3], pool, strides, padding)
    out = np.empty((x.shape[0], oh, ow, x.shape[3]), np.float32)
    x = np.ascontiguousarray(x)

    def block(b0, b1):
        _pool(x[b0:b1], out[b0:b1], pool[0], pool[1], strides[0], strides[1], pt, pl, is_max)

    parallel_blocks(block, x.shape[0])
    return out
