"""Decomposition steps (Sections 3.2-3.4) against hand-worked networks, a brute-force forward
oracle and the algorithm's invariants."""
from __future__ import annotations

import numpy as np
import pytest
from decomp_nets import RELU, SOFTMAX, forward, labelled_batch, quietly, random_graphs
from hypothesis import given, settings
from hypothesis import strategies as st

import refdecomp
from refdecomp.decompose.channeling import channel_weights, delta_removals, find_head
from refdecomp.decompose.recording import plan_groups
from refdecomp.decompose.tangling import tangling_counts
from refdecomp.errors import DataError, RefdecompError, UnsupportedLayerError
from refdecomp.graph import Graph, Node
from refdecomp.interpreter import Model


def _hand_net():
    """2 inputs -> 3 relu units (u0 = x0, u1 = x1, u2 = -x0 - x1) -> 3-class softmax head."""
    k1 = np.array([[1, 0, -1], [0, 1, -1]], np.float32)
    head = np.array([[2, 0, 0], [0, 2, 0], [0, 0, 2]], np.float32)
    g = Graph([Node("in", "input", [], (2,)),
               Node("d", "dense", ["in"], (3,), {"activation": RELU},
                    {"kernel": k1, "bias": np.zeros(3, np.float32)}),
               Node("head", "dense", ["d"], (3,), {"activation": SOFTMAX},
                    {"kernel": head, "bias": np.zeros(3, np.float32)})], ["in"], ["head"])
    return Model(g)


def test_hand_concern_identification_without_tangling():
    # one image per class: K = floor(1 / 2) = 0, so each module sees its own image only
    x = np.array([[1, 0], [0, 1], [-1, -1]], np.float32)
    ms = refdecomp.decompose(_hand_net(), x, [0, 1, 2], backtrack="none")
    assert [ms[c].masks["d"].tolist() for c in range(3)] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert "head" not in ms[0].masks


def test_hand_tangling_brings_back_nodes():
    # two images per class: K = floor(2 / 2) = 1 image of each other class
    x = np.array([[1, 0], [2, 0], [0, 1], [0, 2], [-1, -1], [-2, -2]], np.float32)
    ms = refdecomp.decompose(_hand_net(), x, [0, 0, 1, 1, 2, 2], backtrack="none")
    for c in range(3):
        assert ms[c].masks["d"].tolist() == [1, 1, 1]
        assert ms[c].info["observed_images"] == 4
    ms = refdecomp.decompose(_hand_net(), x, [0, 0, 1, 1, 2, 2], backtrack="none",
                             tangling="none")
    assert ms[1].masks["d"].tolist() == [0, 1, 0]


def test_hand_channeling_and_prediction():
    x = np.array([[3, 0], [0, 1], [-1, -1]], np.float32)
    ms = refdecomp.decompose(_hand_net(), x, [0, 1, 2], backtrack="none")
    # module 0 keeps u0 only; head: concerned weight 2 on u0, unconcerned = mean(0, 0) = 0
    p = ms[0].predict(np.array([[3, 0]], np.float32))
    e = np.exp([6.0, 0.0])
    np.testing.assert_allclose(p[0], e / e.sum(), rtol=1e-6)
    np.testing.assert_array_equal(ms.predict_classes(x), [0, 1, 2])


@given(counts=st.lists(st.integers(0, 40), min_size=2, max_size=8))
def test_tangling_counts_follow_floor_rule(counts):
    k = tangling_counts(np.array(counts))
    assert k.tolist() == [e // (len(counts) - 1) for e in counts]
    assert tangling_counts(np.array(counts), "none").tolist() == [0] * len(counts)
    assert tangling_counts(np.array(counts), 3).tolist() == [3] * len(counts)


@settings(max_examples=40)
@given(counts=st.lists(st.integers(0, 30), min_size=2, max_size=6), seed=st.integers(0, 99),
       tangling=st.sampled_from(["balanced", "none", 2]))
def test_plan_groups_observes_own_class_and_nested_tangling_samples(counts, seed, tangling):
    y = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(y)
    plan = quietly(plan_groups, y, len(counts), tangling, seed)
    k = tangling_counts(np.array(counts), tangling)
    obs = [plan.observed(m) for m in range(len(counts))]
    for m in range(len(counts)):
        assert obs[m][y == m].all()
        for c in range(len(counts)):
            if c != m:
                assert obs[m][y == c].sum() == min(k[m], counts[c])
    for m1 in range(len(counts)):  # nested samples: smaller K -> subset of the other classes
        for m2 in range(len(counts)):
            if k[m1] <= k[m2]:
                other = (y != m1) & (y != m2)
                assert not (obs[m1] & other & ~obs[m2]).any()


def test_plan_groups_warns_for_short_classes():
    y = np.array([0] * 10 + [1] * 1 + [2] * 10)
    with pytest.warns(UserWarning, match="class 1, which has only 1"):
        plan_groups(y, 3)


@given(st.integers(0, 10**6), st.integers(2, 7), st.integers(1, 6))
def test_channeled_head_is_the_mean_formula(seed, n, fin):
    rng = np.random.default_rng(seed)
    k, b = rng.normal(size=(fin, n)), rng.normal(size=n)
    for c in range(n):
        k2, b2 = channel_weights(k, b, c)
        others = [j for j in range(n) if j != c]
        np.testing.assert_allclose(k2[:, 0], k[:, c])
        np.testing.assert_allclose(k2[:, 1], k[:, others].sum(axis=1) / (n - 1))
        np.testing.assert_allclose(b2, [b[c], b[others].sum() / (n - 1)])


def test_delta_rules_by_hand():
    k2 = np.array([[0.6, -0.7], [-0.6, 0.7], [0.4, -0.9], [0.0, 0.0]], np.float32)
    assert delta_removals(k2, 0.5, "pseudocode").tolist() == [True, False, False, False]
    assert delta_removals(k2, 0.5, "prose").tolist() == [False, True, False, False]
    with pytest.raises(RefdecompError, match="delta_rule"):
        delta_removals(k2, 0.5, "other")


@settings(max_examples=15)
@given(g=random_graphs(), seed=st.integers(0, 1000))
def test_concern_identification_matches_brute_force(g, seed):
    x, y, n = labelled_batch(g, seed, 24)
    ms = quietly(refdecomp.decompose, Model(g, fold=False), x, y, backtrack="none", seed=seed)
    plan = quietly(plan_groups, y, n, "balanced", seed)
    _, pre = forward(g, x)
    for c in range(n):
        obs = plan.observed(c)
        for name, mask in ms[c].masks.items():
            want = (pre[name][obs] > 1e-4).any(axis=0)
            unsure = np.abs(pre[name][obs]).min(axis=0, initial=np.inf) <= 1e-4
            assert np.array_equal(mask.astype(bool) | unsure, want | unsure), name


@settings(max_examples=15)
@given(g=random_graphs(), seed=st.integers(0, 1000))
def test_more_observed_inputs_never_remove_nodes(g, seed):
    x, y, n = labelled_batch(g, seed, 30)
    model = Model(g)
    few = quietly(refdecomp.decompose, model, x, y, backtrack="none", tangling=1, seed=seed)
    more = quietly(refdecomp.decompose, model, x, y, backtrack="none", tangling=3, seed=seed)
    for c in range(n):
        for name in few[c].masks:
            assert not (few[c].masks[name] & ~more[c].masks[name].astype(bool)).any()


@settings(max_examples=10)
@given(g=random_graphs(), seed=st.integers(0, 1000))
def test_module_without_masks_is_the_channeled_model(g, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(10, *g.input_shapes()[0])).astype(np.float32)
    n = g["head"].shape[0]
    ms = refdecomp.decompose(Model(g), x, np.arange(10) % n, backtrack="none")
    vals, pre = forward(g, x)
    z = pre["head"]
    for c in range(n):
        ms[c].masks = {}
        uc = np.delete(z, c, axis=1).mean(axis=1)
        e = np.exp(np.stack([z[:, c], uc], axis=1) - np.maximum(z[:, c], uc)[:, None])
        np.testing.assert_allclose(ms[c].predict(x), e / e.sum(axis=1, keepdims=True),
                                   rtol=1e-4, atol=1e-5)


def test_errors_name_the_argument():
    m = _hand_net()
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(DataError, match="labels"):
        refdecomp.decompose(m, x, [0, 1, 5])
    with pytest.raises(DataError, match="3 images"):
        refdecomp.decompose(m, x, [0, 1])
    with pytest.raises(RefdecompError, match="backtrack"):
        refdecomp.decompose(m, x, [0, 1, 2], backtrack="everything")
    g = m.graph
    bad = g.with_nodes([*g.nodes[:-1], g.nodes[-1].replace(attrs={"activation":
                                                                  {"name": "sigmoid"}})])
    with pytest.raises(UnsupportedLayerError, match="'head'.*sigmoid"):
        find_head(bad)


@settings(max_examples=8)
@given(g=random_graphs(), seed=st.integers(0, 1000))
def test_one_observation_builds_what_decompose_builds_for_every_setting(g, seed):
    x, y, _ = labelled_batch(g, seed, 24)
    model = Model(g)
    obs = quietly(refdecomp.observe, model, x, y, seed=seed)
    for backtrack in ("none", "last_conv", "input"):
        once = refdecomp.build_modules(model, obs, backtrack=backtrack)
        fresh = quietly(refdecomp.decompose, model, x, y, backtrack=backtrack, seed=seed)
        assert once.options == fresh.options
        for a, b in zip(once, fresh):
            assert a.masks.keys() == b.masks.keys()
            for name in a.masks:
                np.testing.assert_array_equal(a.masks[name], b.masks[name])


def test_observation_of_another_model_is_refused():
    m = _hand_net()
    x = np.zeros((3, 2), np.float32)
    obs = refdecomp.observe(m, x, [0, 1, 2], tangling="none")
    renamed = [n.replace(name="d2" if n.name == "d" else n.name,
                         inputs=["d2" if i == "d" else i for i in n.inputs]) for n in m.graph]
    other = Model(Graph(renamed, ["in"], ["head"]))
    with pytest.raises(DataError, match="different model"):
        refdecomp.build_modules(other, obs)
