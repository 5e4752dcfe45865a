"""Model / Recorder behaviour: folding exactness, streaming, API contracts, errors."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from interp_graphs import bn_node, conv_node, dense_node, single

from refdecomp import DataError
from refdecomp.graph import Graph, Node
from refdecomp.interpreter import Model, Recorder
from refdecomp.ops import reference as ref
from refdecomp.transforms import optimize

RELU = {"name": "relu"}


def conv_bn_relu_net(data_format="channels_last", bn_axis=None, seed=0):
    """input -> conv -> BN -> ReLU -> conv(relu) -> maxpool -> add-free flatten -> dense."""
    rng = np.random.default_rng(seed)
    cf = data_format == "channels_first"
    in_shape = (3, 8, 8) if cf else (8, 8, 3)
    c1 = conv_node("c1", "x", in_shape, 4, (3, 3), (1, 1), "same", data_format=data_format,
                   rng=rng)
    axis = bn_axis if bn_axis is not None else (1 if cf else 3)
    bn = bn_node("bn", "c1", c1.shape, axis, rng)
    act = Node("r", "activation", ["bn"], c1.shape, {"activation": RELU}, {}, "Activation")
    c2 = conv_node("c2", "r", c1.shape, 5, (3, 3), (2, 2), "same", activation=RELU,
                   data_format=data_format, rng=rng)
    pool = Node("p", "max_pool2d", ["c2"], (5, 2, 2) if cf else (2, 2, 5),
                dict(pool=(2, 2), strides=(2, 2), padding="valid", data_format=data_format))
    flat = Node("f", "flatten", ["p"], (20,), dict(data_format=data_format))
    d = dense_node("d", "f", 20, 3, {"name": "softmax"}, rng)
    nodes = [Node("x", "input", [], in_shape), c1, bn, act, c2, pool, flat, d]
    return Graph(nodes, ["x"], ["d"]), in_shape


@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_bn_folding_is_exact(fmt):
    g, in_shape = conv_bn_relu_net(fmt)
    folded = Model(g)
    assert [n.name for n in folded.graph] == ["x", "c1", "c2", "p", "f", "d"]
    assert folded.name_map["bn"] == "c1" and folded.name_map["r"] == "c1"
    assert folded.graph["c1"].activation == RELU
    x = np.random.default_rng(1).standard_normal((10, *in_shape)).astype(np.float32)
    unfolded = Model(g, fold=False, engine="reference")
    np.testing.assert_allclose(folded.predict(x), unfolded.predict(x), rtol=1e-5, atol=1e-6)
    # the recorded value is the one after batch norm, before ReLU
    rec = Recorder(folded, 2)
    groups = np.arange(10) % 2
    folded.run(x, 4, recorder=rec, groups=groups, outputs=[])
    after_bn = unfolded.layer_outputs(x, ["bn"])["bn"]
    for k in range(2):
        np.testing.assert_array_equal(rec.seen["c1"][k], (after_bn[groups == k] > 0).any(0))


def test_bn_not_folded_when_inexact():
    g, _ = conv_bn_relu_net(bn_axis=2)          # normalises a spatial axis: not foldable
    assert "bn" in Model(g).graph
    g, in_shape = conv_bn_relu_net()
    # c1 gets a second consumer: folding would change what that consumer sees
    extra = Node("id", "identity", ["c1"], g["c1"].shape)
    g2 = Graph([*g.nodes, extra], ["x"], ["d", "id"])
    m = Model(g2)
    assert "bn" in m.graph and m.graph["c1"].activation["name"] == "linear"
    x = np.random.default_rng(2).standard_normal((3, *in_shape)).astype(np.float32)
    y, raw = m.predict(x)
    np.testing.assert_allclose(raw, ref.conv2d(g["c1"], [x]), rtol=1e-5, atol=1e-5)


def test_activation_without_zero_preservation_not_fused():
    rng = np.random.default_rng(0)
    c = conv_node("c", "x", (5, 5, 2), 3, (3, 3), rng=rng)
    s = Node("s", "activation", ["c"], c.shape, {"activation": {"name": "sigmoid"}})
    g = Graph([Node("x", "input", [], (5, 5, 2)), c, s], ["x"], ["s"])
    exec_graph, mapping = optimize(g)
    assert "s" in exec_graph and mapping["s"] == "s"


def test_predict_batch_size_and_engines_agree():
    g, in_shape = conv_bn_relu_net()
    x = np.random.default_rng(5).standard_normal((23, *in_shape)).astype(np.float32)
    want = Model(g, engine="reference").predict(x, batch_size=23)
    for bs in (1, 7, 256):
        np.testing.assert_allclose(Model(g).predict(x, batch_size=bs), want, rtol=1e-5,
                                   atol=1e-6)


def two_in_two_out():
    rng = np.random.default_rng(0)
    a = Node("a", "input", [], (4,))
    b = Node("b", "input", [], (4,))
    s = Node("s", "add", ["a", "b"], (4,))
    d = dense_node("d", "s", 4, 2, RELU, rng)
    cat = Node("cat", "concatenate", ["s", "a"], (8,), {"axis": -1})
    return Graph([a, b, s, d, cat], ["a", "b"], ["d", "cat"])


def test_multi_input_multi_output():
    m = Model(two_in_two_out())
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 6, 4)).astype(np.float32)
    d, cat = m.predict([a, b], batch_size=4)
    s = a + b
    np.testing.assert_allclose(cat, np.concatenate([s, a], 1), rtol=1e-6)
    k = m.graph["d"].weights
    np.testing.assert_allclose(d, np.maximum(s @ k["kernel"] + k["bias"], 0), rtol=1e-5,
                               atol=1e-6)
    d2, _ = m.predict({"a": a, "b": b})
    np.testing.assert_array_equal(d, d2)


def test_bad_inputs_raise_data_error_naming_the_input():
    m = Model(two_in_two_out())
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(DataError, match=r"'b' expects shape \(None, 4\)"):
        m.predict([x, np.zeros((3, 5), np.float32)])
    with pytest.raises(DataError, match="2 input"):
        m.predict(x)
    g, _ = conv_bn_relu_net()
    with pytest.raises(DataError, match=r"'x' expects shape \(None, 8, 8, 3\)"):
        Model(g).predict(np.zeros((2, 8, 8), np.float32))
    m = Model(g)
    with pytest.raises(DataError, match="groups"):
        m.run(np.zeros((2, 8, 8, 3)), recorder=Recorder(m, 2), groups=[0, 2])
    with pytest.raises(DataError, match="mask"):
        m.run(np.zeros((2, 8, 8, 3)), masks={"c1": np.ones((8, 8, 5), np.uint8)})
    with pytest.raises(DataError, match="not a conv2d / dense"):
        m.run(np.zeros((2, 8, 8, 3)), masks={"p": np.ones((2, 2, 5), np.uint8)})


def test_summary_counts_parameters_and_macs():
    g, _ = conv_bn_relu_net()
    m = Model(g)
    text = m.summary()
    macs_c1 = 8 * 8 * 3 * 3 * 3 * 4
    macs_c2 = 4 * 4 * 3 * 3 * 4 * 5
    assert m.macs() == macs_c1 + macs_c2 + 20 * 3
    assert f"{macs_c1:,}" in text and f"{macs_c2:,}" in text
    assert f"{sum(n.n_params() for n in g):,}" in text
    assert "(None, 4, 4, 5)" in text


def test_layer_outputs_use_source_names():
    g, in_shape = conv_bn_relu_net()
    x = np.random.default_rng(0).standard_normal((4, *in_shape)).astype(np.float32)
    outs = Model(g).layer_outputs(x, ["c1", "bn", "r"])
    np.testing.assert_allclose(outs["r"], np.maximum(outs["bn"], 0))
    np.testing.assert_allclose(outs["c1"], ref.conv2d(g["c1"], [x]), rtol=1e-5, atol=1e-5)


def test_with_graph_runs_a_modified_graph():
    g, in_shape = conv_bn_relu_net()
    m = Model(g)
    head = m.graph["d"]
    k = head.weights["kernel"][:, :1]
    new = m.graph.with_nodes([*m.graph.nodes[:-1], head.replace(
        shape=(1,), weights={"kernel": k, "bias": head.weights["bias"][:1]},
        attrs={"activation": {"name": "sigmoid"}})])
    x = np.random.default_rng(0).standard_normal((3, *in_shape)).astype(np.float32)
    y = m.with_graph(new).predict(x)
    feats = m.run(x, outputs=["f"])[0]
    np.testing.assert_allclose(y, ref.sigmoid(feats @ k + head.weights["bias"][:1]),
                               rtol=1e-5, atol=1e-6)


def test_streaming_memory_does_not_grow_with_images():
    """Recording over 8x more images allocates no more at peak (buffers are reused)."""
    g, in_shape = conv_bn_relu_net()
    m = Model(g)
    rng = np.random.default_rng(0)
    peaks = []
    for n in (64, 512):
        x = rng.standard_normal((n, *in_shape)).astype(np.float32)
        groups = rng.integers(0, 3, n)
        rec = Recorder(m, 3)
        m.run(x[:32], 32, recorder=rec, groups=groups[:32], outputs=[])    # warm-up
        tracemalloc.start()
        m.run(x, 32, recorder=rec, groups=groups, outputs=[])
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0] + 64 * 1024, peaks


def test_flatten_channels_first_uses_channels_last_order():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    node = Node("f", "flatten", ["x"], (60,), {"data_format": "channels_first"})
    y = Model(single(node, (3, 4, 5))).predict(x)
    np.testing.assert_array_equal(y, x.transpose(0, 2, 3, 1).reshape(2, -1))


@pytest.mark.parametrize("axis", [1, 2, 3, -1])
def test_batch_norm_any_axis(axis):
    rng = np.random.default_rng(axis % 7)
    shape = (3, 4, 5)
    bn = bn_node("bn", "x", shape, axis, rng)
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    y = Model(single(bn, shape)).predict(x)
    w = {k: v.astype(np.float64) for k, v in bn.weights.items()}
    bshape = [1, 1, 1, 1]
    bshape[axis] = -1
    want = (x - w["moving_mean"].reshape(bshape)) / np.sqrt(
        w["moving_variance"].reshape(bshape) + 1e-3) * w["gamma"].reshape(bshape) \
        + w["beta"].reshape(bshape)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_open_input_dimensions_are_fixed_per_batch_shape():
    """A fully convolutional graph whose file leaves H and W open runs on any image size and
    equals the same graph built with those sizes fixed."""
    rng = np.random.default_rng(3)
    fixed_c = conv_node("c", "x", (9, 7, 2), 3, (3, 3), (2, 2), "same", activation=RELU, rng=rng)
    open_c = fixed_c.replace(shape=(None, None, 3))
    open_graph = Graph([Node("x", "input", [], (None, None, 2)), open_c], ["x"], ["c"])
    model = Model(open_graph)
    for h, w in [(9, 7), (6, 11)]:
        x = rng.standard_normal((2, h, w, 2)).astype(np.float32)
        c = conv_node("c", "x", (h, w, 2), 3, (3, 3), (2, 2), "same", activation=RELU)
        c.weights.update(fixed_c.weights)
        want = Model(Graph([Node("x", "input", [], (h, w, 2)), c], ["x"], ["c"]),
                     engine="reference").predict(x)
        np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-5)
    assert "open dimensions" in model.summary()


def residual_add_activation(act):
    """x -> conv a, conv b -> add s -> activation r -> dense d (the ResNet Add -> ReLU pair)."""
    rng = np.random.default_rng(3)
    x = Node("x", "input", [], (5, 5, 3))
    a = conv_node("a", "x", (5, 5, 3), 4, (3, 3), padding="same", rng=rng)
    b = conv_node("b", "x", (5, 5, 3), 4, (1, 1), rng=rng)
    s = Node("s", "add", ["a", "b"], (5, 5, 4))
    r = Node("r", "activation", ["s"], (5, 5, 4), {"activation": act})
    f = Node("f", "flatten", ["r"], (100,))
    d = dense_node("d", "f", 100, 3, rng=rng)
    return Graph([x, a, b, s, r, f, d], ["x"], ["d"])


@pytest.mark.parametrize("act", [{"name": "relu"}, {"name": "sigmoid"}, {"name": "softmax"}])
def test_add_activation_pair_matches_reference_and_keeps_the_sum_on_request(act):
    from refdecomp.ops.lowering import add_activation_pairs

    g = residual_add_activation(act)
    m = Model(g)
    fusable = act["name"] != "softmax"       # softmax is not an element-wise kernel activation
    assert (set(add_activation_pairs(m.graph)) == {"s"}) == fusable
    x = np.random.default_rng(4).standard_normal((6, 5, 5, 3)).astype(np.float32)
    reference = Model(g, engine="reference")
    np.testing.assert_allclose(m.predict(x), reference.predict(x), rtol=1e-5, atol=1e-6)
    # asking for the add's own output gets the sum before the activation
    s, r = m.run(x, outputs=["s", "r"])
    s_ref, r_ref = reference.run(x, outputs=["s", "r"])
    np.testing.assert_allclose(s, s_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r, r_ref, rtol=1e-5, atol=1e-6)
    assert (s < 0).any()                     # so a fused (activated) value would differ
