"""2-D convolution (NHWC, float32) as a register-blocked direct convolution: no im2col copy
and no BLAS. Per chunk of images the input is copied once, zero-padded and laid out (row,
channel, column) so that a block of adjacent output pixels reads adjacent floats; the
generated micro-kernels of kernels/microkernels_<isa>.py (the variant `refdecomp.kernels.isa`
chose for Numba's target CPU) compute the linear output block by block of channels, and the
fused epilogue adds bias, records, activates and masks while the chunk is still in cache."""
from __future__ import annotations

import importlib

import numpy as np
from numba import njit

from ..windows import geometry
from .epilogue import epilogue, recording_target
from .isa import ISA
from .jit import compile_vectorized
from .microkernel_source import TILES, kernel_name
from .threads import pad_buffer, parallel_blocks

#: target size in floats of one chunk of linear output (images * positions * channels): 1 MB,
#: an L2 cache, so the epilogue reads what the kernel has just written; fewer, larger chunks
#: also keep the per-chunk Python glue (which holds the GIL) from serialising the threads.
CHUNK_FLOATS = 1 << 18

#: the generated kernels of the chosen instruction set
microkernels = importlib.import_module(f"{__package__}.microkernels_{ISA}")

SIGNATURE = ("void(float32[::1], int64, int64, int64, int64, float32[::1], float32[::1], "
             + ", ".join(["int64"] * 12) + ")")


def channel_blocks(cout: int, isa: str = ISA) -> list[tuple[int, int, int]]:
    """Split output channels into (first channel, channels per block, number of blocks),
    widest micro-kernel first; with the AVX-512 tiles 64 -> [(0, 32, 2)],
    10 -> [(0, 8, 1), (8, 1, 2)]."""
    blocks, c0 = [], 0
    for cb, _ in TILES[isa]:
        nb = (cout - c0) // cb
        if nb:
            blocks.append((c0, cb, nb))
            c0 += nb * cb
    return blocks


def pack_kernel(kernel: np.ndarray, c0: int, cb: int, nb: int) -> np.ndarray:
    """Kernel (KH, KW, Cin, Cout) channels [c0, c0 + nb*cb) as a flat array laid out
    (block, KH, KW, Cin, cb): what a micro-kernel streams through for one block."""
    kh, kw, cin, _ = kernel.shape
    part = kernel[..., c0:c0 + nb * cb].reshape(kh, kw, cin, nb, cb)
    return np.ascontiguousarray(part.transpose(3, 0, 1, 2, 4), dtype=np.float32).reshape(-1)


@njit(nogil=True, cache=True)
def pack_rows(x, img0, n_img, pt, pl, buf):
    """buf[n, hp, c, wp] = x[img0 + n, hp - pt, wp - pl, c], 0 outside x: the images zero-padded
    and laid out (row, channel, column), so that adjacent output pixels read adjacent floats
    (rows or columns of x beyond buf's extent are dropped: windows never read them)."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    Hp, Wp = buf.shape[1], buf.shape[3]
    for n in range(n_img):
        for hp in range(Hp):
            ih = hp - pt
            if ih < 0 or ih >= H:
                buf[n, hp] = 0.0
                continue
            for wp in range(Wp):
                iw = wp - pl
                if iw < 0 or iw >= W:
                    for c in range(C):
                        buf[n, hp, c, wp] = 0.0
                else:
                    for c in range(C):
                        buf[n, hp, c, wp] = x[img0 + n, ih, iw, c]


class Conv2D:
    """A convolution bound to its weights; call with an NHWC float32 batch."""

    def __init__(self, kernel, bias, strides, padding, dilation, act):
        kh, kw, cin, cout = kernel.shape
        self.kshape, self.cout = (kh, kw), cout
        kernel = np.asarray(kernel, dtype=np.float32)
        self.strides, self.padding, self.dilation = tuple(strides), padding, tuple(dilation)
        self.blocks = [(c0, nb, pack_kernel(kernel, c0, cb, nb),
                        compile_vectorized(getattr(microkernels, kernel_name(cb, self.strides[1])),
                                           SIGNATURE))
                       for c0, cb, nb in channel_blocks(cout)]
        self.bias = np.zeros(cout, np.float32) if bias is None else \
            np.ascontiguousarray(bias, dtype=np.float32)
        self.act = act

    def __call__(self, x, mask, msp, msc, seen, ssp, ssc, groups):
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, H, W, cin = x.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kshape, self.strides, self.dilation
        (oh, pt, _), (ow, pl, _) = geometry((H, W), self.kshape, self.strides, self.padding,
                                            self.dilation)
        P, cout = oh * ow, self.cout
        out = np.empty((n * P, cout), np.float32)
        if n == 0 or P == 0:
            return out.reshape(n, oh, ow, cout)
        # the input extent the windows read
        hp, wp = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
        per_chunk = max(1, CHUNK_FLOATS // (P * cout))

        def block(b0, b1):
            for i0 in range(b0, b1, per_chunk):
                m = min(per_chunk, b1 - i0)
                buf = pad_buffer((m, hp, cin, wp))
                pack_rows(x, i0, m, pt, pl, buf)
                xf, x_img, x_row = buf.reshape(-1), hp * cin * wp, cin * wp
                rows = out[i0 * P:(i0 + m) * P]
                flat = rows.reshape(-1)
                for c0, nb, packed, kern in self.blocks:
                    kern(xf, x_img, x_row, wp, cin, packed, flat, cout, c0, nb, m, oh, ow,
                         kh, kw, sh, sw, dh, dw)
                epilogue(rows, self.bias, *self.act, P, mask, msp, msc, recording_target(seen),
                         ssp, ssc, groups[i0:i0 + m] if groups.shape[0] else groups)

        parallel_blocks(block, n)
        return out.reshape(n, oh, ow, cout)
