"""NumPy executable specification of Keras's DepthwiseConv2D and SeparableConv2D.

Plain NumPy (no kernel import), written for clarity: `kernels.depthwise` is tested against it,
and it is tested against Keras. Keras semantics:

* DepthwiseConv2D: kernel (KH, KW, Cin, M), M the depth multiplier; output channel c * M + m
  is input channel c convolved with kernel[:, :, c, m] (plus bias[c * M + m]).
* SeparableConv2D: a depthwise convolution without bias (its strides, padding and dilation),
  then a 1x1 convolution with the pointwise kernel (1, 1, Cin * M, Cout) and the bias; the
  activation comes after both. As a graph: a depthwise node followed by a plain 1x1 conv2d node,
  so recording and masks apply to the pointwise output (and, if wanted, to the depthwise one).
* Window geometry (`valid` / `same`) is `refdecomp.windows`, the one place shared with the
  other reference ops and the kernels.
"""
from __future__ import annotations

import numpy as np

from ..windows import out_size_and_pads


def depthwise_conv2d(x, kernel, bias=None, strides=(1, 1), padding="valid", dilation=(1, 1),
                     data_format="channels_last") -> np.ndarray:
    """Depthwise convolution plus bias, before any activation (what recording looks at).
    x: (N, H, W, Cin) or, with channels_first, (N, Cin, H, W); kernel (KH, KW, Cin, M).
    Accumulates in float64, returns float32 in x's layout."""
    x = np.asarray(x)
    xh = x.transpose(0, 2, 3, 1) if data_format == "channels_first" else x
    kh, kw, cin, mult = kernel.shape
    if xh.shape[3] != cin:
        raise ValueError(f"kernel has {cin} input channels, x has {xh.shape[3]}")
    (oh, pt, pb), (ow, pl, pr) = (
        out_size_and_pads(xh.shape[1 + a], kernel.shape[a], strides[a], padding, dilation[a])
        for a in range(2))
    xp = np.pad(xh.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    acc = np.zeros((xh.shape[0], oh, ow, cin, mult))
    for i in range(kh if oh and ow else 0):        # no window fits: an empty output
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            window = xp[:, r0:r0 + (oh - 1) * strides[0] + 1:strides[0],
                        c0:c0 + (ow - 1) * strides[1] + 1:strides[1], :]
            acc += window[..., None] * kernel[i, j].astype(np.float64)
    y = acc.reshape(xh.shape[0], oh, ow, cin * mult)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    y = y.astype(np.float32)
    return y.transpose(0, 3, 1, 2) if data_format == "channels_first" else y


def separable_conv2d(x, depthwise_kernel, pointwise_kernel, bias=None, strides=(1, 1),
                     padding="valid", dilation=(1, 1), data_format="channels_last") -> np.ndarray:
    """SeparableConv2D before its activation: `depthwise_conv2d` (no bias), then the 1x1
    pointwise kernel (1, 1, Cin * M, Cout) and the bias."""
    d = depthwise_conv2d(x, depthwise_kernel, None, strides, padding, dilation, data_format)
    dh = d.transpose(0, 2, 3, 1) if data_format == "channels_first" else d
    y = dh.astype(np.float64) @ pointwise_kernel[0, 0].astype(np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    y = y.astype(np.float32)
    return y.transpose(0, 3, 1, 2) if data_format == "channels_first" else y
