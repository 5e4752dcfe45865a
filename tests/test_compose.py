"""The shared-pass composition (refdecomp.compose) against running each module on its own."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from decomp_nets import SOFTMAX, out_size, quietly
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refdecomp.compose import NOT_FLAGGED, Composer, compose_features, compose_margins
from refdecomp.decompose import build_modules, observe
from refdecomp.decompose.update import update_module
from refdecomp.graph import Graph, Node
from refdecomp.interpreter import Model
from refdecomp.modules import Module, ModuleSet

ACTIVATIONS = [{"name": "relu"}, {"name": "relu"}, {"name": "linear"},
               {"name": "leaky_relu", "negative_slope": 0.1}, {"name": "tanh"},
               {"name": "relu", "max_value": 1.5, "negative_slope": 0.0, "threshold": 0.0}]


@st.composite
def composition_graphs(draw):
    """Random channels_last CNNs with the node kinds composition must handle: convolutions
    with strides, padding and several activations (linear and tanh ones rarely output 0),
    batch norm (folded into the convolution), residual Add, Concatenate of two branches, max /
    average pooling, flatten or global pooling, an optional hidden dense layer, softmax head."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    h, w, c = draw(st.integers(5, 9)), draw(st.integers(5, 9)), draw(st.integers(1, 3))
    nodes = [Node("in", "input", [], (h, w, c), {"dtype": "float32"})]
    cur, shape = "in", (h, w, c)

    def weights(*s):
        a = rng.normal(size=s).astype(np.float32)
        a[rng.random(s) < 0.15] = 0.0
        return a

    def add(node):
        nonlocal cur, shape
        nodes.append(node)
        cur, shape = node.name, node.shape

    def conv(name, src, cin, cout, hw, k, s, pad, act):
        oh, ow = out_size(hw[0], k, s, pad), out_size(hw[1], k, s, pad)
        return Node(name, "conv2d", [src], (oh, ow, cout),
                    {"strides": (s, s), "padding": pad, "dilation": (1, 1), "activation": act,
                     "data_format": "channels_last"},
                    {"kernel": weights(k, k, cin, cout), "bias": weights(cout) * 0.3})

    for b in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "bn", "res", "concat", "pool"]))
        H, W, C = shape
        if kind in ("conv", "bn"):
            k = draw(st.integers(1, min(3, H, W)))
            s = draw(st.integers(1, 2))
            pad = draw(st.sampled_from(["valid", "same"]))
            act = draw(st.sampled_from(ACTIVATIONS))
            cout = draw(st.integers(1, 4))
            add(conv(f"conv{b}", cur, C, cout, (H, W), k, s, pad,
                     {"name": "linear"} if kind == "bn" else act))
            if kind == "bn":
                cc = shape[-1]
                add(Node(f"bn{b}", "batch_norm", [cur], shape,
                         {"axis": (3,), "epsilon": 1e-3, "center": True, "scale": True},
                         {"gamma": rng.uniform(0.5, 2, cc).astype(np.float32),
                          "beta": rng.normal(size=cc).astype(np.float32),
                          "moving_mean": rng.normal(size=cc).astype(np.float32),
                          "moving_variance": rng.uniform(0.5, 2, cc).astype(np.float32)}))
                add(Node(f"act{b}", "activation", [cur], shape, {"activation": act}))
        elif kind == "res":
            start = cur
            add(conv(f"rconv{b}", cur, C, C, (H, W), 3, 1, "same",
                     draw(st.sampled_from(ACTIVATIONS))))
            add(Node(f"add{b}", "add", [start, cur], (H, W, C)))
            add(Node(f"relu{b}", "activation", [cur], (H, W, C), {"activation": {"name": "relu"}}))
        elif kind == "concat":
            start = cur
            c1, c2 = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            add(conv(f"left{b}", start, C, c1, (H, W), 3, 1, "same", {"name": "relu"}))
            add(conv(f"right{b}", start, C, c2, (H, W), 1, 1, "same",
                     draw(st.sampled_from(ACTIVATIONS))))
            add(Node(f"cat{b}", "concatenate", [f"left{b}", f"right{b}"], (H, W, c1 + c2),
                     {"axis": -1}))
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
    hidden = draw(st.integers(0, 3)) == 0
    if hidden:
        units = draw(st.integers(2, 8))
        add(Node("hidden", "dense", [cur], (units,), {"activation": {"name": "relu"}},
                 {"kernel": weights(shape[0], units), "bias": weights(units) * 0.3}))
    n = draw(st.integers(2, 4))
    add(Node("head", "dense", [cur], (n,), {"activation": SOFTMAX},
             {"kernel": weights(shape[0], n), "bias": weights(n) * 0.3}))
    return Graph(nodes, ["in"], ["head"]), hidden


def random_modules(model, rng, count, rate):
    """Modules with random masks (each node of each weighted layer masked with prob. `rate`)
    and random two-unit heads."""
    head = [n for n in model.graph.weighted_nodes()][-1]
    d = head.weights["kernel"].shape[0]
    mods = []
    for c in range(count):
        masks = {n.name: (rng.random(n.shape) >= rate).astype(np.uint8)
                 for n in model.graph.weighted_nodes() if n.name != head.name}
        mods.append(Module(model, c, rng.normal(size=(d, 2)).astype(np.float32),
                           rng.normal(size=2).astype(np.float32), masks))
    return mods


def assert_same(a, b, inexact):
    """Bit for bit; where a hidden dense layer feeds the head, BLAS's blocking of the rows
    (which differs with the number of images, for `Module.features` itself too) allows
    rounding differences, so those graphs compare to float32 precision."""
    if inexact:
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5)
    else:
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


def check_against_one_by_one(model, mods, x, inexact, batch_size):
    comp = compose_features(model, mods, x, batch_size=batch_size)
    names = [n.name for n in model.graph.nodes]
    plain = dict(zip(names, model.run(x, outputs=names)))
    composer = Composer(model, mods)
    for j, m in enumerate(mods):
        alone = m.features(x)
        assert comp.features[j].dtype == np.float32
        assert_same(comp.features[j], alone, inexact)
        # Oracle of the flags: some masked node feeding the head takes a value other than
        # +0.0 in the model's pass (all these activations are fused, so masking stores +0.0).
        ancestors = {mn.name for mn in composer.masked[j]}
        need = np.zeros(len(x), bool)
        for name, mask in m.masks.items():
            if name in ancestors:
                v = plain[name].reshape(len(x), -1)[:, mask.reshape(-1) == 0]
                need |= (v.view(np.uint32) != 0).any(axis=1)
        assert comp.flagged_fraction[j] == pytest.approx(need.mean())
        assert 0.0 <= comp.recomputed_fraction[j] <= comp.flagged_fraction[j] + 1e-12
    return comp


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=composition_graphs(), seed=st.integers(0, 10**6),
       backtrack=st.sampled_from(["none", "last_conv", "input"]),
       batch_size=st.sampled_from([1, 7, 64]))
def test_observed_modules_match_one_by_one(g, seed, backtrack, batch_size):
    graph, inexact = g
    model = Model(graph)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, *graph.input_shapes()[0])).astype(np.float32)
    n_classes = graph["head"].shape[0]
    y = rng.integers(0, n_classes, size=len(x))
    obs = quietly(observe, model, x[:24], y[:24], seed=seed)
    ms = quietly(build_modules, model, obs, backtrack=backtrack)
    mods = list(ms) + [quietly(update_module, ms.modules[0], x[24:32])]
    check_against_one_by_one(model, mods, x, inexact, batch_size)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=composition_graphs(), seed=st.integers(0, 10**6),
       rate=st.sampled_from([0.0, 0.02, 0.2, 0.9]))
def test_random_masks_match_one_by_one(g, seed, rate):
    graph, inexact = g
    model = Model(graph)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(30, *graph.input_shapes()[0])).astype(np.float32)
    mods = random_modules(model, rng, 3, rate)
    comp = check_against_one_by_one(model, mods, x, inexact, 16)
    if rate == 0.0:
        assert (comp.flagged_fraction == 0).all() and (comp.recomputed_fraction == 0).all()


def resnet_like(seed=0):
    """conv(relu) -> [conv(relu) -> conv(linear) -> add -> relu] -> gap -> head: the layout
    of the paper's ResNets, where masks on the linear convolution flag almost every image."""
    rng = np.random.default_rng(seed)
    k = lambda *s: rng.normal(0, 0.5, s).astype(np.float32)  # noqa: E731
    relu, lin = {"name": "relu"}, {"name": "linear"}
    conv = lambda name, src, act: Node(  # noqa: E731
        name, "conv2d", [src], (8, 8, 4),
        {"strides": (1, 1), "padding": "same", "dilation": (1, 1), "activation": act,
         "data_format": "channels_last"}, {"kernel": k(3, 3, 4, 4), "bias": k(4) * 0.1})
    nodes = [Node("in", "input", [], (8, 8, 4)), conv("c0", "in", relu), conv("c1", "c0", relu),
             conv("c2", "c1", lin), Node("add", "add", ["c0", "c2"], (8, 8, 4)),
             Node("out", "activation", ["add"], (8, 8, 4), {"activation": relu}),
             Node("gap", "global_avg_pool2d", ["out"], (4,),
                  {"data_format": "channels_last", "keepdims": False}),
             Node("head", "dense", ["gap"], (3,), {"activation": SOFTMAX},
                  {"kernel": k(4, 3), "bias": k(3)})]
    return Graph(nodes, ["in"], ["head"])


def test_restart_after_the_first_changed_node_saves_work():
    model = Model(resnet_like())
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 8, 8, 4)).astype(np.float32)
    mods = random_modules(model, rng, 2, 0.0)
    mods[0].masks["c2"][3, 3, 1] = 0        # linear: nonzero on (almost) every image
    mods[1].masks["c1"][:] = 0               # relu: changes every image with any c1 > 0
    comp = check_against_one_by_one(model, mods, x, False, 16)
    assert comp.flagged_fraction[0] > 0.9
    # a restart after c2 recomputes nothing that costs multiply-accumulates
    assert comp.recomputed_fraction[0] == 0.0
    assert comp.flagged_fraction[1] > 0.9
    assert 0.0 < comp.recomputed_fraction[1] < 0.5     # c2 only, of c0, c1, c2


def test_first_flag_positions():
    model = Model(resnet_like())
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 8, 8, 4)).astype(np.float32)
    mods = random_modules(model, rng, 1, 0.0)
    mods[0].masks["c1"][:] = 0
    mods[0].masks["c2"][0, 0, 0] = 0
    comp = Composer(model, mods)
    (part,) = list(comp.batches(x, 32))
    c1 = model.run(x, outputs=["c1"])[0]
    pos = {n.name: i for i, n in enumerate(model.graph.nodes)}
    want = np.where((c1 != 0).reshape(len(x), -1).any(1), pos["c1"], pos["c2"])
    assert np.array_equal(part.first[:, 0], want)
    assert NOT_FLAGGED not in part.first


def test_module_set_paths_agree_and_evaluate_reports_fractions():
    model = Model(resnet_like(3))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 8, 8, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=60)
    ms = quietly(build_modules, model, quietly(observe, model, x[:30], y[:30]))
    fast = ms.decision_function(x[30:], batch_size=8)
    slow = ms.decision_function(x[30:], batch_size=8, shared_pass=False)
    assert np.array_equal(fast.view(np.uint32), slow.view(np.uint32))
    assert np.array_equal(ms.predict(x[30:]), ms.predict(x[30:], shared_pass=False))
    ev = ms.evaluate(x[30:], y[30:])
    ev_slow = ms.evaluate(x[30:], y[30:], shared_pass=False)
    assert ev["top1"] == ev_slow["top1"] and ev["top5"] == ev_slow["top5"]
    for r in ev["modules"]:
        assert 0.0 <= r["needed_pass_fraction"] <= 1.0
        assert 0.0 <= r["recomputed_passes"] <= r["needed_pass_fraction"]
    assert "needed_pass_fraction" not in ev_slow["modules"][0]


def test_modules_of_two_models_get_one_pass_each():
    a, b = Model(resnet_like(4)), Model(resnet_like(5))
    rng = np.random.default_rng(4)
    x = rng.normal(size=(12, 8, 8, 4)).astype(np.float32)
    mods = random_modules(a, rng, 2, 0.05) + random_modules(b, rng, 2, 0.05)
    res = compose_margins(mods, x, 5)
    for j, m in enumerate(mods):
        assert np.array_equal(res.margins[:, j], m.decision_function(x))


def test_memory_is_flat_in_the_number_of_images():
    model = Model(resnet_like(6))
    rng = np.random.default_rng(6)
    mods = random_modules(model, rng, 4, 0.02)
    peaks = []
    for n in (64, 512):
        x = rng.normal(size=(n, 8, 8, 4)).astype(np.float32)
        compose_margins(mods, x, 16)            # warm up (compilation, pools)
        tracemalloc.start()
        compose_margins(mods, x, 16)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # the margins (n x 4 floats) are the only part that grows with n
    assert peaks[1] < peaks[0] + 512 * 4 * 4 * 2 + 64 * 1024


def test_bad_modules_are_refused():
    from refdecomp.errors import RefdecompError

    model = Model(resnet_like())
    mods = random_modules(model, np.random.default_rng(0), 1, 0.1)
    mods[0].masks["c1"] = np.ones((3, 3), np.uint8)
    with pytest.raises(RefdecompError, match="c1"):
        Composer(model, mods)
    with pytest.raises(RefdecompError, match="no modules"):
        Composer(model, [])
    assert ModuleSet([], model).decision_function(np.zeros((2, 8, 8, 4), np.float32)).shape \
        == (2, 0)
