"""The op contract, in the spirit of scikit-learn's check_estimator: every registered op
(`refdecomp.ops.registry`) has every rule, and each rule agrees with the op's NumPy reference
on random inputs.

Oracles: the reference itself (shape, kernel lowering, batch-norm folding), perturbation of
the inputs a rule says do not matter (liveness, kept maps, kept weights: the outputs it says
depend on nothing else must not move), the uncompacted graph (compaction), refdecomp's reader
and Keras 3 (export). An op without an entry in EXAMPLES fails `test_every_op_has_examples`.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from refdecomp.compact import compact_graph
from refdecomp.export import export_keras
from refdecomp.graph import Graph, Node
from refdecomp.interpreter import Model
from refdecomp.ops import registry
from refdecomp.ops.channels import Barrier
from refdecomp.reader import read_graph
from refdecomp.reader.shapes import output_shape

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RELU = {"name": "relu", "max_value": None, "negative_slope": 0.0, "threshold": 0.0}
RELU6 = {"name": "relu", "max_value": 6.0, "negative_slope": 0.0, "threshold": 0.0}


def _w(rng, *shape, positive=False):
    a = rng.standard_normal(shape).astype(np.float32)
    return np.abs(a) + np.float32(0.1) if positive else a


def _sparse(rng, *shape):
    """Weights with about a third exact zeros (so the zero-weight rules are exercised)."""
    a = _w(rng, *shape)
    return np.where(rng.random(shape) < 0.35, np.float32(0), a).astype(np.float32)


# op -> list of example factories rng -> (attrs, weights, input shapes (no batch axis))
EXAMPLES = {
    "conv2d": [
        lambda r: ({"strides": (1, 1), "padding": "same", "dilation": (1, 1), "activation": RELU,
                    "data_format": "channels_last"},
                   {"kernel": _sparse(r, 3, 3, 3, 4), "bias": _w(r, 4)}, [(6, 5, 3)]),
        lambda r: ({"strides": (2, 1), "padding": "valid", "dilation": (1, 1),
                    "activation": {"name": "linear"}, "data_format": "channels_first"},
                   {"kernel": _sparse(r, 2, 3, 2, 3)}, [(2, 7, 6)]),
        lambda r: ({"strides": (1, 1), "padding": "same", "dilation": (2, 2),
                    "activation": {"name": "tanh"}, "data_format": "channels_last"},
                   {"kernel": _sparse(r, 3, 3, 2, 2), "bias": _w(r, 2)}, [(7, 7, 2)]),
    ],
    "depthwise_conv2d": [
        lambda r: ({"strides": (1, 1), "padding": "same", "dilation": (1, 1), "activation": RELU6,
                    "data_format": "channels_last"},
                   {"kernel": _sparse(r, 3, 3, 3, 2), "bias": _w(r, 6)}, [(5, 6, 3)]),
        lambda r: ({"strides": (2, 2), "padding": "valid", "dilation": (1, 1),
                    "activation": {"name": "linear"}, "data_format": "channels_first"},
                   {"kernel": _sparse(r, 3, 2, 4, 1)}, [(4, 7, 6)]),
        lambda r: ({"strides": (1, 1), "padding": "same", "dilation": (2, 1),
                    "activation": {"name": "relu6"}, "data_format": "channels_last"},
                   {"kernel": _sparse(r, 3, 3, 2, 3), "bias": _w(r, 6)}, [(6, 5, 2)]),
    ],
    "upsample2d": [
        lambda r: ({"size": (2, 3), "data_format": "channels_last"}, {}, [(3, 2, 4)]),
        lambda r: ({"size": (2, 2), "data_format": "channels_first"}, {}, [(3, 2, 3)]),
    ],
    "dense": [
        lambda r: ({"activation": {"name": "tanh"}},
                   {"kernel": _sparse(r, 6, 5), "bias": _w(r, 5)}, [(6,)]),
        lambda r: ({"activation": RELU}, {"kernel": _sparse(r, 3, 4), "bias": _w(r, 4)},
                   [(2, 3)]),
    ],
    "max_pool2d": [
        lambda r: ({"pool": (2, 2), "strides": (2, 2), "padding": "valid",
                    "data_format": "channels_last"}, {}, [(5, 4, 3)]),
        lambda r: ({"pool": (3, 2), "strides": (1, 2), "padding": "same",
                    "data_format": "channels_first"}, {}, [(2, 5, 5)]),
    ],
    "avg_pool2d": [
        lambda r: ({"pool": (2, 2), "strides": (1, 1), "padding": "same",
                    "data_format": "channels_last"}, {}, [(4, 5, 3)]),
    ],
    "global_avg_pool2d": [
        lambda r: ({"data_format": "channels_last", "keepdims": False}, {}, [(3, 4, 5)]),
        lambda r: ({"data_format": "channels_first", "keepdims": True}, {}, [(3, 4, 2)]),
    ],
    "global_max_pool2d": [
        lambda r: ({"data_format": "channels_last", "keepdims": False}, {}, [(3, 4, 5)]),
    ],
    "flatten": [
        lambda r: ({"data_format": "channels_last"}, {}, [(3, 2, 4)]),
        lambda r: ({"data_format": "channels_first"}, {}, [(4, 3, 2)]),
    ],
    "reshape": [lambda r: ({"target_shape": (-1, 6)}, {}, [(4, 3, 2)])],
    "zero_pad2d": [
        lambda r: ({"padding": ((1, 0), (2, 1)), "data_format": "channels_last"}, {},
                   [(3, 4, 2)]),
        lambda r: ({"padding": ((0, 2), (1, 1)), "data_format": "channels_first"}, {},
                   [(2, 3, 3)]),
    ],
    "add": [lambda r: ({}, {}, [(4, 4, 3), (4, 4, 3)])],
    "concatenate": [lambda r: ({"axis": -1}, {}, [(4, 4, 2), (4, 4, 3)]),
                    lambda r: ({"axis": 1}, {}, [(2, 3, 3), (3, 3, 3)])],
    "activation": [
        lambda r: ({"activation": RELU6}, {}, [(4, 4, 3)]),
        lambda r: ({"activation": {"name": "relu6"}}, {}, [(5,)]),
        lambda r: ({"activation": {"name": "sigmoid"}}, {}, [(3, 3, 2)]),
        lambda r: ({"activation": {"name": "softmax", "axis": -1}}, {}, [(6,)]),
    ],
    "prelu": [lambda r: ({"shared_axes": (1, 2)}, {"alpha": _w(r, 1, 1, 3)}, [(4, 4, 3)])],
    "softmax": [lambda r: ({"axis": -1}, {}, [(3, 5)])],
    "batch_norm": [
        lambda r: ({"axis": (3,), "epsilon": 1e-3, "center": True, "scale": True},
                   {"gamma": _w(r, 3), "beta": _w(r, 3), "moving_mean": _w(r, 3),
                    "moving_variance": _w(r, 3, positive=True)}, [(4, 4, 3)]),
    ],
    "rescaling": [lambda r: ({"scale": 0.5, "offset": 0.25}, {}, [(3, 3, 2)])],
    "normalization": [
        lambda r: ({"axis": (3,)}, {"mean": _w(r, 1, 1, 3),
                                    "variance": _w(r, 1, 1, 3, positive=True)}, [(4, 4, 3)]),
    ],
    "identity": [lambda r: ({}, {}, [(3, 3, 2)])],
    "channel_logsumexp": [lambda r: ({"class_index": 2}, {}, [(5,)])],
}

CASES = [(op, i) for op, examples in EXAMPLES.items() for i in range(len(examples))]
IDS = [f"{op}-{i}" for op, i in CASES]


def _instance(op: str, i: int, seed: int = 0):
    """(node, graph with the node reading input nodes, batch of inputs) of example i."""
    rng = np.random.default_rng(seed)
    attrs, weights, in_shapes = EXAMPLES[op][i](rng)
    inputs = [Node(f"x{k}", "input", [], s, {"dtype": "float32"}) for k, s in enumerate(in_shapes)]
    shape = output_shape(op, attrs, weights, list(in_shapes))
    node = Node(op, op, [n.name for n in inputs], shape, attrs, weights, keras_class=op)
    graph = Graph([*inputs, node], [n.name for n in inputs], [node.name], name=f"{op}_{i}")
    xs = [rng.standard_normal((3, *s)).astype(np.float32) for s in in_shapes]
    return node, graph, xs, rng


def _perturbed(xs, dead, rng):
    """Inputs changed (by finite amounts) exactly where `dead`."""
    return [np.where(d[None], x + rng.standard_normal(x.shape).astype(np.float32) * 3, x)
            for x, d in zip(xs, dead)]


# --------------------------------------------------------------------------------------------
def test_every_op_has_examples_and_rules():
    names = {s.name for s in registry.ops()} - {"input"}
    assert names == set(EXAMPLES), "every registered op needs examples here"
    for s in registry.ops():
        for rule in ("shape", "reference", "export"):
            assert callable(getattr(s, rule)), (s.name, rule)
        assert s.name == "input" or callable(s.liveness), s.name
        assert isinstance(s.compaction, Barrier), s.name
        for cls, reader in s.keras.items():
            assert callable(reader.normalise) and callable(reader.roles), (s.name, cls)
        if s.weighted:
            for rule in ("linear", "channel_axis", "scale_outputs", "used_weights", "macs"):
                assert callable(getattr(s, rule)), (s.name, rule)
    assert registry.weighted_ops() >= {"conv2d", "dense"}


def test_listing_names_every_op(capsys):
    from refdecomp.ops.__main__ import main

    main()
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]
              if line and not line.startswith(" ")}
    assert listed == {s.name for s in registry.ops()}


@pytest.mark.parametrize("op, i", CASES, ids=IDS)
def test_shape_rule_matches_reference(op, i):
    node, _, xs, _ = _instance(op, i)
    y = node.spec.reference(node, xs)
    assert y.shape[1:] == node.shape and y.dtype == np.float32


@pytest.mark.parametrize("op, i", [c for c in CASES if registry.spec(c[0]).lowering],
                         ids=[f"{op}-{i}" for op, i in CASES if registry.spec(op).lowering])
def test_lowering_matches_reference(op, i):
    from refdecomp.ops.lowering import LOWERINGS

    node, _, xs, rng = _instance(op, i)
    want = node.spec.reference(node, xs)
    mask = seen = groups = None
    if node.weighted:      # masks and recording ("value before the activation > 0" per group)
        mask = (rng.random(node.shape) < 0.7).astype(np.uint8)
        want = want * mask
        seen = np.zeros((2, *node.shape), np.uint8)
        groups = np.array([0, 1, 0], np.int32)
    got = LOWERINGS[node.spec.lowering](node)(xs, mask, seen, groups)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if node.weighted:
        pre = node.spec.linear(node, xs[0]) > 0
        np.testing.assert_array_equal(seen[0], pre[[0, 2]].any(axis=0))
        np.testing.assert_array_equal(seen[1], pre[1])


@pytest.mark.parametrize("mode", ["last_conv", "input"])
@pytest.mark.parametrize("op, i", CASES, ids=IDS)
def test_liveness_rule_is_sound(op, i, mode):
    """Changing inputs the rule calls dead changes no live output."""
    node, _, xs, rng = _instance(op, i)
    for trial in range(3):
        live_out = rng.random(node.shape) < (0.3 if trial else 0.05)
        live_in = node.spec.liveness(node, live_out, [x.shape[1:] for x in xs], mode)
        assert [a.shape for a in live_in] == [x.shape[1:] for x in xs]
        before = node.spec.reference(node, xs)
        after = node.spec.reference(node, _perturbed(xs, [~a for a in live_in], rng))
        np.testing.assert_allclose(after[:, live_out], before[:, live_out], rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize("op, i", [c for c in CASES if registry.spec(c[0]).kept],
                         ids=[f"{op}-{i}" for op, i in CASES if registry.spec(op).kept])
def test_kept_rule_is_sound(op, i):
    """An output the metrics count as kept reads only kept inputs."""
    node, _, xs, rng = _instance(op, i)
    kin = rng.random(xs[0].shape[1:]) < 0.5
    kout = node.spec.kept(node, kin, xs[0].shape[1:])
    if kout is None:
        return
    assert kout.shape == node.shape
    before = node.spec.reference(node, xs)
    after = node.spec.reference(node, _perturbed(xs, [~kin], rng))
    np.testing.assert_allclose(after[:, kout], before[:, kout], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op, i", [c for c in CASES if registry.spec(c[0]).weighted],
                         ids=[f"{op}-{i}" for op, i in CASES if registry.spec(op).weighted])
def test_weighted_rules(op, i):
    node, _, xs, rng = _instance(op, i)
    s = node.spec
    axis = s.channel_axis(node)
    n_out = node.shape[axis]
    assert node.weights["kernel"].shape[-1] * (node.weights["kernel"].shape[2]
                                               if op == "depthwise_conv2d" else 1) == n_out
    assert s.macs(node) > 0
    # kept weights: zeroing the others changes no kept output when unkept inputs are zero
    kin = rng.random(xs[0].shape[1:]) < 0.6
    kout = rng.random(node.shape) < 0.5
    used = s.used_weights(node, kin, kout)
    assert used.shape == node.weights["kernel"].shape
    x0 = np.where(kin[None], xs[0], 0).astype(np.float32)
    pruned = node.replace(weights={**node.weights,
                                   "kernel": np.where(used, node.weights["kernel"], 0)})
    np.testing.assert_allclose(s.linear(pruned, x0)[:, kout], s.linear(node, x0)[:, kout],
                               rtol=1e-5, atol=1e-5)
    # batch-norm folding: scaled weights give y * scale + shift per output channel
    scale, shift = _w(rng, n_out), _w(rng, n_out)
    bshape = [1] * (len(node.shape) + 1)
    bshape[axis + 1] = n_out
    folded = node.replace(weights=s.scale_outputs(node, scale, shift))
    np.testing.assert_allclose(s.linear(folded, xs[0]),
                               s.linear(node, xs[0]) * scale.reshape(bshape)
                               + shift.reshape(bshape), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op, i", [c for c in CASES if registry.spec(c[0]).units],
                         ids=[f"{op}-{i}" for op, i in CASES if registry.spec(op).units])
def test_unit_flow_rule(op, i):
    """Auditing's unit flow: an output element labelled with input channel c changes only
    with channel c, and is 0 when channel c is 0 if the rule says a zero stays zero."""
    node, graph, xs, rng = _instance(op, i)
    shape = xs[0].shape[1:]
    axis = (0 if node.attrs.get("data_format") == "channels_first" else 2) \
        if len(shape) == 3 else len(shape) - 1
    units = np.broadcast_to(np.arange(shape[axis]).reshape(
        [-1 if a == axis else 1 for a in range(len(shape))]), shape)
    flow = node.spec.units(node, units, node.inputs[0], graph)
    if flow is None:
        return
    labels, keeps_zero = flow
    assert labels.shape == node.shape
    c = 0
    other = (labels >= 0) & (labels != c)
    zeroed = [np.where(units[None] == c, 0, xs[0]).astype(np.float32), *xs[1:]]
    y0 = node.spec.reference(node, zeroed)
    y1 = node.spec.reference(node, _perturbed(zeroed, [units == c] + [np.zeros(x.shape[1:], bool)
                                                                    for x in xs[1:]], rng))
    np.testing.assert_allclose(y1[:, other], y0[:, other], rtol=1e-6, atol=1e-6)
    if keeps_zero:
        assert (y0[:, labels == c] == 0).all()


# -- compaction: producers with whole channels masked, the op, a consumer -----------------------
def _producer(name: str, src: Node, rng, fmt: str):
    """A weighted node (1x1 conv2d or dense) of the same shape as `src`, reading `src`."""
    if len(src.shape) == 3:
        c = src.shape[0] if fmt == "channels_first" else src.shape[-1]
        return Node(name, "conv2d", [src.name], src.shape,
                    {"strides": (1, 1), "padding": "valid", "dilation": (1, 1),
                     "activation": RELU, "data_format": fmt},
                    {"kernel": _w(rng, 1, 1, c, c), "bias": _w(rng, c)})
    c = src.shape[-1]
    return Node(name, "dense", [src.name], src.shape, {"activation": RELU},
                {"kernel": _w(rng, c, c), "bias": _w(rng, c)})


def _channel_mask(node: Node, rng) -> np.ndarray:
    axis = node.spec.channel_axis(node)
    gone = rng.random(node.shape[axis]) < 0.5
    keep = np.ones(node.shape, np.uint8)
    np.moveaxis(keep, axis, -1)[..., gone] = 0
    return keep


@pytest.mark.parametrize("op_is_output", [False, True])
@pytest.mark.parametrize("op, i", CASES, ids=IDS)
def test_compaction_rule_is_exact(op, i, op_is_output):
    """Dropping the channels the compaction rules allow changes no output (with the op's
    output also a graph output, which keeps its shape, its inputs keep what it reads)."""
    node, graph, xs, rng = _instance(op, i)
    fmt = node.attrs.get("data_format", "channels_last")
    inputs = [graph[n] for n in graph.inputs]
    prods = [_producer(f"p{k}", x, rng, fmt) for k, x in enumerate(inputs)]
    mid = node.replace(inputs=[p.name for p in prods])
    out_fmt = fmt if len(node.shape) == 3 else "channels_last"
    consumer = _producer("consumer", mid, rng, out_fmt)
    g = Graph([*inputs, *prods, mid, consumer], list(graph.inputs),
              ["consumer", mid.name] if op_is_output else ["consumer"])
    masks = {p.name: _channel_mask(p, rng) for p in prods}
    if node.weighted:
        masks[node.name] = _channel_mask(node, rng)
    small, small_masks = compact_graph(g, masks)
    want = Model(g, fold=False, engine="reference").run(xs, masks=masks)
    got = Model(small, fold=False, engine="reference").run(xs, masks=small_masks)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# -- export ---------------------------------------------------------------------------------
#: examples the reader can read back: an op that refdecomp reads from Keras, in channels_last
#: (a channels_first Conv2D or pooling is exported between Permute layers, which the reader
#: does not read)
READABLE = [(op, i) for op, i in CASES if registry.spec(op).keras
            and _instance(op, i)[0].attrs.get("data_format") != "channels_first"]


@pytest.mark.parametrize("op, i", READABLE, ids=[f"{op}-{i}" for op, i in READABLE])
def test_export_reads_back(op, i, tmp_path):
    """The export, read by refdecomp's reader, computes the reference."""
    node, graph, xs, _ = _instance(op, i)
    path = export_keras(graph, tmp_path / "m.h5", fold=False)
    want = node.spec.reference(node, xs)
    got = Model(read_graph(path), engine="reference").run(xs)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op, i", CASES, ids=IDS)
def test_export_matches_keras3(op, i, tmp_path, keras3):
    from refdecomp import keras_objects

    node, graph, xs, _ = _instance(op, i)
    path = export_keras(graph, tmp_path / "m.h5", fold=False)
    model = keras3.models.load_model(str(path), custom_objects=keras_objects(backend="keras"),
                                     compile=False)
    got = np.asarray(model(xs, training=False))
    np.testing.assert_allclose(got, node.spec.reference(node, xs), rtol=1e-4, atol=1e-5)
