"""Small graphs for the decomposition tests: a hypothesis strategy of random CNN graphs built
directly from `refdecomp.graph.Node`, and a brute-force NumPy forward pass used as the oracle
of pre-activation values (loops over output positions; nothing shared with the interpreter)."""
from __future__ import annotations

import warnings

import numpy as np
from hypothesis import strategies as st

from refdecomp.graph import Graph, Node

RELU = {"name": "relu"}
SOFTMAX = {"name": "softmax", "axis": -1}


def out_size(size, k, s, pad):
    if pad == "valid":
        return (size - k) // s + 1
    return -(-size // s)


@st.composite
def random_graphs(draw, n_classes=None, max_blocks=3):
    """A random channels_last CNN: conv / residual add / pooling blocks, flatten or global
    pooling, an optional hidden dense layer and a softmax head. Weights are random with some
    exact zeros (to exercise the zero-weight rules)."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    h = draw(st.integers(5, 9))
    w = draw(st.integers(5, 9))
    c = draw(st.integers(1, 3))
    nodes = [Node("in", "input", [], (h, w, c), {"dtype": "float32"})]
    cur, shape = "in", (h, w, c)

    def weights(*shape_):
        a = rng.normal(size=shape_).astype(np.float32)
        a[rng.random(shape_) < 0.15] = 0.0
        return a

    def add(node):
        nonlocal cur, shape
        nodes.append(node)
        cur, shape = node.name, node.shape

    for b in range(draw(st.integers(1, max_blocks))):
        kind = draw(st.sampled_from(["conv", "res", "pool"]))
        H, W, C = shape
        if kind == "conv":
            k = draw(st.integers(1, min(3, H, W)))
            s = draw(st.integers(1, 2))
            pad = draw(st.sampled_from(["valid", "same"]))
            cout = draw(st.integers(1, 4))
            oh, ow = out_size(H, k, s, pad), out_size(W, k, s, pad)
            add(Node(f"conv{b}", "conv2d", [cur], (oh, ow, cout),
                     {"strides": (s, s), "padding": pad, "dilation": (1, 1),
                      "activation": RELU, "data_format": "channels_last"},
                     {"kernel": weights(k, k, C, cout), "bias": weights(cout) * 0.3}))
        elif kind == "res":
            start = cur
            add(Node(f"rconv{b}", "conv2d", [cur], (H, W, C),
                     {"strides": (1, 1), "padding": "same", "dilation": (1, 1),
                      "activation": RELU, "data_format": "channels_last"},
                     {"kernel": weights(3, 3, C, C), "bias": weights(C) * 0.3}))
            add(Node(f"add{b}", "add", [start, cur], (H, W, C)))
            add(Node(f"relu{b}", "activation", [cur], (H, W, C), {"activation": RELU}))
        elif min(H, W) >= 2:
            op = draw(st.sampled_from(["max_pool2d", "avg_pool2d"]))
            add(Node(f"pool{b}", op, [cur], (H // 2, W // 2, C),
                     {"pool": (2, 2), "strides": (2, 2), "padding": "valid",
                      "data_format": "channels_last"}))
    if draw(st.booleans()):
        add(Node("flat", "flatten", [cur], (int(np.prod(shape)),),
                 {"data_format": "channels_last"}))
    else:
        add(Node("gap", "global_avg_pool2d", [cur], (shape[-1],),
                 {"data_format": "channels_last", "keepdims": False}))
    if draw(st.booleans()):
        units = draw(st.integers(2, 8))
        add(Node("hidden", "dense", [cur], (units,), {"activation": RELU},
                 {"kernel": weights(shape[0], units), "bias": weights(units) * 0.3}))
    n = n_classes or draw(st.integers(2, 4))
    add(Node("head", "dense", [cur], (n,), {"activation": SOFTMAX},
             {"kernel": weights(shape[0], n), "bias": weights(n) * 0.3}))
    return Graph(nodes, ["in"], ["head"])


# -- data ---------------------------------------------------------------------------------------
def labelled_batch(graph: Graph, seed: int, size: int):
    """(x, y, n): `size` standard-normal float32 inputs for `graph` and uniform random labels
    over its `n` head classes, drawn in that order from `seed`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size, *graph.input_shapes()[0])).astype(np.float32)
    n = graph["head"].shape[0]
    return x, rng.integers(0, n, size=size), n


def quietly(fn, *args, **kwargs):
    """fn(*args, **kwargs) with warnings silenced: random labels on small batches leave classes
    without images or short of tangling inputs, which the decomposition warns about by design."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# -- brute-force forward ----------------------------------------------------------------------
def _pads(size, k, s, pad):
    if pad == "valid":
        return 0
    total = max((out_size(size, k, s, pad) - 1) * s + k - size, 0)
    return total // 2


def forward(graph: Graph, x: np.ndarray):
    """(values, pre): post-activation value of every node and pre-activation value of every
    conv2d / dense node, for a batch `x`, computed with explicit loops."""
    vals, pre = {}, {}
    for n in graph.nodes:
        a = [vals[i] for i in n.inputs]
        if n.op == "input":
            v = x.astype(np.float64)
        elif n.op == "conv2d":
            k = n.weights["kernel"].astype(np.float64)
            kh, kw, _, cout = k.shape
            s = n.attrs["strides"][0]
            pad = n.attrs["padding"]
            inp = a[0]
            H, W = inp.shape[1:3]
            oh, ow = n.shape[:2]
            pt, pl = _pads(H, kh, s, pad), _pads(W, kw, s, pad)
            z = np.zeros((len(x), oh, ow, cout))
            for i in range(oh):
                for j in range(ow):
                    for di in range(kh):
                        for dj in range(kw):
                            r, c = i * s - pt + di, j * s - pl + dj
                            if 0 <= r < H and 0 <= c < W:
                                z[:, i, j] += inp[:, r, c] @ k[di, dj]
            z += n.weights["bias"]
            pre[n.name] = z
            v = np.maximum(z, 0) if n.activation["name"] == "relu" else z
        elif n.op == "dense":
            z = a[0] @ n.weights["kernel"].astype(np.float64) + n.weights["bias"]
            pre[n.name] = z
            name = n.activation["name"]
            if name == "relu":
                v = np.maximum(z, 0)
            elif name == "softmax":
                e = np.exp(z - z.max(axis=1, keepdims=True))
                v = e / e.sum(axis=1, keepdims=True)
            else:
                v = z
        elif n.op in ("max_pool2d", "avg_pool2d"):
            inp = a[0]
            oh, ow = n.shape[:2]
            win = np.stack([inp[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2] for i in range(oh)
                            for j in range(ow)], axis=1)
            red = win.max(axis=(2, 3)) if n.op == "max_pool2d" else win.mean(axis=(2, 3))
            v = red.reshape(len(x), oh, ow, -1)
        elif n.op == "add":
            v = a[0] + a[1]
        elif n.op == "activation":
            v = np.maximum(a[0], 0)
        elif n.op == "flatten":
            v = a[0].reshape(len(x), -1)
        elif n.op == "global_avg_pool2d":
            v = a[0].mean(axis=(1, 2))
        else:
            raise NotImplementedError(n.op)
        vals[n.name] = v
    return vals, pre
