"""2-D convolution (NHWC) as im2col into a reused buffer + one float32 BLAS matmul per chunk of
images, followed by the fused epilogue (bias, recording, activation, mask)."""
from __future__ import annotations

import threading

import numpy as np
from numba import njit

from .epilogue import epilogue
from .threads import parallel_blocks
from .windows import geometry

#: target size in floats of one im2col chunk (rows * KH*KW*Cin); bounded, reused per layer.
CHUNK_FLOATS = 1 << 18


@njit(nogil=True, cache=True)
def im2col(x, cols, img0, n_img, KH, KW, sh, sw, dh, dw, pt, pl, OH, OW):
    """cols[(n*OH + oh)*OW + ow, (i*KW + j)*Cin + ci] = x[img0+n, oh*sh-pt+i*dh, ow*sw-pl+j*dw, ci]
    (0 on padding) for n < n_img."""
    H, W, Cin = x.shape[1], x.shape[2], x.shape[3]
    for t in range(n_img * OH):
        n = t // OH
        oh = t % OH
        for ow in range(OW):
            r = t * OW + ow
            for i in range(KH):
                ih = oh * sh - pt + i * dh
                for j in range(KW):
                    iw = ow * sw - pl + j * dw
                    base = (i * KW + j) * Cin
                    if ih >= 0 and ih < H and iw >= 0 and iw < W:
                        for ci in range(Cin):
                            cols[r, base + ci] = x[img0 + n, ih, iw, ci]
                    else:
                        for ci in range(Cin):
                            cols[r, base + ci] = 0.0


_BUFFERS = threading.local()


def _cols_buffer(size: int) -> np.ndarray:
    """This thread's reused im2col buffer (layers run one after another within a thread)."""
    buf = getattr(_BUFFERS, "cols", None)
    if buf is None or buf.size < size:
        buf = _BUFFERS.cols = np.empty(max(size, CHUNK_FLOATS), np.float32)
    return buf[:size]


class Conv2D:
    """A convolution bound to its weights; call with an NHWC float32 batch."""

    def __init__(self, kernel, bias, strides, padding, dilation, act):
        kh, kw, cin, cout = kernel.shape
        self.kshape = (kh, kw)
        self.k2 = np.ascontiguousarray(kernel.reshape(kh * kw * cin, cout), dtype=np.float32)
        self.bias = np.zeros(cout, np.float32) if bias is None else \
            np.ascontiguousarray(bias, dtype=np.float32)
        self.strides, self.padding, self.dilation = tuple(strides), padding, tuple(dilation)
        self.act = act

    def __call__(self, x, mask, msp, msc, seen, ssp, ssc, groups):
        n, H, W, cin = x.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kshape, self.strides, self.dilation
        (oh, pt, _), (ow, pl, _) = geometry((H, W), self.kshape, self.strides, self.padding,
                                            self.dilation)
        P, kdim, cout = oh * ow, self.k2.shape[0], self.k2.shape[1]
        out = np.empty((n * P, cout), np.float32)
        direct = kh == kw == 1 and sh == sw == 1 and pt == pl == 0
        per_chunk = max(1, CHUNK_FLOATS // max(1, P * kdim))

        def block(b0, b1):
            for i0 in range(b0, b1, per_chunk):
                m = min(per_chunk, b1 - i0)
                rows = slice(i0 * P, (i0 + m) * P)
                if direct:
                    cols = x[i0:i0 + m].reshape(m * P, cin)
                else:
                    cols = _cols_buffer(m * P * kdim).reshape(m * P, kdim)
                    im2col(x, cols, i0, m, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)
                np.matmul(cols, self.k2, out=out[rows])
                epilogue(out[rows], self.bias, *self.act, P, mask, msp, msc, seen, ssp, ssc,
                         groups[i0:i0 + m] if groups.shape[0] else groups)

        parallel_blocks(block, n)
        return out.reshape(n, oh, ow, cout)
