"""Composition by margin, "logsumexp" channeling and the scale-free delta rule, against a
brute-force NumPy forward pass (decomp_nets.forward) and hand-made scores."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from decomp_nets import RELU, SOFTMAX, forward, labelled_batch, quietly, random_graphs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refdecomp
from refdecomp import metrics
from refdecomp.decompose.channeling import channel_weights, delta_threshold, head_weights
from refdecomp.errors import RefdecompError
from refdecomp.graph import Graph, Node
from refdecomp.interpreter import Model
from refdecomp.modules import Module, ModuleSet


def _unmasked_set(model: Model, channeling: str) -> ModuleSet:
    """One module per class with no mask at all: each is the model with a channeled head."""
    head = model.graph["head"]
    k, b = head.weights["kernel"], head.weights["bias"]
    mods = [Module(model, c, *head_weights(k, b, c, channeling), {}, channeling=channeling)
            for c in range(k.shape[1])]
    return ModuleSet(mods, model)


def _scaled_head(g: Graph, factor: float) -> Graph:
    head = g["head"]
    w = {k: v * np.float32(factor) for k, v in head.weights.items()}
    return g.with_nodes([n.replace(weights=w) if n.name == "head" else n for n in g])


def _clear_winner(z: np.ndarray, gap: float) -> np.ndarray:
    """Rows whose largest logit beats the runner-up by more than `gap` (float32 rounding of
    the channeled margins cannot reorder those)."""
    top2 = np.sort(z, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] > gap


@settings(max_examples=25, deadline=None)
@given(g=random_graphs(), seed=st.integers(0, 1000),
       channeling=st.sampled_from(["mean", "logsumexp"]),
       scale=st.sampled_from([1.0, 30.0, 300.0]))
def test_unmasked_composition_is_the_models_argmax(g, seed, channeling, scale):
    g = _scaled_head(g, scale)
    model = Model(g)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, *g.input_shapes()[0])).astype(np.float32)
    z = forward(g, x)[1]["head"]                       # float64 logits of the oracle
    ms = _unmasked_set(model, channeling)
    margins = ms.decision_function(x)
    assert margins.dtype == np.float32 and margins.shape == (40, z.shape[1])
    ok = _clear_winner(z, 1e-4 * (1 + np.abs(z).max()))
    np.testing.assert_array_equal(ms.predict_classes(x)[ok], z.argmax(axis=1)[ok])
    np.testing.assert_array_equal(ms.predict(x).argmax(axis=1), margins.argmax(axis=1))


def test_saturating_logits_compose_exactly():
    """|z| ~ 100: P(concerned) is exactly 1.0 for several modules on the same image, so ranking
    probabilities picks the lowest class; ranking margins gives the model's class."""
    rng = np.random.default_rng(0)
    n_cls, fin = 6, 8
    kernel = rng.normal(size=(fin, n_cls)).astype(np.float32) * 40
    g = Graph([Node("in", "input", [], (fin,)),
               Node("head", "dense", ["in"], (n_cls,), {"activation": SOFTMAX},
                    {"kernel": kernel, "bias": np.zeros(n_cls, np.float32)})], ["in"], ["head"])
    model = Model(g)
    x = np.abs(rng.normal(size=(500, fin))).astype(np.float32)
    z = x.astype(np.float64) @ kernel.astype(np.float64)
    assert np.abs(z).max() > 100
    for channeling in ("mean", "logsumexp"):
        ms = _unmasked_set(model, channeling)
        probs = np.stack([m.predict(x)[:, 0] for m in ms], axis=1)
        ok = _clear_winner(z, 1e-3)
        if channeling == "mean":  # several modules saturate on one image: the defect removed
            assert ((probs == 1.0).sum(axis=1) > 1).sum() > 20
            assert (probs.argmax(axis=1) != z.argmax(axis=1))[ok].any()
        else:  # P(concerned) is the model's softmax probability: it saturates too
            assert (probs == 1.0).any()
        np.testing.assert_array_equal(ms.predict_classes(x)[ok], z.argmax(axis=1)[ok])
        ev = ms.evaluate(x, z.argmax(axis=1))
        assert ev["top1"] == pytest.approx(np.mean(ms.predict_classes(x) == z.argmax(axis=1)))
        assert ev["top1"] >= np.mean(ok)
        np.testing.assert_array_equal(ms.predict(x).argmax(axis=1),
                                      ms.decision_function(x).argmax(axis=1))


@settings(max_examples=200, deadline=None)
@given(m=hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 7)),
                    elements=st.floats(-1e4, 1e4, width=32)
                    | st.sampled_from([0.0, 1e-30, 1e-20, -1e-20, 5.0, 5.0000005])))
def test_margin_softmax_keeps_the_argmax_of_the_margins(m):
    p = metrics.margin_softmax(m)
    np.testing.assert_array_equal(p.argmax(axis=1), m.argmax(axis=1))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    top = m.max(axis=1, keepdims=True)
    np.testing.assert_array_equal(p == p.max(axis=1, keepdims=True), m == top)  # ties only


def test_ties_go_to_the_lowest_class_and_are_counted():
    scores = np.array([[1.0, 3.0, 3.0], [2.0, 1.0, 0.0], [5.0, 5.0, 5.0]], np.float32)
    assert metrics.composed_predict(scores).tolist() == [1, 0, 0]
    assert metrics.count_top_ties(scores) == 2
    assert metrics.top_k_accuracy(scores, np.array([2, 0, 1]), 1) == pytest.approx(1 / 3)


@settings(max_examples=10, deadline=None)
@given(g=random_graphs(), seed=st.integers(0, 1000))
def test_logsumexp_module_is_the_models_probability_of_its_class(g, seed):
    model = Model(g)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(20, *g.input_shapes()[0])).astype(np.float32)
    z = forward(g, x)[1]["head"]
    p_model = np.exp(z - z.max(axis=1, keepdims=True))
    p_model /= p_model.sum(axis=1, keepdims=True)
    y = rng.integers(0, z.shape[1], size=20)
    ms = _unmasked_set(model, "logsumexp")
    ev = ms.evaluate(x, y)
    for c, m in enumerate(ms):
        np.testing.assert_allclose(m.predict(x)[:, 0], p_model[:, c], rtol=1e-4, atol=1e-6)
        # the graph (what export writes) computes the same as features -> head_logits
        np.testing.assert_allclose(m.model.run(x)[0], m.predict(x), rtol=1e-5, atol=1e-6)
        assert ev["modules"][c]["binary_accuracy"] == ev["modules"][c]["model_binary_accuracy"]


@settings(max_examples=8, deadline=None)
@given(g=random_graphs(), seed=st.integers(0, 1000))
def test_logsumexp_decomposition_round_trips_and_updates(g, seed, tmp_path_factory):
    x, y, _ = labelled_batch(g, seed, 24)
    model = Model(g)
    ms = quietly(refdecomp.decompose, model, x, y, backtrack="input", channeling="logsumexp",
                 seed=seed)
    assert ms.options["channeling"] == "logsumexp"
    n = g["head"].shape[0]
    assert all(m.head_kernel.shape[1] == n and m.channeling == "logsumexp" for m in ms)
    path = ms.save(tmp_path_factory.mktemp("m") / "lse.h5")
    back = refdecomp.load_modules(path, model=model)
    np.testing.assert_array_equal(back.decision_function(x), ms.decision_function(x))
    from refdecomp.decompose.update import update_module

    u = update_module(ms[0], x[:5])
    assert u.channeling == "logsumexp" and u.head_kernel.shape == ms[0].head_kernel.shape
    # input backtracking after the update still changes no output of the module
    masked = dict(u.masks)
    np.testing.assert_allclose(u.model.run(x, masks=masked)[0], u.predict(x), rtol=1e-5,
                               atol=1e-6)


def test_version_1_module_files_still_load(tmp_path):
    rng = np.random.default_rng(1)
    k = rng.normal(size=(4, 3)).astype(np.float32)
    g = Graph([Node("in", "input", [], (4,)),
               Node("d", "dense", ["in"], (4,), {"activation": RELU},
                    {"kernel": rng.normal(size=(4, 4)).astype(np.float32),
                     "bias": np.zeros(4, np.float32)}),
               Node("head", "dense", ["d"], (3,), {"activation": SOFTMAX},
                    {"kernel": k, "bias": np.zeros(3, np.float32)})], ["in"], ["head"])
    model = Model(g)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    ms = refdecomp.decompose(model, x, np.arange(30) % 3, backtrack="last_conv")
    path = ms.save(tmp_path / "v1.h5")
    with h5py.File(path, "r+") as f:               # what version 1 wrote
        f.attrs["format_version"] = 1
        for grp in f["modules"].values():
            del grp.attrs["channeling"]
    back = refdecomp.load_modules(path, model=model)
    assert all(m.channeling == "mean" for m in back)
    np.testing.assert_array_equal(back.decision_function(x), ms.decision_function(x))


def test_wrong_head_shape_is_refused():
    rng = np.random.default_rng(2)
    g = Graph([Node("in", "input", [], (4,)),
               Node("head", "dense", ["in"], (3,), {"activation": SOFTMAX},
                    {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                     "bias": np.zeros(3, np.float32)})], ["in"], ["head"])
    with pytest.raises(RefdecompError, match="head kernel"):
        Module(Model(g), 0, np.zeros((4, 2), np.float32), np.zeros(2, np.float32), {},
               channeling="logsumexp")
    with pytest.raises(RefdecompError, match="channeling"):
        refdecomp.decompose(Model(g), np.zeros((3, 4), np.float32), [0, 1, 2],
                            channeling="median")


def test_delta_threshold_is_relative_to_the_head_by_default():
    k = np.array([[0.2, -4.0], [1.0, 0.5]], np.float32)
    assert delta_threshold(k, 0.5) == pytest.approx(2.0)
    assert delta_threshold(k, 0.5, "absolute") == 0.5
    for bad in ("big", -1, float("nan"), True):
        with pytest.raises(RefdecompError, match="delta"):
            delta_threshold(k, bad)
    with pytest.raises(RefdecompError, match="delta_scale"):
        delta_threshold(k, 0.5, "log")


@settings(max_examples=10, deadline=None)
@given(g=random_graphs(), seed=st.integers(0, 1000), factor=st.sampled_from([0.01, 10.0]))
def test_relative_delta_removes_the_same_inputs_whatever_the_head_scale(g, seed, factor):
    x, y, _ = labelled_batch(g, seed, 24)
    obs_model = Model(g)
    scaled = Model(_scaled_head(g, factor))
    obs = quietly(refdecomp.observe, obs_model, x, y, seed=seed)
    for delta in (0.05, 0.2):
        a = refdecomp.build_modules(obs_model, obs, delta=delta)
        b = refdecomp.build_modules(scaled, obs, delta=delta)
        assert [m.info["head_inputs_removed"] for m in a] == \
               [m.info["head_inputs_removed"] for m in b]
        # by hand: the prose rule on the mean-channeled head at delta x max|W|
        k, bias = g["head"].weights["kernel"], g["head"].weights["bias"]
        t = delta * np.abs(k).max()
        for c, m in enumerate(a):
            k2 = channel_weights(k, bias, c)[0]
            assert m.info["head_inputs_removed"] == int(((k2[:, 1] >= t) & (k2[:, 0] <= -t)).sum())


FSE20_MNIST = (Path(__file__).resolve().parent.parent.parent / "shared" / "keras-corpus"
               / "decomposeDNNintoModules__MNIST-1_mnist.h5")
MNIST_DIR = FSE20_MNIST.parent.parent / "data"


@pytest.mark.shared
def test_published_model_with_large_head_weights_composes_to_its_own_accuracy():
    """The FSE'20 artifact's dense MNIST model (output weights up to 17.8): every image ties at
    P(concerned) = 1.0 for several "mean" modules, so ranking probabilities falls to about 25%;
    ranking margins gives the model's accuracy, and the relative delta removes nothing."""
    if not FSE20_MNIST.exists() or not (MNIST_DIR / "mnist").exists():
        pytest.skip("needs ../shared (Keras corpus and MNIST)")
    from refdecomp.datasets import load_dataset

    ds = load_dataset("mnist", data_dir=str(MNIST_DIR))
    model = refdecomp.load_model(FSE20_MNIST)
    rng = np.random.default_rng(0)
    tr = rng.permutation(len(ds.y_train))[:6000]
    te = rng.permutation(len(ds.y_test))[:1000]
    x_tr = ds.x_train[tr].astype(np.float32) / 255
    x_te = ds.x_test[te].astype(np.float32) / 255
    y_te = ds.y_test[te]
    model_top1 = np.mean(model.predict(x_te).argmax(axis=1) == y_te)
    obs = refdecomp.observe(model, x_tr, ds.y_train[tr])
    ms = refdecomp.build_modules(model, obs)             # defaults: relative delta, mean
    assert all(m.info["head_inputs_removed"] == 0 for m in ms)
    ev = ms.evaluate(x_te, y_te)
    assert ev["top1"] >= model_top1 - 0.005 and ev["ties_top1"] == 0
    probs = np.stack([m.predict(x_te)[:, 0] for m in ms], axis=1)
    assert metrics.top_k_accuracy(probs, y_te, 1) < 0.5   # what ranking probabilities gave
    absolute = refdecomp.build_modules(model, obs, delta_scale="absolute")
    assert sum(m.info["head_inputs_removed"] for m in absolute) > 0
