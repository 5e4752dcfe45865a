"""Module sets: composition, metrics by hand, and module files."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from decomp_nets import RELU, SOFTMAX, forward

import refdecomp
from refdecomp import metrics
from refdecomp.errors import ModuleFileError
from refdecomp.graph import Graph, Node
from refdecomp.interpreter import Model


def _net(seed=0, n=4):
    rng = np.random.default_rng(seed)
    g = Graph([Node("in", "input", [], (6, 6, 2)),
               Node("c", "conv2d", ["in"], (4, 4, 3),
                    {"strides": (1, 1), "padding": "valid", "dilation": (1, 1),
                     "activation": RELU, "data_format": "channels_last"},
                    {"kernel": rng.normal(size=(3, 3, 2, 3)).astype(np.float32),
                     "bias": rng.normal(size=3).astype(np.float32)}),
               Node("f", "flatten", ["c"], (48,), {"data_format": "channels_last"}),
               Node("head", "dense", ["f"], (n,), {"activation": SOFTMAX},
                    {"kernel": rng.normal(size=(48, n)).astype(np.float32),
                     "bias": rng.normal(size=n).astype(np.float32)})], ["in"], ["head"])
    return Model(g)


def _data(model, n=60, seed=1):
    x = np.random.default_rng(seed).normal(size=(n, 6, 6, 2)).astype(np.float32)
    return x, np.arange(n) % 4


def test_top_k_and_ties_by_hand():
    s = np.array([[0.2, 0.5, 0.5], [0.9, 0.1, 0.0], [0.1, 0.2, 0.7]])
    np.testing.assert_array_equal(metrics.composed_predict(s), [1, 0, 2])
    assert metrics.top_k_accuracy(s, [2, 0, 1], 1) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy(s, [2, 0, 1], 2) == pytest.approx(1.0)
    np.testing.assert_array_equal(metrics.composed_predict(s, np.array([7, 8, 9])), [8, 7, 9])


def test_jaccard_values_is_the_prior_formula():
    a = np.array([1.0, 2.0, 2.0, 0.0])
    b = np.array([2.0, 0.0, 0.0, 5.0, 6.0])
    # distinct common values {0, 2} -> 2 / (4 + 5 - 2)
    assert metrics.jaccard_values(a, b) == pytest.approx(2 / 7)


def test_module_size_by_hand():
    # dense 3 -> 2 with input node 2 masked by its producer and output unit 1 masked
    g = Graph([Node("in", "input", [], (3,)),
               Node("a", "dense", ["in"], (3,), {"activation": RELU},
                    {"kernel": np.ones((3, 3), np.float32), "bias": np.zeros(3, np.float32)}),
               Node("b", "dense", ["a"], (2,), {"activation": RELU},
                    {"kernel": np.ones((3, 2), np.float32), "bias": np.zeros(2, np.float32)}),
               Node("head", "dense", ["b"], (2,), {"activation": SOFTMAX},
                    {"kernel": np.ones((2, 2), np.float32), "bias": np.zeros(2, np.float32)})],
              ["in"], ["head"])
    masks = {"a": np.array([1, 1, 0], np.uint8), "b": np.array([1, 0], np.uint8)}
    size = metrics.module_size(g, masks, frozenset({"head"}))
    # a: 3 inputs (all kept) x 2 kept outputs = 6 of 9; b: 2 kept inputs x 1 kept output = 2 of 6
    assert (size["weights_kept"], size["weights_total"]) == (8, 15)
    assert (size["nodes_kept"], size["nodes_total"]) == (3, 5)
    assert metrics.jaccard_set(g, masks, frozenset({"head"})) == pytest.approx(8 / 15)


def test_conv_kept_weights_brute_force():
    model = _net()
    g = model.graph
    rng = np.random.default_rng(3)
    mask = (rng.random((4, 4, 3)) < 0.3).astype(np.uint8)
    used = metrics.kept_weights(g, {"c": mask}, frozenset({"head"}))["c"]
    want = np.zeros((3, 3, 2, 3), bool)
    for _, _, co in zip(*np.nonzero(mask)):
        want[:, :, :, co] = True  # valid padding: every tap of a kept output reads a real input
    np.testing.assert_array_equal(used, want)


def test_composition_and_evaluate_against_independent_scores():
    model = _net()
    x, y = _data(model)
    ms = refdecomp.decompose(model, x, y, backtrack="last_conv")
    _, pre = forward(model.graph, x)                      # brute-force oracle, float64
    margins = []
    for c in range(4):
        m = ms[c]
        feats = (np.maximum(pre["c"], 0) * m.masks["c"]).reshape(len(x), -1)
        z = feats @ m.head_kernel.astype(np.float64) + m.head_bias
        margins.append(z[:, 0] - z[:, 1])
    margins = np.stack(margins, axis=1)
    np.testing.assert_allclose(ms.decision_function(x), margins, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(ms.predict(x).argmax(axis=1),
                                  ms.decision_function(x).argmax(axis=1))
    np.testing.assert_allclose(ms.predict(x).sum(axis=1), 1.0)
    ev = ms.evaluate(x, y)
    assert ev["top1"] == pytest.approx(np.mean(margins.argmax(axis=1) == y))
    assert ev["top5"] == 1.0  # 4 classes
    probs = model.predict(x)
    for c, row in enumerate(ev["modules"]):
        assert row["binary_accuracy"] == pytest.approx(np.mean((margins[:, c] >= 0) == (y == c)))
        assert row["model_binary_accuracy"] == pytest.approx(
            np.mean((probs[:, c] >= 0.5) == (y == c)))
        assert 0 <= row["jaccard_values"] <= 1 and 0 <= row["jaccard_set"] <= 1


def test_masks_zero_nodes_after_activation():
    model = _net()
    x, y = _data(model)
    ms = refdecomp.decompose(model, x, y, backtrack="none")
    m = ms[0]
    vals, pre = forward(model.graph, x)
    c = np.maximum(pre["c"], 0) * m.masks["c"]
    z = c.reshape(len(x), -1) @ m.head_kernel.astype(np.float64) + m.head_bias
    e = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(m.predict(x), e / e.sum(axis=1, keepdims=True), atol=1e-5)


def test_save_load_round_trip(tmp_path):
    model = _net()
    x, y = _data(model)
    ms = refdecomp.decompose(model, x, y, backtrack="input", class_names=list("abcd"))
    path = ms.save(tmp_path / "mods.h5")
    back = refdecomp.load_modules(path, model=model)
    np.testing.assert_array_equal(back.predict(x), ms.predict(x))
    assert back.options == ms.options and back[2].class_name == "c"
    for c in range(4):
        for k in ms[c].masks:
            np.testing.assert_array_equal(back[c].masks[k], ms[c].masks[k])
    with h5py.File(path) as f:  # masks are bit-packed
        d = f["modules/0/masks/0"]
        assert d.dtype == np.uint8 and d.shape[0] == (int(np.prod(d.attrs["shape"])) + 7) // 8
    assert not list(tmp_path.glob(".*"))  # atomic write leaves no temporary file


def test_load_refuses_other_model_and_other_files(tmp_path):
    model = _net()
    x, y = _data(model)
    path = refdecomp.decompose(model, x, y).save(tmp_path / "m.h5")
    with pytest.raises(ModuleFileError, match="different"):
        refdecomp.load_modules(path, model=_net(seed=5))
    with pytest.raises(ModuleFileError, match="not available"):
        refdecomp.load_modules(path)  # in-memory model: no file to find
    (tmp_path / "t.h5").write_text("hello")
    with pytest.raises(ModuleFileError, match="HDF5"):
        refdecomp.load_modules(tmp_path / "t.h5", model=model)
    with h5py.File(tmp_path / "o.h5", "w") as f:
        f.attrs["format"] = "other"
    with pytest.raises(ModuleFileError, match="not a refdecomp module file"):
        refdecomp.load_modules(tmp_path / "o.h5", model=model)
