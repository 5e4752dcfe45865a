"""Graded concern identification, whole-channel modules and compact modules: activity counts
against a brute-force NumPy count, the rules' invariants, and compact == masked outputs."""
from __future__ import annotations

import numpy as np
import pytest
from decomp_nets import forward, labelled_batch, quietly, random_graphs
from hypothesis import given, settings
from hypothesis import strategies as st
from interp_graphs import conv_node, dense_node, single

import refdecomp
from refdecomp.decompose import channel_axis
from refdecomp.decompose.concern import activity_masks, keep_masks
from refdecomp.decompose.recording import plan_groups
from refdecomp.errors import RefdecompError
from refdecomp.interpreter import Model, Recorder
from refdecomp.ops import reference as ref

THRESHOLDS = st.sampled_from([0.0, 0.01, 0.1, 0.3, 0.5, 0.9])


def _brute_counts(pre, groups, n_groups):
    """Images of each group with pre-activation > 0, per node (a plain loop over images)."""
    out = np.zeros((n_groups, *pre.shape[1:]), np.int64)
    for i, g in enumerate(groups):
        out[g] += pre[i] > 0
    return out


# -- counts in the recording pass --------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 5), st.integers(1, 40), st.integers(1, 9),
       st.sampled_from(["channels_last", "channels_first"]), st.sampled_from(["1", "3"]))
def test_conv_counts_match_brute_force(seed, n_groups, n, batch_size, fmt, threads):
    rng = np.random.default_rng(seed)
    in_shape = (2, 7, 6) if fmt == "channels_first" else (7, 6, 2)
    node = conv_node("conv", "x", in_shape, 5, (3, 3), (2, 1), "same", (1, 1),
                     {"name": "relu"}, fmt, rng)
    x = rng.standard_normal((n, *in_shape)).astype(np.float32)
    groups = rng.integers(0, n_groups, n)
    model = Model(single(node, in_shape))
    import os
    old = os.environ.get("REFDECOMP_THREADS")
    os.environ["REFDECOMP_THREADS"] = threads
    try:
        rec = Recorder(model, n_groups, counts=True)
        model.run(x, batch_size, recorder=rec, groups=groups, outputs=[])
    finally:
        if old is None:
            del os.environ["REFDECOMP_THREADS"]
        else:
            os.environ["REFDECOMP_THREADS"] = old
    want = _brute_counts(ref.conv2d_linear(node, x), groups, n_groups)
    np.testing.assert_array_equal(rec.counts["conv"], want)
    np.testing.assert_array_equal(rec.seen["conv"], (want > 0).astype(np.uint8))


@pytest.mark.parametrize("engine", ["numba", "reference"])
def test_dense_counts_match_brute_force(engine):
    rng = np.random.default_rng(5)
    node = dense_node("d", "x", 6, 4, {"name": "softmax"}, rng)
    x = rng.standard_normal((53, 6)).astype(np.float32)
    groups = rng.integers(0, 3, 53)
    model = Model(single(node, (6,)), engine=engine)
    rec = Recorder(model, 3, counts=True)
    model.run(x, 8, recorder=rec, groups=groups)
    np.testing.assert_array_equal(rec.counts["d"],
                                  _brute_counts(ref.dense_linear(node, x), groups, 3))
    assert rec.state_bytes_per_group() == 4 * 4


@settings(max_examples=10, deadline=None)
@given(g=random_graphs(), seed=st.integers(0, 1000))
def test_observation_counts_match_brute_force(g, seed):
    x, y, n = labelled_batch(g, seed, 26)
    obs = quietly(refdecomp.observe, Model(g, fold=False), x, y, seed=seed)
    _, pre = forward(g, x)
    np.testing.assert_array_equal(obs.group_sizes,
                                  np.bincount(obs.plan.groups, minlength=obs.plan.n_groups))
    for name, c in obs.counts.items():
        want = _brute_counts(pre[name] > 1e-4, obs.plan.groups, obs.plan.n_groups)
        unsure = _brute_counts(np.abs(pre[name]) <= 1e-4, obs.plan.groups, obs.plan.n_groups)
        assert (c >= want).all() and (c <= want + unsure).all(), name


# -- graded rule and whole channels ------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(g=random_graphs(), seed=st.integers(0, 1000))
def test_threshold_zero_is_the_paper_rule_bit_for_bit(g, seed):
    x, y, _ = labelled_batch(g, seed, 24)
    model = Model(g)
    obs = quietly(refdecomp.observe, model, x, y, seed=seed)
    bits = quietly(refdecomp.observe, model, x, y, seed=seed, counts=False)
    for backtrack in ("none", "last_conv", "input"):
        paper = refdecomp.build_modules(model, bits, backtrack=backtrack)
        graded = refdecomp.build_modules(model, obs, backtrack=backtrack,
                                         activity_threshold=0.0)
        for a, b in zip(paper, graded):
            for name in a.masks:
                np.testing.assert_array_equal(a.masks[name], b.masks[name])
    hidden = list(obs.counts)
    for m in range(len(obs.plan.module_groups)):
        groups = obs.plan.module_groups[m]
        want = keep_masks(bits.seen, groups, hidden)
        got = activity_masks(obs.counts, obs.group_sizes, groups, hidden, 0.0)
        for name in hidden:
            np.testing.assert_array_equal(want[name], got[name])


@settings(max_examples=12, deadline=None)
@given(g=random_graphs(), seed=st.integers(0, 1000), t1=THRESHOLDS, t2=THRESHOLDS,
       granularity=st.sampled_from(["node", "channel"]))
def test_higher_threshold_never_keeps_what_a_lower_removed(g, seed, t1, t2, granularity):
    lo, hi = sorted((t1, t2))
    x, y, _ = labelled_batch(g, seed, 24)
    model = Model(g)
    obs = quietly(refdecomp.observe, model, x, y, seed=seed)
    a = refdecomp.build_modules(model, obs, backtrack="none", activity_threshold=lo,
                                granularity=granularity)
    b = refdecomp.build_modules(model, obs, backtrack="none", activity_threshold=hi,
                                granularity=granularity)
    for ma, mb in zip(a, b):
        for name in ma.masks:
            assert not (mb.masks[name].astype(bool) & ~ma.masks[name].astype(bool)).any()


@settings(max_examples=12, deadline=None)
@given(g=random_graphs(), seed=st.integers(0, 1000), t=THRESHOLDS)
def test_channel_masks_are_constant_over_positions_and_follow_the_mean(g, seed, t):
    x, y, n = labelled_batch(g, seed, 24)
    model = Model(g)
    obs = quietly(refdecomp.observe, model, x, y, seed=seed)
    ms = refdecomp.build_modules(model, obs, backtrack="none", activity_threshold=t,
                                 granularity="channel")
    for c in range(n):
        groups = obs.plan.module_groups[c]
        n_obs = obs.group_sizes[groups].sum()
        for name, mask in ms[c].masks.items():
            axis = channel_axis(model.graph[name])
            per_pos = np.moveaxis(mask, axis, -1).reshape(-1, mask.shape[axis])
            cnt = obs.counts[name][groups].sum(axis=0)
            cnt = np.moveaxis(cnt, axis, -1).reshape(per_pos.shape)
            assert (per_pos == per_pos[:1]).all(), name          # constant over positions
            mean = cnt.sum(axis=0) / max(n_obs * per_pos.shape[0], 1)
            want = (cnt.sum(axis=0) > 0) & (mean >= t - 1e-12)
            np.testing.assert_array_equal(per_pos[0].astype(bool), want)


def test_bad_activity_options_get_one_clear_error():
    from test_decompose import _hand_net
    m = _hand_net()
    x = np.array([[1, 0], [0, 1], [-1, -1]], np.float32)
    obs = refdecomp.observe(m, x, [0, 1, 2])
    for bad in (-0.1, 1.0, 1.5, float("nan"), "0.2", True):
        with pytest.raises(RefdecompError, match="activity_threshold"):
            refdecomp.build_modules(m, obs, activity_threshold=bad)
    with pytest.raises(RefdecompError, match="granularity"):
        refdecomp.build_modules(m, obs, granularity="filter")
    with pytest.raises(RefdecompError, match="granularity"):
        refdecomp.decompose(m, x, [0, 1, 2], granularity="layer")
    bits = refdecomp.observe(m, x, [0, 1, 2], counts=False)
    with pytest.raises(RefdecompError, match="counts"):
        refdecomp.build_modules(m, bits, activity_threshold=0.5)


# -- compact modules ---------------------------------------------------------------------------
def _assert_compact_equals_masked(module, x):
    masked = module.model.run(x, 16, masks=module.masks)[0]
    compact = module.compact()
    np.testing.assert_allclose(compact.predict(x, 16), masked, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(module.predict(x, 16), masked, rtol=1e-4, atol=1e-5)
    size = module.size()
    assert 0 < size["flops_fraction"] <= 1.0 + 1e-9 and 0 < size["params_fraction"] <= 1.0


@settings(max_examples=15, deadline=None)
@given(g=random_graphs(), seed=st.integers(0, 1000), t=THRESHOLDS,
       backtrack=st.sampled_from(["none", "last_conv", "input"]))
def test_compact_module_predicts_what_the_masked_module_predicts(g, seed, t, backtrack):
    """Random graphs: strided and padded convolutions, residual adds, pooling, flatten or
    global pooling, hidden dense layers; channel modules at several thresholds."""
    x, y, n = labelled_batch(g, seed, 24)
    model = Model(g)
    obs = quietly(refdecomp.observe, model, x, y, seed=seed)
    ms = refdecomp.build_modules(model, obs, backtrack=backtrack, activity_threshold=t,
                                 granularity="channel")
    for c in range(n):
        _assert_compact_equals_masked(ms[c], x)


@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_compact_module_on_batch_norm_add_concatenate_graph(fmt):
    from test_export import small_net
    g = small_net(2, fmt)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, *g.input_shapes()[0])).astype(np.float32)
    y = np.arange(60) % 4
    model = Model(g)
    obs = refdecomp.observe(model, x, y)
    for t in (0.0, 0.3, 0.6):
        ms = refdecomp.build_modules(model, obs, backtrack="last_conv", activity_threshold=t,
                                     granularity="channel")
        for m in ms:
            _assert_compact_equals_masked(m, x)
    assert ms[0].size()["flops_fraction"] < 1.0       # t = 0.6 drops filters


@settings(max_examples=10, deadline=None)
@given(g=random_graphs(), seed=st.integers(0, 1000), t=THRESHOLDS,
       granularity=st.sampled_from(["node", "channel"]))
def test_backtracking_to_the_input_after_graded_masks_changes_no_output(g, seed, t, granularity):
    x, y, n = labelled_batch(g, seed, 24)
    model = Model(g)
    obs = quietly(refdecomp.observe, model, x, y, seed=seed)
    plain = refdecomp.build_modules(model, obs, backtrack="none", activity_threshold=t,
                                    granularity=granularity, delta=1e9)
    deep = refdecomp.build_modules(model, obs, backtrack="input", activity_threshold=t,
                                   granularity=granularity, delta=1e9)
    for a, b in zip(plain, deep):
        np.testing.assert_allclose(b.model.run(x, masks=b.masks)[0],
                                   a.model.run(x, masks=a.masks)[0], rtol=1e-5, atol=1e-6)


# -- the paper's sample size -------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.integers(0, 30), min_size=2, max_size=5), seed=st.integers(0, 99),
       caps=st.lists(st.integers(1, 35), min_size=1, max_size=3))
def test_max_per_class_observes_a_seeded_prefix_of_the_own_class(counts, seed, caps):
    y = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(y)
    full = quietly(plan_groups, y, len(counts), "balanced", seed)
    plan = quietly(plan_groups, y, len(counts), "balanced", seed, caps)
    for m in range(len(counts)):                  # no cap: the plan without caps
        np.testing.assert_array_equal(plan.observed(m, None), full.observed(m))
    for cap in caps:
        capped = np.minimum(counts, cap)
        k = capped // (len(counts) - 1)
        for m in range(len(counts)):
            obs = plan.observed(m, cap)
            assert obs[y == m].sum() == capped[m]
            assert not (obs & ~full.observed(m))[y == m].any()   # a prefix of the same order
            for c in range(len(counts)):
                if c != m:
                    assert obs[y == c].sum() == min(k[m], counts[c])


@settings(max_examples=8, deadline=None)
@given(g=random_graphs(), seed=st.integers(0, 1000), cap=st.integers(1, 8))
def test_one_observation_serves_every_max_per_class(g, seed, cap):
    x, y, _ = labelled_batch(g, seed, 30)
    model = Model(g)
    obs = quietly(refdecomp.observe, model, x, y, seed=seed, max_per_class=[cap, 3])
    once = refdecomp.build_modules(model, obs, backtrack="none", max_per_class=cap,
                                   activity_threshold=0.2)
    fresh = quietly(refdecomp.decompose, model, x, y, backtrack="none", seed=seed,
                    max_per_class=cap, activity_threshold=0.2)
    for a, b in zip(once, fresh):
        assert a.info == b.info
        for name in a.masks:
            np.testing.assert_array_equal(a.masks[name], b.masks[name])


def test_bad_max_per_class_gets_one_clear_error():
    from test_decompose import _hand_net
    m = _hand_net()
    x = np.array([[1, 0], [0, 1], [-1, -1]], np.float32)
    for bad in (0, -3, 2.5, "10"):
        with pytest.raises(RefdecompError, match="max_per_class"):
            refdecomp.decompose(m, x, [0, 1, 2], max_per_class=bad)
    obs = refdecomp.observe(m, x, [0, 1, 2], max_per_class=5)
    with pytest.raises(RefdecompError, match="max_per_class=7"):
        refdecomp.build_modules(m, obs, max_per_class=7)


def test_cli_activity_options(tmp_path, capsys):
    from pathlib import Path

    from refdecomp.cli import main
    digits = Path(__file__).resolve().parent.parent / "weights" / "digits_cnn.h5"
    if not digits.exists():
        pytest.skip("weights/digits_cnn.h5 missing")
    pytest.importorskip("sklearn")
    out = tmp_path / "m.h5"
    assert main(["decompose", str(digits), "--data", "digits", "--out", str(out),
                 "--activity-threshold", "1.5", "--no-progress"]) == 2
    assert "activity_threshold" in capsys.readouterr().err
    assert main(["decompose", str(digits), "--data", "digits", "--out", str(out), "--json",
                 "--activity-threshold", "0.3", "--granularity", "channel", "--no-progress"]) == 0
    ms = refdecomp.load_modules(out)
    assert ms.options["activity_threshold"] == 0.3 and ms.options["granularity"] == "channel"
    assert ms[0].size()["flops_fraction"] < 1.0


# -- the trade-off sweep -------------------------------------------------------------------------
def test_tradeoff_sweep_rows_are_the_module_sets_evaluations(tmp_path):
    from test_export import small_net

    from refdecomp.tradeoff import chosen_setting, sweep, tradeoff_report
    g = small_net(1)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, *g.input_shapes()[0])).astype(np.float32)
    y = np.arange(80) % 4
    model = Model(g)
    obs = refdecomp.observe(model, x, y, max_per_class=[5])
    res = sweep(model, obs, x[:40], y[:40], thresholds=[0, 0.4], granularities=["node",
                                                                               "channel"],
                caps=[None, 5])
    assert len(res["rows"]) == 8 and sum(r["paper_rule"] for r in res["rows"]) == 1
    for r in res["rows"]:
        ms = refdecomp.build_modules(model, obs, activity_threshold=r["activity_threshold"],
                                     granularity=r["granularity"],
                                     max_per_class=r["max_per_class"])
        ev = ms.evaluate(x[:40], y[:40])
        assert r["top1"] == ev["top1"]
        assert r["mean_flops_fraction"] == pytest.approx(
            np.mean([m.size()["flops_fraction"] for m in ms]))
    paper = next(r for r in res["rows"] if r["paper_rule"])
    assert paper["cost_top1_pp"] == pytest.approx(
        100 * (res["model"]["top1"] - refdecomp.build_modules(model, obs).evaluate(
            x[:40], y[:40])["top1"]))
    best = chosen_setting(res["rows"], cost_pp=100.0)
    assert best["mean_flops_fraction"] == min(r["mean_flops_fraction"] for r in res["rows"])
    paths = tradeoff_report(tmp_path, "t", res, "test")
    assert paths["json"].exists() and paths["markdown"].exists()
    assert "paper" in paths["markdown"].read_text()


@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_compact_quantum_keeps_multiples_of_eight_filters_exactly(fmt):
    from test_export import random_masks, small_net

    from refdecomp.export import compact_graph
    g = Model(small_net(3, fmt)).graph
    rng = np.random.default_rng(7)
    masks = random_masks(g, rng, p_dead_channel=0.6)
    small, small_masks = compact_graph(g, masks, quantum=8)
    for node in g.nodes_of(("conv2d",)):
        axis = 0 if fmt == "channels_first" else -1
        kept, full = small[node.name].shape[axis], node.shape[axis]
        assert kept == full or kept % 8 == 0, node.name
    x = rng.normal(size=(5, *g.input_shapes()[0])).astype(np.float32)
    np.testing.assert_allclose(Model(small).run(x, masks=small_masks)[0],
                               Model(g).run(x, masks=masks)[0], rtol=1e-5, atol=1e-6)
