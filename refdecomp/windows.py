"""Sliding-window geometry shared by convolution and pooling, and the source->sink index maps
used by backtracking.

Keras/TensorFlow semantics: `valid` keeps only windows that fit; `same` gives
ceil(size / stride) outputs and pads the total shortfall with the extra cell at the bottom/right.
"""
from __future__ import annotations

import numpy as np

from .errors import InternalError


def out_size_and_pads(size: int, kernel: int, stride: int, padding: str,
                      dilation: int = 1) -> tuple[int, int, int]:
    """Return (output size, pad before, pad after) along one spatial axis."""
    span = (kernel - 1) * dilation + 1
    if padding == "valid":
        return max((size - span) // stride + 1, 0), 0, 0
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + span - size, 0)
        return out, total // 2, total - total // 2
    # the reader refuses any other padding, so reaching here is a bug
    raise InternalError(f"padding must be 'valid' or 'same', got {padding!r}")


def geometry(in_hw, kernel, strides, padding, dilation=(1, 1)):
    """Both spatial axes: ((OH, pad_top, pad_bottom), (OW, pad_left, pad_right))."""
    return tuple(out_size_and_pads(int(in_hw[a]), int(kernel[a]), int(strides[a]), padding,
                                   int(dilation[a])) for a in range(2))


def source_sink(in_hw, kernel, strides, padding, dilation=(1, 1)) -> np.ndarray:
    """For each output position (row-major) the flat input position (ih * W + iw) each kernel
    tap (row-major) reads, or -1 where the tap falls on padding. Shape (OH*OW, KH*KW), int32."""
    H, W = int(in_hw[0]), int(in_hw[1])
    (oh, pt, _), (ow, pl, _) = geometry(in_hw, kernel, strides, padding, dilation)
    ih = (np.arange(oh) * strides[0] - pt)[:, None] + np.arange(kernel[0]) * dilation[0]
    iw = (np.arange(ow) * strides[1] - pl)[:, None] + np.arange(kernel[1]) * dilation[1]
    # (oh, kh) x (ow, kw) -> (oh, ow, kh, kw)
    IH = ih[:, None, :, None]
    IW = iw[None, :, None, :]
    inside = (IH >= 0) & (IH < H) & (IW >= 0) & (IW < W)
    flat = np.where(inside, IH * W + IW, -1)
    return np.ascontiguousarray(flat.reshape(oh * ow, kernel[0] * kernel[1]), dtype=np.int32)


def sink_source(table: np.ndarray, n_inputs: int) -> tuple[np.ndarray, np.ndarray]:
    """Invert a `source_sink` table into CSR form: for input position p, the pairs
    (output position, tap) reading it are `pairs[offsets[p]:offsets[p+1]]` (int32, shape (m, 2)),
    ordered by output position then tap."""
    out_pos, tap = np.nonzero(table >= 0)
    src = table[out_pos, tap]
    order = np.argsort(src, kind="stable")
    counts = np.bincount(src, minlength=n_inputs)
    offsets = np.zeros(n_inputs + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    pairs = np.stack([out_pos[order], tap[order]], axis=1).astype(np.int32)
    return offsets, pairs
