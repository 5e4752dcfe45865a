"""Depthwise 2-D convolution (NHWC, float32) with the fused epilogue of `kernels.conv`.

Keras's DepthwiseConv2D: a kernel (KH, KW, Cin, M) (M = depth multiplier) gives Cin * M output
channels, and output channel c * M + m reads only input channel c:

    out[n, oh, ow, c*M + m] = bias[c*M + m]
        + sum_{i<KH, j<KW} x[n, oh*sh + i*dh - pt, ow*sw + j*dw - pl, c] * kernel[i, j, c, m]

(zero outside x). Per chunk of images the input is copied once into a zero-padded buffer in
which each input channel is repeated M times (so an output channel and the input it reads
share an index) and the columns of each row are split by their remainder modulo the column
stride (so the pixels that one tap reads for adjacent output pixels are adjacent). A tap over
a run of B adjacent output pixels is then one multiply-add over B * Cin * M contiguous floats
of input, weights (tiled B times) and output: a long loop without a reduction, which LLVM's
loop vectorizer turns into packed multiply-adds for any channel count, stride or dilation.
The epilogue (`kernels.epilogue`: bias, recording, activation, mask) then runs on the chunk
while it is still in cache, exactly as after `kernels.conv.Conv2D`, whose calling convention
this class shares.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..windows import geometry
from .epilogue import epilogue, recording_target
from .threads import pad_buffer, parallel_blocks

#: target size in floats of one chunk of output (images * positions * channels), as in
#: kernels.conv: an L2 cache, so the epilogue reads what the kernel has just written
CHUNK_FLOATS = 1 << 18

#: floats of one run of adjacent output pixels (at least one pixel): long enough that the
#: vector loop dominates, short enough that the tiled weights of a 3x3 kernel (9 runs) stay in
#: the L1 cache
RUN_FLOATS = 512

U = np.uint64


@njit(nogil=True, cache=True)
def pack_phased(x, img0, n_img, pt, pl, M, buf):
    """buf[n, hp, wp % S, wp // S, c*M + m] = x[img0 + n, hp - pt, wp - pl, c], 0 outside x,
    for S = buf.shape[2] (the column stride) and wp < S * Wq: the rows and columns the
    windows read (rows and columns of x beyond them are dropped; the up to S - 1 slots past the
    last column read are filled but never read)."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    Hp, S, Wq = buf.shape[1], buf.shape[2], buf.shape[3]
    for n in range(n_img):
        for hp in range(Hp):
            ih = hp - pt
            if ih < 0 or ih >= H:
                buf[n, hp] = 0.0
                continue
            for wp in range(S * Wq):
                iw = wp - pl
                dst = buf[n, hp, wp % S, wp // S]
                if iw < 0 or iw >= W:
                    dst[:] = 0.0
                elif M == 1:
                    for c in range(C):
                        dst[c] = x[img0 + n, ih, iw, c]
                else:
                    for c in range(C):
                        v = x[img0 + n, ih, iw, c]
                        for m in range(M):
                            dst[c * M + m] = v


@njit(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")
def depthwise_taps(xf, x_img, x_row, wt, toff, out, C, n_img, OH, OW, sh, B):
    """For every run of (up to) B adjacent output pixels of a row, q < (pixels in the run) * C:

        out[((n*OH + oh)*OW + ow0)*C + q] = sum_t xf[n*x_img + oh*sh*x_row + ow0*C + toff[t] + q]
                                                  * wt[t*B*C + q]

    on the flat buffer of `pack_phased` (x_img, x_row: floats per image and per padded row),
    toff[t] the offset of tap t (`tap_offsets`) and wt the kernel flattened (taps, C) and tiled
    B times per tap. The loop over q is innermost, contiguous and free of reductions, so it
    vectorises. Taps are summed nine (a 3x3 kernel), three or one at a time inside it, so the
    output is loaded and stored once per group of taps. Indices are unsigned so that Numba
    emits no negative-index wraparound."""
    T = toff.shape[0]
    LB = U(B * C)
    for n in range(n_img):
        for oh in range(OH):
            for ow0 in range(0, OW, B):
                L = U(min(B, OW - ow0) * C)
                o0 = U(((n * OH + oh) * OW + ow0) * C)
                p0 = U(n * x_img + oh * sh * x_row + ow0 * C)
                t = 0
                while t < T:
                    g = 9 if T - t >= 9 else 3 if T - t >= 3 else 1
                    _tap_group(xf, wt, out, toff, LB, L, o0, p0, t, g, t == 0)
                    t += g


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def _tap_group(xf, wt, out, toff, LB, L, o0, p0, t, g, first):
    """out[o0 + q] = (or += unless `first`) the sum over the g (9, 3 or 1) taps from t."""
    w = U(t) * LB
    q0 = p0 + toff[t]
    if g == 9:
        q1, q2, q3, q4 = p0 + toff[t + 1], p0 + toff[t + 2], p0 + toff[t + 3], p0 + toff[t + 4]
        q5, q6, q7, q8 = p0 + toff[t + 5], p0 + toff[t + 6], p0 + toff[t + 7], p0 + toff[t + 8]
        w1, w2, w3, w4 = w + LB, w + U(2) * LB, w + U(3) * LB, w + U(4) * LB
        w5, w6, w7, w8 = w + U(5) * LB, w + U(6) * LB, w + U(7) * LB, w + U(8) * LB
        if first:
            for q in range(L):
                out[o0 + q] = (xf[q0 + q] * wt[w + q] + xf[q1 + q] * wt[w1 + q]
                               + xf[q2 + q] * wt[w2 + q] + xf[q3 + q] * wt[w3 + q]
                               + xf[q4 + q] * wt[w4 + q] + xf[q5 + q] * wt[w5 + q]
                               + xf[q6 + q] * wt[w6 + q] + xf[q7 + q] * wt[w7 + q]
                               + xf[q8 + q] * wt[w8 + q])
        else:
            for q in range(L):
                out[o0 + q] += (xf[q0 + q] * wt[w + q] + xf[q1 + q] * wt[w1 + q]
                                + xf[q2 + q] * wt[w2 + q] + xf[q3 + q] * wt[w3 + q]
                                + xf[q4 + q] * wt[w4 + q] + xf[q5 + q] * wt[w5 + q]
                                + xf[q6 + q] * wt[w6 + q] + xf[q7 + q] * wt[w7 + q]
                                + xf[q8 + q] * wt[w8 + q])
    elif g == 3:
        q1, q2 = p0 + toff[t + 1], p0 + toff[t + 2]
        w1, w2 = w + LB, w + U(2) * LB
        if first:
            for q in range(L):
                out[o0 + q] = (xf[q0 + q] * wt[w + q] + xf[q1 + q] * wt[w1 + q]
                               + xf[q2 + q] * wt[w2 + q])
        else:
            for q in range(L):
                out[o0 + q] += (xf[q0 + q] * wt[w + q] + xf[q1 + q] * wt[w1 + q]
                                + xf[q2 + q] * wt[w2 + q])
    elif first:
        for q in range(L):
            out[o0 + q] = xf[q0 + q] * wt[w + q]
    else:
        for q in range(L):
            out[o0 + q] += xf[q0 + q] * wt[w + q]


def tap_offsets(kshape, dilation, sw: int, x_row: int, wq: int, channels: int) -> np.ndarray:
    """Offset of each tap (row-major) in the `pack_phased` buffer from the first float of its
    window: row i*dh, column j*dw, which lies in phase (j*dw) % sw at (j*dw) // sw."""
    (kh, kw), (dh, dw) = kshape, dilation
    return np.array([i * dh * x_row + ((j * dw) % sw * wq + (j * dw) // sw) * channels
                     for i in range(kh) for j in range(kw)], np.uint64)


class DepthwiseConv2D:
    """A depthwise convolution bound to its weights: kernel (KH, KW, Cin, M) as Keras stores
    it, bias (Cin * M,) or None; `act` an activation code tuple (`activation_code`). Call it
    like `kernels.conv.Conv2D`: (x NHWC float32, flat mask, mask position / channel strides,
    `PerThreadRecord` or bit map, its strides, group of each image) -> (N, OH, OW, Cin * M)."""

    def __init__(self, kernel, bias, strides, padding, dilation, act):
        kernel = np.asarray(kernel, dtype=np.float32)
        if kernel.ndim != 4:
            raise ValueError(f"depthwise kernel must be (KH, KW, Cin, M), got {kernel.shape}")
        kh, kw, cin, mult = kernel.shape
        self.kshape, self.cin, self.multiplier = (kh, kw), cin, mult
        self.cout = cout = cin * mult
        self.strides, self.padding, self.dilation = tuple(strides), padding, tuple(dilation)
        # (KH, KW, Cin, M) -> (taps, Cin*M): index c*M + m, the output channel order; tiled
        # over a run of `run` pixels
        self.run = max(1, RUN_FLOATS // max(cout, 1))
        flat = kernel.reshape(kh * kw, cout)
        self.tiled = np.ascontiguousarray(np.tile(flat, (1, self.run))).reshape(-1)
        self.bias = np.zeros(cout, np.float32) if bias is None else \
            np.ascontiguousarray(bias, dtype=np.float32).reshape(cout)
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
        # the input extent the windows read, its columns split into sw phases of wq
        hp, wp = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
        wq = -(-wp // sw)
        x_row = sw * wq * cout
        toff = tap_offsets(self.kshape, self.dilation, sw, x_row, wq, cout)
        per_chunk = max(1, CHUNK_FLOATS // (P * cout))

        def block(b0, b1):
            for i0 in range(b0, b1, per_chunk):
                m = min(per_chunk, b1 - i0)
                buf = pad_buffer((m, hp, sw, wq, cout))
                pack_phased(x, i0, m, pt, pl, self.multiplier, buf)
                rows = out[i0 * P:(i0 + m) * P]
                depthwise_taps(buf.reshape(-1), hp * x_row, x_row, self.tiled, toff,
                               rows.reshape(-1), cout, m, oh, ow, sh, self.run)
                epilogue(rows, self.bias, *self.act, P, mask, msp, msc, recording_target(seen),
                         ssp, ssc, groups[i0:i0 + m] if groups.shape[0] else groups)

        parallel_blocks(block, n)
        return out.reshape(n, oh, ow, cout)
