"""Dense layer: one float32 BLAS matmul per batch followed by the fused epilogue."""
from __future__ import annotations

import numpy as np

from .epilogue import epilogue, recording_target
from .threads import parallel_blocks


class Dense:
    """A dense layer bound to its weights; call with a (batch, ..., in) float32 array."""

    def __init__(self, kernel, bias, act):
        self.kernel = np.ascontiguousarray(kernel, dtype=np.float32)
        out = self.kernel.shape[1]
        self.bias = np.zeros(out, np.float32) if bias is None else \
            np.ascontiguousarray(bias, dtype=np.float32)
        self.act = act

    def __call__(self, x, mask, msp, msc, seen, ssp, ssc, groups):
        n, lead, k = x.shape[0], x.shape[1:-1], x.shape[-1]
        P = int(np.prod(lead, dtype=np.int64))
        x2 = np.ascontiguousarray(x).reshape(n * P, k)
        y = np.empty((n * P, self.kernel.shape[1]), np.float32)

        def block(b0, b1):
            rows = slice(b0 * P, b1 * P)
            np.matmul(x2[rows], self.kernel, out=y[rows])
            epilogue(y[rows], self.bias, *self.act, P, mask, msp, msc, recording_target(seen),
                     ssp, ssc, groups[b0:b1] if groups.shape[0] else groups)

        parallel_blocks(block, n)
        return y.reshape(n, *lead, self.kernel.shape[1])
