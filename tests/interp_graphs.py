"""Small hand-built graphs and brute-force NumPy oracles for the interpreter and kernel tests."""
from __future__ import annotations

import numpy as np

from refdecomp.graph import Graph, Node
from refdecomp.windows import geometry

LINEAR = {"name": "linear"}


def conv_node(name, src, in_shape, cout, kernel, strides=(1, 1), padding="valid",
              dilation=(1, 1), activation=LINEAR, data_format="channels_last", rng=None,
              bias=True) -> Node:
    """A conv2d node with random weights, its output shape computed from the input shape."""
    rng = rng or np.random.default_rng(0)
    cf = data_format == "channels_first"
    cin = in_shape[0] if cf else in_shape[-1]
    hw = in_shape[1:] if cf else in_shape[:2]
    (oh, _, _), (ow, _, _) = geometry(hw, kernel, strides, padding, dilation)
    shape = (cout, oh, ow) if cf else (oh, ow, cout)
    weights = {"kernel": rng.standard_normal((*kernel, cin, cout)).astype(np.float32)}
    if bias:
        weights["bias"] = rng.standard_normal(cout).astype(np.float32)
    return Node(name, "conv2d", [src], shape,
                dict(strides=tuple(strides), padding=padding, dilation=tuple(dilation),
                     activation=activation, data_format=data_format), weights, "Conv2D")


def dense_node(name, src, n_in, n_out, activation=LINEAR, rng=None, lead=()) -> Node:
    rng = rng or np.random.default_rng(0)
    return Node(name, "dense", [src], (*lead, n_out), dict(activation=activation),
                {"kernel": rng.standard_normal((n_in, n_out)).astype(np.float32),
                 "bias": rng.standard_normal(n_out).astype(np.float32)}, "Dense")


def bn_node(name, src, shape, axis, rng=None) -> Node:
    rng = rng or np.random.default_rng(0)
    c = shape[axis - 1] if axis > 0 else shape[axis]
    w = dict(gamma=rng.uniform(0.5, 2, c), beta=rng.standard_normal(c),
             moving_mean=rng.standard_normal(c), moving_variance=rng.uniform(0.5, 2, c))
    return Node(name, "batch_norm", [src], shape,
                dict(axis=(axis,), epsilon=1e-3, center=True, scale=True),
                {k: v.astype(np.float32) for k, v in w.items()}, "BatchNormalization")


def single(node: Node, in_shape) -> Graph:
    """Graph: input -> node."""
    return Graph([Node("x", "input", [], tuple(in_shape)), node], ["x"], [node.name])


def brute_conv(x, kernel, bias, strides, padding, dilation):
    """Direct-loop NHWC convolution (the textbook definition), float64."""
    n, H, W, cin = x.shape
    kh, kw, _, cout = kernel.shape
    (oh, pt, _), (ow, pl, _) = geometry((H, W), (kh, kw), strides, padding, dilation)
    out = np.zeros((n, oh, ow, cout))
    for a in range(oh):
        for b in range(ow):
            for i in range(kh):
                for j in range(kw):
                    ih = a * strides[0] - pt + i * dilation[0]
                    iw = b * strides[1] - pl + j * dilation[1]
                    if 0 <= ih < H and 0 <= iw < W:
                        out[:, a, b, :] += x[:, ih, iw, :].astype(np.float64) @ kernel[i, j]
    return out + (0 if bias is None else bias)


def brute_pool(x, pool, strides, padding, is_max):
    """Direct-loop NHWC pooling over the real (unpadded) cells of each window."""
    n, H, W, c = x.shape
    (oh, pt, _), (ow, pl, _) = geometry((H, W), pool, strides, padding)
    out = np.zeros((n, oh, ow, c), np.float64)
    for a in range(oh):
        for b in range(ow):
            cells = [x[:, ih, iw, :] for ih in range(a * strides[0] - pt,
                                                     a * strides[0] - pt + pool[0])
                     for iw in range(b * strides[1] - pl, b * strides[1] - pl + pool[1])
                     if 0 <= ih < H and 0 <= iw < W]
            stack = np.stack(cells).astype(np.float64)
            out[:, a, b, :] = stack.max(0) if is_max else stack.mean(0)
    return out
