"""Numba kernels against the NumPy reference ops and brute-force loops (hypothesis on shapes)."""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from interp_graphs import brute_conv, brute_pool, conv_node, dense_node, single
from numba import njit

from refdecomp.activations import activation_code
from refdecomp.graph import Node
from refdecomp.interpreter import Model, Recorder
from refdecomp.kernels import isa, microkernel_source
from refdecomp.kernels.add import add as add_kernel
from refdecomp.kernels.conv import SIGNATURE, channel_blocks, microkernels
from refdecomp.kernels.epilogue import PerThreadRecord, apply_activation, epilogue
from refdecomp.kernels.jit import compile_vectorized
from refdecomp.kernels.pool import pool2d
from refdecomp.ops import reference as ref

FAST = settings(max_examples=25)

conv_cases = st.fixed_dictionaries({
    "n": st.integers(1, 3), "h": st.integers(1, 9), "w": st.integers(1, 20),
    # up to 70 output channels: every micro-kernel width of every variant (32, 16, 8, 4, 1) and
    # their mixes; up to 20 columns: full pixel blocks (3, 4, 8, 16) plus row-end remainders
    "cin": st.integers(1, 4), "cout": st.one_of(st.integers(1, 5), st.integers(6, 70)),
    "kernel": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "strides": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "dilation": st.sampled_from([(1, 1), (2, 2), (1, 2)]),
    "padding": st.sampled_from(["valid", "same"]),
    "data_format": st.sampled_from(["channels_last", "channels_first"]),
    "seed": st.integers(0, 2**16),
})


def _conv_setup(c, activation=None):
    """A random conv2d node for case `c`, its input shape, a random batch and the generator."""
    activation = activation or {"name": "linear"}
    rng = np.random.default_rng(c["seed"])
    cf = c["data_format"] == "channels_first"
    in_shape = (c["cin"], c["h"], c["w"]) if cf else (c["h"], c["w"], c["cin"])
    node = conv_node("conv", "x", in_shape, c["cout"], c["kernel"], c["strides"], c["padding"],
                     c["dilation"], activation, c["data_format"], rng)
    x = rng.standard_normal((c["n"], *in_shape)).astype(np.float32)
    return node, in_shape, x, rng


@FAST
@given(conv_cases)
def test_conv_kernel_matches_reference_and_brute_force(c):
    node, in_shape, x, _ = _conv_setup(c)
    if 0 in node.shape:
        return                                   # no valid output position: nothing to compare
    got = Model(single(node, in_shape)).predict(x)
    want = ref.conv2d(node, [x])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    xh = ref.to_nhwc(x, c["data_format"])
    brute = ref.from_nhwc(brute_conv(xh, node.weights["kernel"], node.weights["bias"],
                                     c["strides"], c["padding"], c["dilation"]), c["data_format"])
    np.testing.assert_allclose(want, brute, rtol=1e-4, atol=1e-4)


def test_same_stride2_odd_size_pads_bottom_right():
    """Keras `same`, stride 2 on an odd size: the single pad cell goes at the bottom/right, so
    the first output reads rows/cols 0..1 and the last output's window hangs off the end."""
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    node = conv_node("c", "x", (5, 5, 1), 1, (2, 2), (2, 2), "same", bias=False)
    node.weights["kernel"][:] = 1.0
    y = Model(single(node, (5, 5, 1))).predict(x)[0, :, :, 0]
    assert y.shape == (3, 3)
    assert y[0, 0] == x[0, 0:2, 0:2, 0].sum()
    assert y[2, 2] == x[0, 4, 4, 0]


pool_cases = st.fixed_dictionaries({
    "n": st.integers(1, 3), "h": st.integers(1, 9), "w": st.integers(1, 9),
    "c": st.integers(1, 4), "pool": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "strides": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "padding": st.sampled_from(["valid", "same"]), "is_max": st.booleans(),
    "data_format": st.sampled_from(["channels_last", "channels_first"]),
    "seed": st.integers(0, 2**16),
})


@FAST
@given(pool_cases)
def test_pool_kernel_matches_reference_and_brute_force(c):
    rng = np.random.default_rng(c["seed"])
    x = rng.standard_normal((c["n"], c["h"], c["w"], c["c"])).astype(np.float32)
    if c["padding"] == "valid" and (c["pool"][0] > c["h"] or c["pool"][1] > c["w"]):
        return
    brute = brute_pool(x, c["pool"], c["strides"], c["padding"], c["is_max"])
    got = pool2d(x, c["pool"], c["strides"], c["padding"], c["is_max"])
    np.testing.assert_allclose(got, brute, rtol=1e-5, atol=1e-6)
    # through the interpreter, in the requested layout, against the reference op
    fmt = c["data_format"]
    xf = ref.from_nhwc(x, fmt)
    op = "max_pool2d" if c["is_max"] else "avg_pool2d"
    node = Node("p", op, ["x"], ref.from_nhwc(got, fmt).shape[1:],
                dict(pool=c["pool"], strides=c["strides"], padding=c["padding"],
                     data_format=fmt))
    want = ref.run_node(node, [xf])
    np.testing.assert_allclose(want, ref.from_nhwc(brute, fmt), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Model(single(node, xf.shape[1:])).predict(xf), want,
                               rtol=1e-5, atol=1e-6)


def test_max_pool_same_never_picks_padding():
    x = -np.ones((1, 3, 3, 1), np.float32) * 5
    assert (pool2d(x, (2, 2), (2, 2), "same", True) == -5).all()


@FAST
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), st.integers(0, 2),
       st.integers(0, 2**16))
def test_dense_kernel_matches_reference(n, n_in, n_out, lead_rank, seed):
    rng = np.random.default_rng(seed)
    lead = tuple(rng.integers(1, 4, lead_rank))
    node = dense_node("d", "x", n_in, n_out, {"name": "tanh"}, rng, lead)
    x = rng.standard_normal((n, *lead, n_in)).astype(np.float32)
    got = Model(single(node, (*lead, n_in))).predict(x)
    want = np.tanh(x.astype(np.float64) @ node.weights["kernel"] + node.weights["bias"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref.dense(node, [x]), want, rtol=1e-5, atol=1e-5)


ACTIVATIONS = [
    {"name": "linear"}, {"name": "relu"}, {"name": "relu", "max_value": 1.5},
    {"name": "relu", "negative_slope": 0.1}, {"name": "relu", "threshold": 0.5},
    {"name": "relu", "max_value": 2.0, "negative_slope": 0.1, "threshold": 0.5},
    {"name": "relu", "max_value": 6.0},
    {"name": "leaky_relu", "negative_slope": 0.3}, {"name": "elu", "alpha": 0.7},
    {"name": "selu"}, {"name": "sigmoid"}, {"name": "hard_sigmoid", "dialect": "keras2"},
    {"name": "hard_sigmoid", "dialect": "keras3"}, {"name": "tanh"}, {"name": "softplus"},
    {"name": "softsign"}, {"name": "exponential"}, {"name": "swish"}, {"name": "silu"},
    {"name": "relu6"}, {"name": "gelu", "approximate": True},
    {"name": "gelu", "approximate": False}, {"name": "mish"}, {"name": "hard_silu"},
]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: "-".join(map(str, a.values())))
def test_kernel_activations_match_reference(act):
    x = np.linspace(-8, 8, 801).astype(np.float32)
    code = activation_code(act)
    assert code is not None
    got = np.array([apply_activation(v, *code) for v in x], np.float32)
    np.testing.assert_allclose(got, ref.activate(x, act), rtol=1e-5, atol=1e-6)
    # and fused after a dense layer (identity weights)
    node = Node("d", "dense", ["x"], (801,), {"activation": act},
                {"kernel": np.eye(801, dtype=np.float32), "bias": np.zeros(801, np.float32)})
    np.testing.assert_allclose(Model(single(node, (801,))).predict(x[None])[0],
                               ref.activate(x, act), rtol=1e-5, atol=1e-5)


@FAST
@given(st.integers(2, 4), st.integers(1, 50), st.sampled_from(ACTIVATIONS[:8]),
       st.integers(0, 2**16))
def test_add_kernel(n_inputs, size, act, seed):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((2, size)).astype(np.float32) for _ in range(n_inputs)]
    got = add_kernel(xs, activation_code(act))
    np.testing.assert_allclose(got, ref.activate(sum(xs), act), rtol=1e-5, atol=1e-5)


# -- recording and masks ---------------------------------------------------------------------
def _brute_seen(pre, groups, n_groups):
    """(pre-activation > 0) OR-reduced over the images of each group."""
    seen = np.zeros((n_groups, *pre.shape[1:]), np.uint8)
    for i, g in enumerate(groups):
        seen[g] |= (pre[i] > 0)
    return seen


@FAST
@given(conv_cases, st.integers(1, 5), st.integers(1, 4))
def test_conv_recording_matches_brute_force(c, n_groups, batch_size):
    node, in_shape, x, rng = _conv_setup(c, {"name": "relu"})
    if 0 in node.shape:
        return
    model = Model(single(node, in_shape))
    groups = rng.integers(0, n_groups, len(x))
    rec = Recorder(model, n_groups)
    model.run(x, batch_size, recorder=rec, groups=groups, outputs=[])
    pre = ref.conv2d_linear(node, x)
    np.testing.assert_array_equal(rec.seen["conv"], _brute_seen(pre, groups, n_groups))


@FAST
@given(conv_cases, st.sampled_from([{"name": "relu"}, {"name": "sigmoid"},
                                    {"name": "softmax"}]))
def test_conv_masks_match_reference(c, act):
    node, in_shape, x, rng = _conv_setup(c, act)
    if 0 in node.shape:
        return
    mask = (rng.random(node.shape) > 0.4).astype(np.uint8)
    got = Model(single(node, in_shape)).run(x, 2, masks={"conv": mask})[0]
    want = ref.conv2d(node, [x]) * mask
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert (got[:, mask == 0] == 0).all()


def test_dense_recording_and_mask_with_fallback_activation():
    rng = np.random.default_rng(3)
    node = dense_node("d", "x", 6, 4, {"name": "softmax"}, rng)
    x = rng.standard_normal((37, 6)).astype(np.float32)
    groups = rng.integers(0, 3, 37)
    mask = np.array([1, 0, 1, 1], np.uint8)
    model = Model(single(node, (6,)))
    rec = Recorder(model, 3)
    y = model.run(x, 8, recorder=rec, groups=groups, masks={"d": mask})[0]
    pre = ref.dense_linear(node, x)
    np.testing.assert_array_equal(rec.seen["d"], _brute_seen(pre, groups, 3))
    np.testing.assert_allclose(y, ref.softmax(pre) * mask, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("counting", [False, True])
def test_per_thread_records_combine_every_threads_writes(counting):
    """Each thread records into its own copy; `total` ORs bits / sums counts over all copies,
    so what one thread recorded is never lost to another's store (brute-force reference)."""
    import threading

    rng = np.random.default_rng(5)
    rows, C, n_groups = 6 * 4, 5, 3
    ys = [rng.standard_normal((rows, C)).astype(np.float32) for _ in range(4)]
    groups = [rng.integers(0, n_groups, 6).astype(np.int64) for _ in range(4)]
    rec = PerThreadRecord(n_groups, 4 * C, counting)
    act, no_mask, bias = activation_code({"name": "relu"}), np.empty(0, np.uint8), \
        np.zeros(C, np.float32)

    def work(i):
        epilogue(ys[i].copy(), bias, *act, 4, no_mask, C, 1, rec.local(), C, 1, groups[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    want = np.zeros((n_groups, 4 * C), np.uint32)
    for y, g in zip(ys, groups):
        for i in range(6):
            want[g[i]] += (y[i * 4:(i + 1) * 4].reshape(-1) > 0)
    got = rec.total()
    assert got.dtype == (np.uint32 if counting else np.uint8)
    np.testing.assert_array_equal(got, want if counting else (want > 0).astype(np.uint8))
    rec.reset()
    assert not rec.total().any()


@pytest.mark.parametrize("n", [5, 13, 100])
def test_threaded_blocks_match_single_thread(monkeypatch, n):
    """Splitting batches over worker threads changes neither outputs nor recordings: per layer
    (5 images on 3 threads: too few for whole-network parts) and in whole-network parts (13
    and 100 images: 3 and 4 parts, several recording into the same groups at once)."""
    rng = np.random.default_rng(11)
    node = conv_node("conv", "x", (9, 9, 3), 6, (3, 3), (2, 2), "same", activation={"name":
                                                                                    "relu"},
                     rng=rng)
    x = rng.standard_normal((n, 9, 9, 3)).astype(np.float32)
    groups = rng.integers(0, 4, n)
    model = Model(single(node, (9, 9, 3)))
    results = []
    for threads in ("1", "3"):
        monkeypatch.setenv("REFDECOMP_THREADS", threads)
        rec = Recorder(model, 4)
        y = model.run(x, n, recorder=rec, groups=groups)[0]
        results.append((y, rec.seen["conv"]))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[1][1], _brute_seen(ref.conv2d_linear(node, x),
                                                             groups, 4))


@FAST
@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 70), st.sampled_from(ACTIVATIONS),
       st.booleans(), st.booleans(), st.integers(0, 2**16))
def test_epilogue_flat_and_strided_layouts_agree_with_numpy(n, positions, channels, act, masked,
                                                            recorded, seed):
    """The epilogue's contiguous (channels-last) fast path and its strided path give the same
    outputs and bit maps as a NumPy formulation, for blocks that do and do not divide evenly."""
    from refdecomp.kernels.epilogue import _epilogue_rows, epilogue
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((n * positions, channels)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    code = activation_code(act)
    groups = rng.integers(0, 3, n).astype(np.int32)
    mask = (rng.random(positions * channels) > 0.3).astype(np.uint8) if masked \
        else np.empty(0, np.uint8)
    seen_shape = (3, positions * channels) if recorded else (0, 0)
    pre = (y + bias).reshape(n, positions * channels)
    want_y = ref.activate(pre, act).astype(np.float32)
    if masked:
        want_y = want_y * mask
    outs = []
    for fn in (epilogue, _epilogue_rows):
        yy, seen = y.copy(), np.zeros(seen_shape, np.uint8)
        fn(yy, bias, *code, positions, mask, channels, 1, seen, channels, 1, groups)
        outs.append((yy, seen))
        np.testing.assert_allclose(yy.reshape(n, -1), want_y, rtol=1e-5, atol=1e-6)
        if recorded:
            np.testing.assert_array_equal(seen, _brute_seen(pre, groups, 3))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("variant, cout, blocks", [
    ("avx512", 64, [(0, 32, 2)]), ("avx512", 16, [(0, 16, 1)]),
    ("avx512", 10, [(0, 8, 1), (8, 1, 2)]),
    ("avx512", 63, [(0, 32, 1), (32, 16, 1), (48, 8, 1), (56, 4, 1), (60, 1, 3)]),
    ("avx512", 3, [(0, 1, 3)]), ("avx2", 64, [(0, 32, 2)]),
    ("avx2", 62, [(0, 32, 1), (32, 16, 1), (48, 8, 1), (56, 4, 1), (60, 1, 2)]),
    ("portable", 21, [(0, 8, 2), (16, 4, 1), (20, 1, 1)])])
def test_channel_blocks_cover_every_channel_once(variant, cout, blocks):
    assert channel_blocks(cout, variant) == blocks


@pytest.mark.parametrize("variant", sorted(microkernel_source.TILES))
def test_generated_microkernels_are_current(variant):
    """kernels/microkernels_<isa>.py is exactly what its generator writes (regenerate with
    `python -m refdecomp.kernels.microkernel_source`)."""
    assert microkernel_source.target(variant).read_text() == microkernel_source.render(variant)


@pytest.mark.parametrize("cpu, features, variant", [
    ("znver4", "+avx2,+avx512f,+fma,+sse2", "avx512"),
    ("haswell", "+avx2,+avx512f,+fma", "avx512"),       # the name alone does not drop AVX-512
    ("haswell", "+avx,+avx2,+fma,-avx512f", "avx2"), ("znver3", "", "avx2"),
    ("skylake-avx512", "", "avx512"), ("skylake-avx512", "-avx512f", "avx2"),
    ("sandybridge", "+avx,+sse2", "portable"), ("generic", "", "portable"),
    ("skylake-avx512", "+avx2", "avx512"), ("haswell", "-fma", "portable"),
    ("neoverse-n1", "+neon,+fp-armv8", "portable"), ("apple-m1", "", "portable")])
def test_variant_follows_numba_target(cpu, features, variant):
    assert isa.choose(cpu, features) == variant


def test_chosen_variant_is_the_one_loaded():
    """The kernels in use are the chosen variant's module, itself chosen from Numba's
    target (so Numba's cache, keyed by file and target CPU, never serves another's code)."""
    assert isa.choose(*isa.numba_target()) == isa.ISA
    assert microkernels.__name__ == f"refdecomp.kernels.microkernels_{isa.ISA}"
    assert f"variant: {isa.ISA}" in isa.describe()


#: vector registers each variant's packed multiply-adds must use, and must not
_REGISTERS = {"avx512": ("zmm", None), "avx2": ("ymm", "zmm"), "portable": ("xmm", "zmm")}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="checks x86 assembly")
def test_microkernels_are_vectorised():
    """The SLP vectorizer packed the accumulators of the widest tile into packed (ps)
    multiply-adds on the variant's registers; without it the kernel is scalar (ss) code and
    about 20x slower, and with registers wider than the target has it would not run."""
    cb, _ = microkernel_source.TILES[isa.ISA][0]
    # a fresh, uncached copy (cached code cannot be inspected)
    fresh = njit(nogil=True, fastmath={"contract"}, error_model="numpy")(
        getattr(microkernels, f"conv_cb{cb}_sw1").py_func)
    asm = "".join(compile_vectorized(fresh, SIGNATURE).inspect_asm().values())
    want, never = _REGISTERS[isa.ISA]
    assert re.search(rf"\b(vfmadd\d+ps|v?mulps)\s[^\n]*%{want}", asm), \
        f"no packed multiply on {want} registers in conv_cb{cb} ({isa.ISA})"
    if never:
        assert f"%{never}" not in asm, f"{never} registers in the {isa.ISA} variant"


#: the tests that check the kernels of one variant against the reference ops
_PER_VARIANT_TESTS = ("test_conv_kernel_matches_reference_and_brute_force",
                      "test_conv_recording_matches_brute_force", "test_conv_masks_match_reference",
                      "test_chosen_variant_is_the_one_loaded", "test_microkernels_are_vectorised")

#: Numba settings selecting each variant on a CPU that can run it
_VARIANT_ENV = {"avx2": isa.ENVIRONMENTS["avx2"], "portable": {"NUMBA_CPU_NAME": "generic"}}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(_VARIANT_ENV))
def test_kernels_of_other_variants(variant):
    """The kernel-vs-reference properties and the assembly check, rerun in a process whose
    Numba targets another variant's CPU (the first run compiles that variant: minutes)."""
    if variant == isa.ISA:
        pytest.skip(f"this process already runs the {variant} variant")
    import llvmlite.binding as ll
    from numba.core.codegen import get_host_cpu_features
    host = isa.choose(ll.get_host_cpu_name(), get_host_cpu_features())
    if variant == "avx2" and host != "avx512":
        pytest.skip(f"the avx2 variant is checked here only from an AVX-512 host ({host})")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU_")}
    env.update(_VARIANT_ENV[variant])
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         "-k", " or ".join(_PER_VARIANT_TESTS)],
        env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


#: Runs in a child process: one add through the cached kernels, then what Numba's cache did.
_CACHE_CHILD = """
import json, numpy as np
from refdecomp.kernels import add
x = np.arange(8, dtype=np.float32)
np.testing.assert_array_equal(add.add([x, -x], (1, float("inf"), 0.0, 0.0)), 0 * x)
print(json.dumps({"module": add._add2.py_func.__module__,
                  "hits": len(add._add2.stats.cache_hits),
                  "misses": len(add._add2.stats.cache_misses)}))
"""


def test_numba_disk_cache_serves_the_installed_kernels(tmp_path):
    """`cache=True` works under the installed name refdecomp.kernels: a first process compiles
    and writes the cache, a second one loads the machine code from it without compiling."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    runs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", _CACHE_CHILD], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert runs[0]["module"] == "refdecomp.kernels.add"
    assert runs[0]["misses"] >= 1 and runs[0]["hits"] == 0
    assert runs[1]["misses"] == 0 and runs[1]["hits"] >= 1
    assert list((tmp_path / "cache").rglob("add._add2-*.nbi")), "no cache index written"


def test_stale_numba_caches_of_another_package_name_are_dropped_once(tmp_path):
    """Caches compiled under another package name go (they would fail to load); caches
    written after the stamp stay."""
    from refdecomp.kernels import CACHE_STAMP, drop_caches_of_other_package

    (tmp_path / "conv.pack_rows-54.py311.nbi").write_bytes(b"old")
    (tmp_path / "conv.pack_rows-54.py311.1.nbc").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("not a cache")
    assert drop_caches_of_other_package(tmp_path, "refdecomp.kernels")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CACHE_STAMP, "keep.txt"])
    (tmp_path / "conv.pack_rows-54.py311.nbi").write_bytes(b"new")
    assert not drop_caches_of_other_package(tmp_path, "refdecomp.kernels")
    assert (tmp_path / "conv.pack_rows-54.py311.nbi").exists()
    (tmp_path / CACHE_STAMP).write_text("kernels")          # imported under another name
    assert drop_caches_of_other_package(tmp_path, "refdecomp.kernels")
    assert not (tmp_path / "conv.pack_rows-54.py311.nbi").exists()
