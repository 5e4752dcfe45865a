"""Backtracking as liveness: hand-worked cases per op, and the invariant that removed nodes feed
only removed nodes (module outputs never change), on random graphs."""
from __future__ import annotations

import numpy as np
from decomp_nets import RELU, SOFTMAX, labelled_batch, quietly, random_graphs
from hypothesis import given, settings
from hypothesis import strategies as st

import refdecomp
from refdecomp.decompose.backtrack import flat_index_map, liveness, prune_masks
from refdecomp.graph import Graph, Node
from refdecomp.interpreter import Model


def _conv(name, inp, kernel, shape, stride=1, pad="valid", fmt="channels_last"):
    return Node(name, "conv2d", [inp], shape,
                {"strides": (stride, stride), "padding": pad, "dilation": (1, 1),
                 "activation": RELU, "data_format": fmt},
                {"kernel": kernel, "bias": np.zeros(kernel.shape[-1], np.float32)})


def _head(inp, fin, n=2):
    return Node("head", "dense", [inp], (n,), {"activation": SOFTMAX},
                {"kernel": np.ones((fin, n), np.float32), "bias": np.zeros(n, np.float32)})


def test_dense_zero_rows_propagate():
    k = np.array([[1, 0], [0, 0], [0, 2]], np.float32)
    g = Graph([Node("in", "input", [], (3,)),
               Node("d", "dense", ["in"], (2,), {"activation": RELU},
                    {"kernel": k, "bias": np.zeros(2, np.float32)}),
               Node("head", "dense", ["d"], (2,), {"activation": SOFTMAX},
                    {"kernel": np.array([[1, 1], [0, 0]], np.float32),
                     "bias": np.zeros(2, np.float32)})], ["in"], ["head"])
    live = liveness(g, {}, "last_conv")
    assert live["d"].tolist() == [True, False]   # unit 1 has no outgoing weight
    assert live["in"].tolist() == [True, False, False]  # only in0 reaches d0


def test_pooling_windows_and_flatten_channels_first():
    # input (C=1, 4, 4) channels_first -> maxpool 2x2 -> flatten -> head reading only flat 0
    g = Graph([Node("in", "input", [], (1, 4, 4)),
               Node("c", "conv2d", ["in"], (1, 4, 4),
                    {"strides": (1, 1), "padding": "same", "dilation": (1, 1),
                     "activation": RELU, "data_format": "channels_first"},
                    {"kernel": np.ones((1, 1, 1, 1), np.float32),
                     "bias": np.zeros(1, np.float32)}),
               Node("p", "max_pool2d", ["c"], (1, 2, 2),
                    {"pool": (2, 2), "strides": (2, 2), "padding": "valid",
                     "data_format": "channels_first"}),
               Node("f", "flatten", ["p"], (4,), {"data_format": "channels_first"}),
               Node("head", "dense", ["f"], (2,), {"activation": SOFTMAX},
                    {"kernel": np.array([[1, 1], [0, 0], [0, 0], [1, 0]], np.float32),
                     "bias": np.zeros(2, np.float32)})], ["in"], ["head"])
    live = liveness(g, {}, "input")
    assert live["p"][0].tolist() == [[True, False], [False, True]]
    want = np.zeros((4, 4), bool)
    want[:2, :2] = want[2:, 2:] = True
    assert np.array_equal(live["c"][0], want)
    assert np.array_equal(live["in"][0], want)
    # last_conv: the convolution is a barrier, its input stays live
    assert liveness(g, {}, "last_conv")["in"].all()


def test_flatten_channels_first_moves_channels_last():
    node = Node("f", "flatten", ["x"], (12,), {"data_format": "channels_first"})
    idx = np.arange(12).reshape(3, 2, 2)  # (C, H, W)
    np.testing.assert_array_equal(flat_index_map(node, (3, 2, 2)),
                                  idx.transpose(1, 2, 0).reshape(-1))


def test_conv_sinks_by_hand_and_shared_consumers():
    # 1-D like: input (1, 4, 1) -> conv 1x2 valid -> (1, 3, 1); output 0 masked away.
    k = np.ones((1, 2, 1, 1), np.float32)
    g = Graph([Node("in", "input", [], (1, 4, 1)),
               _conv("c", "in", k, (1, 3, 1)),
               Node("f", "flatten", ["c"], (3,), {"data_format": "channels_last"}),
               _head("f", 3)], ["in"], ["head"])
    live = liveness(g, {"c": np.array([[[0], [1], [1]]], np.uint8)}, "input")
    assert live["in"][0, :, 0].tolist() == [False, True, True, True]
    # a node read by two layers is dead only when dead for both
    g2 = Graph([Node("in", "input", [], (1, 4, 1)),
                _conv("a", "in", k, (1, 3, 1)),
                _conv("b", "in", k, (1, 3, 1)),
                Node("s", "add", ["a", "b"], (1, 3, 1)),
                Node("f", "flatten", ["s"], (3,), {"data_format": "channels_last"}),
                _head("f", 3)], ["in"], ["head"])
    live = liveness(g2, {"a": np.array([[[0], [0], [1]]], np.uint8),
                         "b": np.array([[[1], [0], [0]]], np.uint8)}, "input")
    assert live["in"][0, :, 0].tolist() == [True, True, True, True]
    assert live["s"][0, :, 0].tolist() == [True, True, True]


@settings(max_examples=20)
@given(g=random_graphs(), seed=st.integers(0, 10**6))
def test_pruning_never_changes_module_outputs(g, seed):
    rng = np.random.default_rng(seed)
    model = Model(g)
    x = rng.normal(size=(8, *g.input_shapes()[0])).astype(np.float32)
    masks = {n.name: (rng.random(n.shape) < 0.6).astype(np.uint8)
             for n in model.graph.nodes if n.op in ("conv2d", "dense") and n.name != "head"}
    base = model.run(x, masks=masks)[0]
    prev = masks
    for mode in ("last_conv", "input"):
        pruned = prune_masks(model.graph, masks, mode, exclude=frozenset({"head"}))
        np.testing.assert_allclose(model.run(x, masks=pruned)[0], base, rtol=1e-5, atol=1e-6)
        for name in masks:  # pruning only removes, and "input" removes at least as much
            assert not (pruned[name] & ~prev[name].astype(bool)).any()
        prev = pruned
    # input nodes found dead do not matter: perturb them
    dead_in = ~liveness(model.graph, prev, "input")["in"]
    x2 = x + dead_in * rng.normal(size=x.shape).astype(np.float32) * 10
    np.testing.assert_allclose(model.run(x2, masks=prev)[0], base, rtol=1e-5, atol=1e-6)


@settings(max_examples=10)
@given(g=random_graphs(), seed=st.integers(0, 1000))
def test_backtrack_to_input_keeps_module_outputs_of_last_conv(g, seed):
    x, y, n = labelled_batch(g, seed, 20)
    model = Model(g)
    a = quietly(refdecomp.decompose, model, x, y, backtrack="last_conv", delta=0.3, seed=seed)
    b = quietly(refdecomp.decompose, model, x, y, backtrack="input", delta=0.3, seed=seed)
    np.testing.assert_allclose(a.predict(x), b.predict(x), rtol=1e-5, atol=1e-6)
    for c in range(n):
        assert sum(int(m.sum()) for m in b[c].masks.values()) <= \
            sum(int(m.sum()) for m in a[c].masks.values())
