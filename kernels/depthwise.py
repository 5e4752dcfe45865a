"""Depthwise 2-D convolution (NHWC, float32) with the fused epilogue of `kernels.conv`.

Keras's DepthwiseConv2D: a kernel (KH, KW, Cin, M) (M = depth multiplier) gives Cin * M output
channels, and output channel c * M + m reads only input channel c:

    out[n, oh, ow, c*M + m] = bias[c*M + m]
        + sum_{i<KH, j<KW} x[n, oh*sh + i*dh - pt, ow*sw + j*dw - pl, c] * kernel[i, j, c, m]

(zero outside x). Per chunk of images the input is copied once into a zero-padded buffer laid
out (image, row, column, output channel), each input channel repeated M times, so every tap
of every output pixel is one multiply-add over Cin * M contiguous floats of input, weights
and output: a loop without a reduction that LLVM's loop vectorizer turns into packed
multiply-adds for any channel count (a scalar loop finishes a remainder). The epilogue
(`kernels.epilogue`: bias, recording, activation, mask) then runs on the chunk while it is
still in cache, exactly as after `kernels.conv.Conv2D`, whose calling convention this class
shares.
"""
from __future__ import annotations

import threading

import numpy as np
from numba import njit

from .epilogue import epilogue, recording_target
from .threads import parallel_blocks
from .windows import geometry

#: target size in floats of one chunk of output (images * positions * channels), as in
#: kernels.conv: an L2 cache, so the epilogue reads what the kernel has just written
CHUNK_FLOATS = 1 << 18

U = np.uint64


@njit(nogil=True, cache=True)
def pack_expanded(x, img0, n_img, pt, pl, M, buf):
    """buf[n, hp, wp, c*M + m] = x[img0 + n, hp - pt, wp - pl, c], 0 outside x: the images
    zero-padded, each input channel repeated M times so that an output channel and the input
    it reads share an index (rows or columns beyond buf's extent are never read: dropped)."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    Hp, Wp = buf.shape[1], buf.shape[2]
    for n in range(n_img):
        for hp in range(Hp):
            ih = hp - pt
            if ih < 0 or ih >= H:
                buf[n, hp] = 0.0
                continue
            for wp in range(Wp):
                iw = wp - pl
                row = buf[n, hp, wp]
                if iw < 0 or iw >= W:
                    row[:] = 0.0
                elif M == 1:
                    for c in range(C):
                        row[c] = x[img0 + n, ih, iw, c]
                else:
                    for c in range(C):
                        v = x[img0 + n, ih, iw, c]
                        for m in range(M):
                            row[c * M + m] = v


@njit(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")
def depthwise_taps(xf, x_img, x_row, wf, toff, out, C, n_img, OH, OW, sh, sw):
    """out[(n*OH + oh)*OW + ow, o] = sum_t xf[n*x_img + oh*sh*x_row + ow*sw*C + toff[t] + o]
    * wf[t*C + o] for o < C, on the flat buffer of `pack_expanded` (x_img, x_row: floats per
    image and per row), the kernel flattened (taps, C) and toff[t] the buffer offset of tap t.

    The loop over o is innermost, contiguous and free of reductions, so it vectorises. Taps are
    summed nine (a 3x3 kernel), three or one at a time inside that loop, so an output vector is
    loaded and stored once per group, not once per tap. Indices are unsigned so that Numba
    emits no negative-index wraparound."""
    Cu = U(C)
    T = toff.shape[0]
    for n in range(n_img):
        for oh in range(OH):
            for ow in range(OW):
                o0 = U(((n * OH + oh) * OW + ow) * C)
                p0 = U(n * x_img + oh * sh * x_row + ow * sw * C)
                t = 0
                while t < T:
                    g = 9 if T - t >= 9 else 3 if T - t >= 3 else 1
                    _tap_group(xf, wf, out, toff, Cu, o0, p0, t, g, t == 0)
                    t += g


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def _tap_group(xf, wf, out, toff, Cu, o0, p0, t, g, first):
    """out[o0 + o] = (or += unless `first`) the sum over the g (9, 3 or 1) taps from t."""
    w = U(t) * Cu
    q0 = p0 + toff[t]
    if g == 9:
        q1, q2, q3, q4 = p0 + toff[t + 1], p0 + toff[t + 2], p0 + toff[t + 3], p0 + toff[t + 4]
        q5, q6, q7, q8 = p0 + toff[t + 5], p0 + toff[t + 6], p0 + toff[t + 7], p0 + toff[t + 8]
        w1, w2, w3, w4 = w + Cu, w + U(2) * Cu, w + U(3) * Cu, w + U(4) * Cu
        w5, w6, w7, w8 = w + U(5) * Cu, w + U(6) * Cu, w + U(7) * Cu, w + U(8) * Cu
        if first:
            for o in range(Cu):
                out[o0 + o] = (xf[q0 + o] * wf[w + o] + xf[q1 + o] * wf[w1 + o]
                               + xf[q2 + o] * wf[w2 + o] + xf[q3 + o] * wf[w3 + o]
                               + xf[q4 + o] * wf[w4 + o] + xf[q5 + o] * wf[w5 + o]
                               + xf[q6 + o] * wf[w6 + o] + xf[q7 + o] * wf[w7 + o]
                               + xf[q8 + o] * wf[w8 + o])
        else:
            for o in range(Cu):
                out[o0 + o] += (xf[q0 + o] * wf[w + o] + xf[q1 + o] * wf[w1 + o]
                                + xf[q2 + o] * wf[w2 + o] + xf[q3 + o] * wf[w3 + o]
                                + xf[q4 + o] * wf[w4 + o] + xf[q5 + o] * wf[w5 + o]
                                + xf[q6 + o] * wf[w6 + o] + xf[q7 + o] * wf[w7 + o]
                                + xf[q8 + o] * wf[w8 + o])
    elif g == 3:
        q1, q2 = p0 + toff[t + 1], p0 + toff[t + 2]
        w1, w2 = w + Cu, w + U(2) * Cu
        if first:
            for o in range(Cu):
                out[o0 + o] = (xf[q0 + o] * wf[w + o] + xf[q1 + o] * wf[w1 + o]
                               + xf[q2 + o] * wf[w2 + o])
        else:
            for o in range(Cu):
                out[o0 + o] += (xf[q0 + o] * wf[w + o] + xf[q1 + o] * wf[w1 + o]
                                + xf[q2 + o] * wf[w2 + o])
    elif first:
        for o in range(Cu):
            out[o0 + o] = xf[q0 + o] * wf[w + o]
    else:
        for o in range(Cu):
            out[o0 + o] += xf[q0 + o] * wf[w + o]


def tap_offsets(kshape, dilation, x_row: int, channels: int) -> np.ndarray:
    """Offset of each tap (row-major) in the padded buffer from its window's first float."""
    (kh, kw), (dh, dw) = kshape, dilation
    return np.array([i * dh * x_row + j * dw * channels for i in range(kh) for j in range(kw)],
                    np.uint64)


_BUFFERS = threading.local()


def _pad_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """This thread's reused padding buffer (layers run one after another within a thread)."""
    size = int(np.prod(shape))
    buf = getattr(_BUFFERS, "pad", None)
    if buf is None or buf.size < size:
        buf = _BUFFERS.pad = np.empty(size, np.float32)
    return buf[:size].reshape(shape)


class DepthwiseConv2D:
    """A depthwise convolution bound to its weights: kernel (KH, KW, Cin, M) as Keras stores
    it, bias (Cin * M,) or None; `act` an activation code tuple (`activation_code`). Call it
    like `kernels.conv.Conv2D`: (x NHWC float32, flat mask, mask position / channel strides,
    bit map or `PerThreadCounts`, its strides, group of each image) -> (N, OH, OW, Cin * M)."""

    def __init__(self, kernel, bias, strides, padding, dilation, act):
        kernel = np.asarray(kernel, dtype=np.float32)
        if kernel.ndim != 4:
            raise ValueError(f"depthwise kernel must be (KH, KW, Cin, M), got {kernel.shape}")
        kh, kw, cin, mult = kernel.shape
        self.kshape, self.cin, self.multiplier = (kh, kw), cin, mult
        self.cout = cin * mult
        # (KH, KW, Cin, M) -> (KH, KW, Cin*M): index c*M + m, the output channel order
        self.weights = np.ascontiguousarray(kernel.reshape(-1))
        self.strides, self.padding, self.dilation = tuple(strides), padding, tuple(dilation)
        self.bias = np.zeros(self.cout, np.float32) if bias is None else \
            np.ascontiguousarray(bias, dtype=np.float32).reshape(self.cout)
        self.act = act

    def __call__(self, x, mask, msp, msc, seen, ssp, ssc, groups):
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, H, W, cin = x.shape
        if cin != self.cin:
            raise ValueError(f"depthwise kernel expects {self.cin} input channels, got {cin}")
        (kh, kw), (sh, sw), (dh, dw) = self.kshape, self.strides, self.dilation
        (oh, pt, _), (ow, pl, _) = geometry((H, W), self.kshape, self.strides, self.padding,
                                            self.dilation)
        P, cout = oh * ow, self.cout
        out = np.empty((n * P, cout), np.float32)
        if n == 0 or P == 0 or cout == 0:
            return out.reshape(n, oh, ow, cout)
        # the input extent the windows read
        hp, wp = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
        per_chunk = max(1, CHUNK_FLOATS // (P * cout))
        toff = tap_offsets(self.kshape, self.dilation, wp * cout, cout)

        def block(b0, b1):
            for i0 in range(b0, b1, per_chunk):
                m = min(per_chunk, b1 - i0)
                buf = _pad_buffer((m, hp, wp, cout))
                pack_expanded(x, i0, m, pt, pl, self.multiplier, buf)
                rows = out[i0 * P:(i0 + m) * P]
                depthwise_taps(buf.reshape(-1), hp * wp * cout, wp * cout, self.weights, toff,
                               rows.reshape(-1), cout, m, oh, ow, sh, sw)
                epilogue(rows, self.bias, *self.act, P, mask, msp, msc, recording_target(seen),
                         ssp, ssc, groups[i0:i0 + m] if groups.shape[0] else groups)

        parallel_blocks(block, n)
        return out.reshape(n, oh, ow, cout)
