"""Export of graphs and modules to Keras HDF5 files.

Oracles: the interpreter (`Model(graph).run(x, masks=...)`) for what the loaded Keras model must
compute, Keras 3 and tf_keras themselves for loading, and the interpreter on the uncompacted graph
for the compaction (a pure graph rewrite that must not change any output).
"""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refdecomp.errors import DataError, UnsupportedLayerError
from refdecomp.export import compact_graph, export_keras, read_export_info
from refdecomp.graph import Graph, Node
from refdecomp.interpreter import Model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BACKENDS = ["keras", "tf_keras"]


# --------------------------------------------------------------------------------------------
# A tiny graph builder (shapes computed like Keras, channels_last unless told otherwise)
# --------------------------------------------------------------------------------------------
class Builder:
    def __init__(self, seed: int = 0, data_format: str = "channels_last"):
        self.nodes: list[Node] = []
        self.rng = np.random.default_rng(seed)
        self.df = data_format
        self.cf = data_format == "channels_first"

    def _add(self, name, op, inputs, shape, attrs=None, weights=None) -> str:
        self.nodes.append(Node(name, op, list(inputs), tuple(int(d) for d in shape),
                               attrs or {}, weights or {}, keras_class=op))
        return name

    def shape(self, name):
        return next(n.shape for n in self.nodes if n.name == name)

    def hwc(self, name):
        s = self.shape(name)
        return (s[1], s[2], s[0]) if self.cf else s

    def out(self, h, w, c):
        return (c, h, w) if self.cf else (h, w, c)

    def input(self, name, shape):
        return self._add(name, "input", [], shape, {"dtype": "float32"})

    def conv(self, name, x, filters, k=3, strides=(1, 1), padding="same", act="relu",
             bias=True, dilation=(1, 1)):
        h, w, c = self.hwc(x)
        oh, ow = (_out_len(h, k, strides[0], padding, dilation[0]),
                  _out_len(w, k, strides[1], padding, dilation[1]))
        weights = {"kernel": self.rng.normal(0, 0.4, (k, k, c, filters)).astype(np.float32)}
        if bias:
            weights["bias"] = self.rng.normal(0, 0.2, filters).astype(np.float32)
        act = act if isinstance(act, dict) else {"name": act}
        return self._add(name, "conv2d", [x], self.out(oh, ow, filters),
                         {"strides": strides, "padding": padding, "dilation": dilation,
                          "activation": act, "data_format": self.df}, weights)

    def dense(self, name, x, units, act="relu"):
        fan_in = self.shape(x)[-1]
        act = act if isinstance(act, dict) else {"name": act}
        return self._add(name, "dense", [x], (*self.shape(x)[:-1], units), {"activation": act},
                         {"kernel": self.rng.normal(0, 0.3, (fan_in, units)).astype(np.float32),
                          "bias": self.rng.normal(0, 0.1, units).astype(np.float32)})

    def pool(self, name, x, op="max_pool2d", pool=2, strides=None, padding="valid"):
        h, w, c = self.hwc(x)
        strides = strides or pool
        oh = _out_len(h, pool, strides, padding)
        ow = _out_len(w, pool, strides, padding)
        return self._add(name, op, [x], self.out(oh, ow, c),
                         {"pool": (pool, pool), "strides": (strides, strides),
                          "padding": padding, "data_format": self.df})

    def gpool(self, name, x, op="global_avg_pool2d", keepdims=False):
        h, w, c = self.hwc(x)
        shape = self.out(1, 1, c) if keepdims else (c,)
        return self._add(name, op, [x], shape, {"data_format": self.df, "keepdims": keepdims})

    def flatten(self, name, x):
        return self._add(name, "flatten", [x], (int(np.prod(self.shape(x))),),
                         {"data_format": self.df})

    def op(self, name, op, inputs, attrs=None, weights=None, shape=None):
        return self._add(name, op, inputs, shape or self.shape(inputs[0]), attrs, weights)

    def concat(self, name, inputs):
        axis = 1 if self.cf else -1
        shapes = [self.shape(i) for i in inputs]
        ch = 0 if self.cf else -1
        out = list(shapes[0])
        out[ch] = sum(s[ch] for s in shapes)
        return self._add(name, "concatenate", inputs, out, {"axis": axis})

    def batch_norm(self, name, x):
        c = self.hwc(x)[2] if len(self.shape(x)) == 3 else self.shape(x)[-1]
        axis = (1,) if self.cf and len(self.shape(x)) == 3 else (len(self.shape(x)),)
        r = self.rng
        return self.op(name, "batch_norm", [x], {"axis": axis, "epsilon": 1e-3, "center": True,
                                                 "scale": True},
                       {"gamma": r.uniform(0.5, 1.5, c).astype(np.float32),
                        "beta": r.normal(0, 0.2, c).astype(np.float32),
                        "moving_mean": r.normal(0, 0.2, c).astype(np.float32),
                        "moving_variance": r.uniform(0.5, 1.5, c).astype(np.float32)})

    def graph(self, inputs, outputs, name="net"):
        g = Graph(self.nodes, list(inputs), list(outputs), name=name)
        g.validate()
        return g


def _out_len(n, k, s, padding, d=1):
    eff = (k - 1) * d + 1
    return -(-n // s) if padding == "same" else (n - eff) // s + 1


def small_net(seed=0, data_format="channels_last") -> Graph:
    """Conv -> BN -> two branches (add) -> pool -> concat -> flatten -> dense -> softmax."""
    b = Builder(seed, data_format)
    x = b.input("image", b.out(10, 10, 3))
    c1 = b.conv("conv1", x, 6, act="linear")
    n1 = b.batch_norm("bn1", c1)
    a1 = b.op("relu1", "activation", [n1], {"activation": {"name": "relu"}})
    c2 = b.conv("conv2a", a1, 6)
    c3 = b.conv("conv2b", a1, 6, k=1)
    s = b.op("sum", "add", [c2, c3])
    p = b.pool("pool", s)
    c4 = b.conv("conv3", p, 5, padding="valid")
    c5 = b.conv("conv4", p, 4, padding="valid", act="tanh")
    cat = b.concat("cat", [c4, c5])
    f = b.flatten("flat", cat)
    d1 = b.dense("fc1", f, 12)
    d2 = b.dense("head", d1, 4, act={"name": "softmax", "axis": -1})
    return b.graph([x], [d2])


def random_masks(graph: Graph, rng, p_dead_channel=0.3, p_off=0.2, exclude=("head",)):
    """Masks on every conv2d / dense node: whole channels off plus scattered positions."""
    masks = {}
    for node in graph.nodes_of({"conv2d", "dense"}):
        if node.name in exclude:
            continue
        mask = (rng.random(node.shape) > p_off).astype(np.uint8)
        axis = 0 if node.attrs.get("data_format") == "channels_first" else len(node.shape) - 1
        dead = rng.random(node.shape[axis]) < p_dead_channel
        idx = [slice(None)] * len(node.shape)
        idx[axis] = dead
        mask[tuple(idx)] = 0
        masks[node.name] = mask
    return masks


def masked_net(net_seed: int, seed: int, n: int = 16, data_format="channels_last", **mask_kw):
    """(g, model, masks, x): small_net(net_seed, data_format), its Model, random masks on it and
    a batch of n standard-normal inputs, masks and inputs drawn in that order from `seed`."""
    g = small_net(net_seed, data_format)
    model = Model(g)
    rng = np.random.default_rng(seed)
    masks = random_masks(model.graph, rng, **mask_kw)
    x = rng.normal(size=(n, *g.input_shapes()[0])).astype(np.float32)
    return g, model, masks, x


def load(backend: str, path):
    from refdecomp import keras_objects

    lib = pytest.importorskip(backend)
    return lib.models.load_model(str(path), custom_objects=keras_objects(backend=backend),
                                 compile=False)


def keras_predict(model, x):
    return np.asarray(model([x], training=False))


# --------------------------------------------------------------------------------------------
# Interpreter-only tests (no Keras needed)
# --------------------------------------------------------------------------------------------
def test_compact_graph_keeps_outputs_and_drops_dead_channels():
    g = Model(small_net(1)).graph
    rng = np.random.default_rng(3)
    masks = random_masks(g, rng, p_dead_channel=0.5)
    small, small_masks = compact_graph(g, masks)
    x = rng.normal(size=(8, 10, 10, 3)).astype(np.float32)
    want = Model(g).run(x, masks=masks)[0]
    got = Model(small).run(x, masks=small_masks)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert sum(n.n_params() for n in small) < sum(n.n_params() for n in g)

    def alive(*names):
        per = [masks[n].reshape(-1, masks[n].shape[-1]).any(axis=0) for n in names]
        return max(int(np.logical_or.reduce(per).sum()), 1)

    # conv1 feeds a batch norm in the source graph: folded, its dead filters go too.
    for name in ("conv1", "conv3", "conv4", "fc1"):
        assert small[name].shape[-1] == alive(name), name
    # the operands of an add keep every channel either of them uses
    assert small["conv2a"].shape[-1] == small["conv2b"].shape[-1] == alive("conv2a", "conv2b")


def test_compact_keeps_channels_an_add_operand_still_uses():
    b = Builder(2)
    x = b.input("x", (6, 6, 2))
    c1 = b.conv("c1", x, 3)
    c2 = b.conv("c2", x, 3)
    s = b.op("s", "add", [c1, c2])
    f = b.flatten("f", s)
    d = b.dense("d", f, 2, act="linear")
    g = b.graph([x], [d])
    m1 = np.ones((6, 6, 3), np.uint8)
    m1[..., 0] = 0
    m1[..., 1] = 0
    m2 = np.ones((6, 6, 3), np.uint8)
    m2[..., 0] = 0
    small, _ = compact_graph(g, {"c1": m1, "c2": m2})
    # channel 0 is dead in both operands (removed); channel 1 lives in c2 (kept in both).
    assert small["c1"].shape == (6, 6, 2) and small["c2"].shape == (6, 6, 2)
    assert small["d"].weights["kernel"].shape == (6 * 6 * 2, 2)


def test_compact_stops_at_ops_that_do_not_map_zero_to_zero():
    b = Builder(4)
    x = b.input("x", (5, 5, 2))
    c = b.conv("c", x, 3, act="linear")
    s = b.op("sig", "activation", [c], {"activation": {"name": "sigmoid"}})
    f = b.flatten("f", s)
    d = b.dense("d", f, 2, act="linear")
    g = b.graph([x], [d])
    m = np.ones((5, 5, 3), np.uint8)
    m[..., 1] = 0
    small, _ = compact_graph(g, {"c": m})
    assert small["c"].shape == (5, 5, 3)  # sigmoid(0) = 0.5 is not zero: nothing removed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), p_dead=st.floats(0.0, 0.9),
       fmt=st.sampled_from(["channels_last", "channels_first"]))
def test_compact_is_exact_on_random_masks(seed, p_dead, fmt):
    g = Model(small_net(seed % 7, fmt)).graph
    rng = np.random.default_rng(seed)
    masks = random_masks(g, rng, p_dead_channel=p_dead)
    small, small_masks = compact_graph(g, masks)
    shape = g.input_shapes()[0]
    x = rng.normal(size=(3, *shape)).astype(np.float32)
    np.testing.assert_allclose(Model(small).run(x, masks=small_masks)[0],
                               Model(g).run(x, masks=masks)[0], rtol=1e-5, atol=1e-6)


def test_bad_masks_are_refused(tmp_path):
    g = small_net()
    with pytest.raises(DataError, match="pool"):
        export_keras(g, tmp_path / "a.h5", masks={"pool": np.ones((5, 5, 6), np.uint8)})
    with pytest.raises(DataError, match="shape"):
        export_keras(g, tmp_path / "a.h5", masks={"conv2a": np.ones((3, 3), np.uint8)})
    with pytest.raises(DataError, match="no such node"):
        export_keras(g, tmp_path / "a.h5", masks={"nope": np.ones(3, np.uint8)})
    with pytest.raises(DataError, match="other than 0 and 1"):
        export_keras(g, tmp_path / "a.h5", masks={"fc1": np.full(12, 2, np.uint8)})
    assert not list(tmp_path.iterdir())


def test_unexportable_activation_is_refused_and_nothing_is_written(tmp_path):
    b = Builder()
    x = b.input("x", (4, 4, 1))
    c = b.conv("c", x, 2, act={"name": "gelu", "approximate": True})
    target = tmp_path / "m.h5"
    with pytest.raises(UnsupportedLayerError, match="'c'"):
        export_keras(b.graph([x], [c]), target, fold=False)
    assert not list(tmp_path.iterdir())


def test_file_layout(tmp_path):
    g = small_net()
    masks = random_masks(Model(g).graph, np.random.default_rng(0))
    path = export_keras(g, tmp_path / "m.h5", masks=masks)
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        assert config["class_name"] == "Functional"
        names = [lay["name"] for lay in config["config"]["layers"]]
        assert f.attrs["backend"] == "tensorflow"
        mw = f["model_weights"]
        assert sorted(n.decode() if isinstance(n, bytes) else n
                      for n in mw.attrs["layer_names"]) == sorted(names)
        kernel = mw["conv2a/conv2a/kernel:0"][()]
        assert kernel.shape == (3, 3, 6, 6)
        mask = mw["conv2a_mask/conv2a_mask/mask:0"][()]
        np.testing.assert_array_equal(mask, masks["conv2a"])
        classes = {lay["class_name"] for lay in config["config"]["layers"]}
        assert "NodeMask" in classes and "BatchNormalization" not in classes  # folded
    assert read_export_info(path)["graph"] == "net"


# --------------------------------------------------------------------------------------------
# Against Keras
# --------------------------------------------------------------------------------------------
@pytest.mark.keras
@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_loads_module_with_masks_and_matches_interpreter(tmp_path, backend):
    g, model, masks, x = masked_net(5, 11)
    want = model.run(x, masks=masks)[0]
    path = export_keras(g, tmp_path / "module.h5", masks=masks)
    got = keras_predict(load(backend, path), x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the masks make a difference, so the comparison is not vacuous
    assert not np.allclose(model.run(x)[0], want, atol=1e-4)


@pytest.mark.keras
@pytest.mark.parametrize("backend", BACKENDS)
def test_compact_file_is_smaller_with_same_outputs(tmp_path, backend):
    g, model, masks, x = masked_net(6, 12, p_dead_channel=0.5)
    full = export_keras(g, tmp_path / "full.h5", masks=masks)
    small = export_keras(g, tmp_path / "small.h5", masks=masks, compact=True)
    assert small.stat().st_size < full.stat().st_size
    k_small = load(backend, small)
    k_full = load(backend, full)
    assert k_small.count_params() < k_full.count_params()
    want = model.run(x, masks=masks)[0]
    np.testing.assert_allclose(keras_predict(k_small, x), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(keras_predict(k_full, x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.keras
@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_land_in_the_right_layers_of_branchy_graphs(tmp_path, backend):
    """Same-shaped parallel branches in an order Keras sorts differently from the config."""
    b = Builder(9)
    x = b.input("in", (8, 8, 3))
    stem = b.conv("stem", x, 4)
    branches = []
    for k in range(4):
        y = b.conv(f"b{k}_0", stem, 4)
        for j in range(k):  # branches of different depth
            y = b.conv(f"b{k}_{j + 1}", y, 4)
        branches.append(y)
    s1 = b.op("s1", "add", [branches[3], branches[0]])
    s2 = b.op("s2", "add", [branches[1], s1])
    cat = b.concat("cat", [branches[2], s2, stem])
    gp = b.gpool("gap", cat)
    o1 = b.dense("o1", gp, 3, act="linear")
    o2 = b.dense("o2", b.gpool("gmp", branches[2], "global_max_pool2d"), 2, act="sigmoid")
    g = b.graph([x], [o2, o1])
    rng = np.random.default_rng(0)
    x_ = rng.normal(size=(5, 8, 8, 3)).astype(np.float32)
    want = Model(g).run(x_)
    km = load(backend, export_keras(g, tmp_path / "b.h5", fold=False))
    got = km([x_], training=False)
    for gt, wt in zip(got, want):
        np.testing.assert_allclose(np.asarray(gt), wt, rtol=1e-4, atol=1e-5)


ACTIVATIONS = [
    {"name": "linear"}, {"name": "relu"}, {"name": "relu", "max_value": 0.5},
    {"name": "relu", "negative_slope": 0.1, "threshold": 0.2}, {"name": "leaky_relu",
                                                               "negative_slope": 0.3},
    {"name": "relu6"}, {"name": "elu", "alpha": 1.0}, {"name": "elu", "alpha": 0.5},
    {"name": "selu"}, {"name": "sigmoid"}, {"name": "tanh"}, {"name": "softplus"},
    {"name": "softsign"}, {"name": "exponential"}, {"name": "swish"}, {"name": "silu"},
    {"name": "gelu", "approximate": False},
    {"name": "hard_sigmoid", "dialect": "keras2"}, {"name": "hard_sigmoid", "dialect": "keras3"},
    {"name": "softmax", "axis": -1},
]


@pytest.mark.keras
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_exportable_activation(tmp_path, backend):
    b = Builder(3)
    x = b.input("x", (5, 5, 2))
    outs = []
    for k, act in enumerate(ACTIVATIONS):
        c = b.conv(f"c{k}", x, 3, act=act)                       # fused in the layer
        a = b.op(f"a{k}", "activation", [b.conv(f"l{k}", x, 3, act="linear")],
                 {"activation": act})                            # separate layer
        outs += [c, a]
    g = b.graph([x], outs)
    rng = np.random.default_rng(1)
    xs = rng.normal(0, 2, size=(4, 5, 5, 2)).astype(np.float32)
    want = Model(g, fold=False).run(xs)
    km = load(backend, export_keras(g, tmp_path / "a.h5", fold=False))
    for name, gt, wt in zip(outs, km([xs], training=False), want):
        np.testing.assert_allclose(np.asarray(gt), wt, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.keras
@pytest.mark.parametrize("backend", BACKENDS)
def test_other_ops(tmp_path, backend):
    b = Builder(8)
    rng = b.rng
    x = b.input("x", (9, 9, 3))
    r = b.op("rescale", "rescaling", [x], {"scale": 0.5, "offset": [0.1, -0.2, 0.3]})
    n = b.op("norm", "normalization", [r], {"axis": (3,)},
             {"mean": rng.normal(size=3).astype(np.float32),
              "variance": rng.uniform(0.5, 2, 3).astype(np.float32)})
    z = b.op("pad", "zero_pad2d", [n], {"padding": ((1, 0), (2, 1)),
                                         "data_format": "channels_last"}, shape=(10, 12, 3))
    c = b.conv("c", z, 4, strides=(2, 2), act="linear", dilation=(1, 1))
    bn = b.batch_norm("bn", c)
    pr = b.op("prelu", "prelu", [bn], {"shared_axes": (1, 2)},
              {"alpha": rng.uniform(0, 0.5, (1, 1, 4)).astype(np.float32)})
    ap = b.pool("avg", pr, "avg_pool2d", pool=3, strides=2, padding="same")
    idn = b.op("drop", "identity", [ap])
    cd = b.conv("cd", idn, 2, k=2, dilation=(2, 1), padding="valid", bias=False)
    gk = b.gpool("gk", cd, "global_max_pool2d", keepdims=True)
    rs = b.op("rs", "reshape", [gk], {"target_shape": (2,)}, shape=(2,))
    d = b.dense("d", rs, 3, act="linear")
    sm = b.op("sm", "softmax", [d], {"axis": -1})
    g = b.graph([x], [sm])
    xs = rng.normal(size=(6, 9, 9, 3)).astype(np.float32)
    want = Model(g, fold=False).run(xs)[0]
    km = load(backend, export_keras(g, tmp_path / "o.h5", fold=False))
    np.testing.assert_allclose(keras_predict(km, xs), want, rtol=1e-4, atol=1e-5)


@pytest.mark.keras
def test_channels_first_in_keras3(tmp_path):
    g, model, masks, x = masked_net(2, 4, n=4, data_format="channels_first")
    want = model.run(x, masks=masks)[0]
    for compact in (False, True):
        path = export_keras(g, tmp_path / f"cf{compact}.h5", masks=masks, compact=compact)
        np.testing.assert_allclose(keras_predict(load("keras", path), x), want,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.keras
def test_keras_objects_give_a_serialisable_layer_in_keras3(tmp_path):
    keras = pytest.importorskip("keras")
    from refdecomp import keras_objects

    cls = keras_objects(backend="keras")["NodeMask"]
    assert keras.saving.get_registered_name(cls) == "refdecomp>NodeMask"
    inp = keras.Input((3,))
    layer = cls(mask_shape=(3,))
    model = keras.Model(inp, layer(inp))
    layer.set_weights([np.array([1, 0, 1], np.float32)])
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(np.asarray(again(np.ones((1, 3), np.float32))), [[1, 0, 1]])
    with pytest.raises(Exception, match="choose one of"):
        keras_objects(backend="theano")


# --------------------------------------------------------------------------------------------
# End to end: a Keras file -> refdecomp modules -> Keras files again
# --------------------------------------------------------------------------------------------
def _keras_cnn(path, seed=0):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((12, 12, 1))
    x = L.Conv2D(8, 3, padding="same")(inp)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    y = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = L.Add()([x, y])
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(6, 3, activation="relu")(x)
    x = L.Flatten()(x)
    x = L.Dense(16, activation="relu")(x)
    out = L.Dense(3, activation="softmax")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)  # make the batch norm non-trivial
    bn = next(lay for lay in model.layers if isinstance(lay, L.BatchNormalization))
    bn.set_weights([rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.1, 8), rng.normal(0, 0.1, 8),
                    rng.uniform(0.5, 1.5, 8)])
    model.save(path)
    return model


@pytest.mark.keras
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channeling", ["mean", "logsumexp"])
def test_decomposed_module_exports_and_matches(tmp_path, backend, channeling):
    from refdecomp import decompose
    from refdecomp.reader import read_graph

    source = tmp_path / "cnn.h5"
    _keras_cnn(source)
    model = Model(read_graph(source))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 12, 12, 1)).astype(np.float32)
    y = np.argmax(model.predict(x), axis=1)
    ms = decompose(model, x, y, channeling=channeling)
    module = ms[int(y[0])]
    assert module.masks and any((m == 0).any() for m in module.masks.values())
    want = module.predict(x[:20])
    for compact in (False, True):
        path = module.export_keras(tmp_path / f"module_{compact}.h5", compact=compact)
        got = keras_predict(load(backend, path), x[:20])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.keras
def test_exported_unmasked_graph_reads_back_to_the_same_function(tmp_path):
    from refdecomp.reader import read_graph

    g = small_net(3)
    path = export_keras(g, tmp_path / "plain.h5")
    again = read_graph(path)
    x = np.random.default_rng(2).normal(size=(7, 10, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(Model(again).predict(x), Model(g).predict(x),
                               rtol=1e-5, atol=1e-6)


def test_relu_with_slope_and_threshold_does_not_count_as_zero_preserving():
    b = Builder(5)
    x = b.input("x", (4, 4, 2))
    c = b.conv("c", x, 3, act="linear")
    a = b.op("a", "activation", [c], {"activation": {"name": "relu", "negative_slope": 0.1,
                                                     "threshold": 0.5}})
    d = b.dense("d", b.flatten("f", a), 2, act="linear")
    g = b.graph([x], [d])
    m = np.ones((4, 4, 3), np.uint8)
    m[..., 2] = 0
    small, small_masks = compact_graph(g, {"c": m})
    assert small["c"].shape == (4, 4, 3)  # f(0) = -0.05: the channel still matters
    xs = np.random.default_rng(0).normal(size=(2, 4, 4, 2)).astype(np.float32)
    np.testing.assert_allclose(Model(small, fold=False).run(xs, masks=small_masks)[0],
                               Model(g, fold=False).run(xs, masks={"c": m})[0], rtol=1e-6)


@pytest.mark.keras
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_inputs_and_nested_names(tmp_path, backend):
    b = Builder(7)
    x1 = b.input("a", (6, 6, 2))
    x2 = b.input("b", (6, 6, 2))
    c1 = b.conv("inner/conv", x1, 3)
    c2 = b.conv("inner:conv", x2, 3)       # sanitises to the same name as the first
    s = b.op("sum", "add", [c1, c2])
    d = b.dense("head", b.gpool("gap", s), 2, act="linear")
    g = b.graph([x1, x2], [d])
    rng = np.random.default_rng(1)
    masks = random_masks(g, rng)
    xs = [rng.normal(size=(3, 6, 6, 2)).astype(np.float32) for _ in range(2)]
    want = Model(g).run(xs, masks=masks)[0]
    km = load(backend, export_keras(g, tmp_path / "two.h5", masks=masks))
    assert len({lay.name for lay in km.layers}) == len(km.layers)
    np.testing.assert_allclose(np.asarray(km(xs, training=False)), want, rtol=1e-4, atol=1e-5)
