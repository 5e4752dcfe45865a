"""The depthwise convolution kernel against its NumPy reference and brute-force loops
(hypothesis on shapes, depth multipliers, channel counts, strides, dilation, padding,
activations, masks and recording), and the reference against Keras 3's DepthwiseConv2D and
SeparableConv2D."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numba import njit

from refdecomp.activations import activation_code
from refdecomp.kernels import isa
from refdecomp.kernels.depthwise import DepthwiseConv2D, depthwise_taps
from refdecomp.kernels.epilogue import PerThreadRecord
from refdecomp.kernels.threads import blas_single_threaded
from refdecomp.ops import reference as ref
from refdecomp.ops.depthwise_reference import depthwise_conv2d, separable_conv2d

FAST = settings(max_examples=25)
NO_MASK = np.empty(0, np.uint8)
NO_SEEN = np.empty((0, 0), np.uint8)
NO_GROUPS = np.empty(0, np.int32)

#: activations the epilogue fuses, relu6 both ways Keras spells it
ACTIVATIONS = [{"name": "linear"}, {"name": "relu"}, {"name": "relu", "max_value": 6.0},
               {"name": "relu6"}, {"name": "sigmoid"}, {"name": "hard_silu"},
               {"name": "leaky_relu", "negative_slope": 0.3}]

cases = st.fixed_dictionaries({
    "n": st.integers(1, 3), "h": st.integers(1, 9), "w": st.integers(1, 12),
    # odd and even channel counts on both sides of one or two vector widths
    "cin": st.one_of(st.integers(1, 5), st.integers(6, 40)), "mult": st.integers(1, 4),
    # up to 25 taps: groups of nine, three and one, and their remainders
    "kernel": st.tuples(st.integers(1, 5), st.integers(1, 5)),
    "strides": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "dilation": st.sampled_from([(1, 1), (2, 2), (1, 2), (3, 1)]),
    "padding": st.sampled_from(["valid", "same"]),
    "bias": st.booleans(), "act": st.sampled_from(ACTIVATIONS),
    "seed": st.integers(0, 2**16),
})


def _setup(c):
    rng = np.random.default_rng(c["seed"])
    x = rng.standard_normal((c["n"], c["h"], c["w"], c["cin"])).astype(np.float32)
    k = rng.standard_normal((*c["kernel"], c["cin"], c["mult"])).astype(np.float32)
    b = rng.standard_normal(c["cin"] * c["mult"]).astype(np.float32) if c["bias"] else None
    kern = DepthwiseConv2D(k, b, c["strides"], c["padding"], c["dilation"],
                           activation_code(c["act"]))
    return rng, x, k, b, kern


def _reference(c, x, k, b):
    return depthwise_conv2d(x, k, b, c["strides"], c["padding"], c["dilation"])


def _brute(x, k, b, strides, padding, dilation):
    """The textbook definition, one output element at a time (float64), with Keras's `same`
    padding written out: total pad (out - 1) * stride + span - size, the smaller half first."""
    n, H, W, cin = x.shape
    kh, kw, _, mult = k.shape
    pads, outs = [], []
    for size, kk, s, d in ((H, kh, strides[0], dilation[0]), (W, kw, strides[1], dilation[1])):
        span = (kk - 1) * d + 1
        out = -(-size // s) if padding == "same" else max((size - span) // s + 1, 0)
        pads.append(max((out - 1) * s + span - size, 0) // 2 if padding == "same" else 0)
        outs.append(out)
    y = np.zeros((n, outs[0], outs[1], cin * mult))
    for a in range(outs[0]):
        for bb in range(outs[1]):
            for c in range(cin):
                for m in range(mult):
                    v = np.zeros(n) if b is None else np.full(n, float(b[c * mult + m]))
                    for i in range(kh):
                        for j in range(kw):
                            ih = a * strides[0] - pads[0] + i * dilation[0]
                            iw = bb * strides[1] - pads[1] + j * dilation[1]
                            if 0 <= ih < H and 0 <= iw < W:
                                v += x[:, ih, iw, c].astype(np.float64) * k[i, j, c, m]
                    y[:, a, bb, c * mult + m] = v
    return y


@FAST
@given(cases)
def test_kernel_matches_reference_and_brute_force(c):
    _, x, k, b, kern = _setup(c)
    pre = _reference(c, x, k, b)
    got = kern(x, NO_MASK, 0, 0, NO_SEEN, 0, 0, NO_GROUPS)
    assert got.shape == pre.shape
    np.testing.assert_allclose(got, ref.activate(pre, c["act"]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pre, _brute(x, k, b, c["strides"], c["padding"], c["dilation"]),
                               rtol=1e-5, atol=1e-5)


def test_output_channel_order_is_channel_times_multiplier_plus_m():
    """Output channel c*M + m is input channel c times kernel[..., c, m] (1x1 kernel)."""
    x = np.arange(1, 4, dtype=np.float32).reshape(1, 1, 1, 3)          # channels 1, 2, 3
    k = np.array([[10, 20], [30, 40], [50, 60]], np.float32).reshape(1, 1, 3, 2)
    want = [1 * 10, 1 * 20, 2 * 30, 2 * 40, 3 * 50, 3 * 60]
    assert depthwise_conv2d(x, k).reshape(-1).tolist() == want
    kern = DepthwiseConv2D(k, None, (1, 1), "valid", (1, 1), activation_code({"name": "linear"}))
    assert kern(x, NO_MASK, 0, 0, NO_SEEN, 0, 0, NO_GROUPS).reshape(-1).tolist() == want


@pytest.mark.parametrize("w, cin, mult, strides, dilation", [
    (300, 3, 1, (1, 1), (1, 1)), (301, 3, 2, (2, 3), (1, 1)), (97, 50, 3, (1, 2), (1, 2)),
    (41, 520, 1, (1, 1), (2, 1))])
def test_wide_rows_split_into_runs(w, cin, mult, strides, dilation):
    """Rows longer than one run of pixels (`RUN_FLOATS`), with a shorter last run, and runs
    of a single pixel (more channels than a run holds)."""
    c = dict(n=2, h=5, w=w, cin=cin, mult=mult, kernel=(3, 3), strides=strides,
             dilation=dilation, padding="same", bias=True, act={"name": "linear"}, seed=w)
    _, x, k, b, kern = _setup(c)
    np.testing.assert_allclose(kern(x, NO_MASK, 0, 0, NO_SEEN, 0, 0, NO_GROUPS),
                               _reference(c, x, k, b), rtol=1e-4, atol=1e-4)


def test_no_output_position_and_wrong_channel_count():
    k = np.ones((3, 3, 2, 1), np.float32)
    kern = DepthwiseConv2D(k, None, (1, 1), "valid", (1, 1), activation_code({"name": "relu"}))
    assert kern(np.ones((2, 2, 5, 2), np.float32), NO_MASK, 0, 0, NO_SEEN, 0, 0,
                NO_GROUPS).shape == (2, 0, 3, 2)
    assert depthwise_conv2d(np.ones((2, 2, 5, 2), np.float32), k).shape == (2, 0, 3, 2)
    with pytest.raises(ValueError, match="2 input channels, got 3"):
        kern(np.ones((1, 4, 4, 3), np.float32), NO_MASK, 0, 0, NO_SEEN, 0, 0, NO_GROUPS)


def _layout(c, P, C, channels_first):
    """(position stride, channel stride) of a flat mask / bit map, as refdecomp.ops.lowering
    passes them, and a function turning such a flat array back into (OH, OW, C)."""
    if channels_first:
        return (1, P), lambda a, oh, ow: a.reshape(C, oh, ow).transpose(1, 2, 0)
    return (C, 1), lambda a, oh, ow: a.reshape(oh, ow, C)


@FAST
@given(cases, st.booleans(), st.booleans(), st.integers(1, 4))
def test_masks_and_recorded_bits_match_brute_force(c, masked, channels_first, n_groups):
    """value before the activation > 0 sets the image's group's bit; the mask zeroes outputs;
    both addressed in either layout's flat order (channels_first: strided)."""
    rng, x, k, b, kern = _setup(c)
    pre = _reference(c, x, k, b)
    n, oh, ow, C = pre.shape
    P = oh * ow
    (sp, sc), unflat = _layout(c, P, C, channels_first)
    mask = (rng.random(P * C) > 0.4).astype(np.uint8) if masked else NO_MASK
    groups = rng.integers(0, n_groups, n).astype(np.int32)
    seen = np.zeros((n_groups, P * C), np.uint8)
    got = kern(x, mask, sp, sc, seen, sp, sc, groups)
    want = ref.activate(pre, c["act"])
    if masked:
        want = want * unflat(mask, oh, ow)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if masked:
        assert (got[:, unflat(mask, oh, ow) == 0] == 0).all()
    brute = np.zeros((n_groups, oh, ow, C), np.uint8)
    for i, g in enumerate(groups):
        brute[g] |= pre[i] > 0
    got_bits = np.stack([unflat(s, oh, ow) for s in seen])
    # a value within rounding of 0 may fall either way: compare only the clear cases
    clear = np.abs(pre).min(axis=0) > 1e-4
    np.testing.assert_array_equal(got_bits[:, clear], brute[:, clear])


@pytest.mark.parametrize("threads", ["1", "3"])
def test_counts_per_thread_match_brute_force(monkeypatch, threads):
    """Counting mode: per-thread counters summed equal the number of images of each group with
    a value > 0, with images split over 1 or 3 worker threads; outputs do not depend on it."""
    monkeypatch.setenv("REFDECOMP_THREADS", threads)
    c = dict(n=23, h=7, w=9, cin=13, mult=2, kernel=(3, 3), strides=(2, 1), dilation=(1, 1),
             padding="same", bias=True, act={"name": "relu6"}, seed=5)
    rng, x, k, b, kern = _setup(c)
    pre = _reference(c, x, k, b)
    n, oh, ow, C = pre.shape
    groups = rng.integers(0, 3, n).astype(np.int32)
    counts = PerThreadRecord(3, oh * ow * C, counting=True)
    bits = PerThreadRecord(3, oh * ow * C)
    with blas_single_threaded():
        y = kern(x, NO_MASK, C, 1, counts, C, 1, groups)
        y_bits = kern(x, NO_MASK, C, 1, bits, C, 1, groups)
    want = np.zeros((3, oh, ow, C), np.uint32)
    for i, g in enumerate(groups):
        want[g] += pre[i] > 0
    np.testing.assert_array_equal(counts.total().reshape(want.shape), want)
    np.testing.assert_array_equal(bits.total().reshape(want.shape),
                                  (want > 0).astype(np.uint8))
    np.testing.assert_array_equal(y, y_bits)
    np.testing.assert_allclose(y, np.clip(pre, 0, 6), rtol=1e-5, atol=1e-5)


def test_threads_do_not_change_outputs(monkeypatch):
    c = dict(n=40, h=8, w=8, cin=24, mult=1, kernel=(3, 3), strides=(1, 1), dilation=(1, 1),
             padding="same", bias=True, act={"name": "relu"}, seed=9)
    _, x, _, _, kern = _setup(c)
    outs = []
    for threads in ("1", "3"):
        monkeypatch.setenv("REFDECOMP_THREADS", threads)
        with blas_single_threaded():
            outs.append(kern(x, NO_MASK, 0, 0, NO_SEEN, 0, 0, NO_GROUPS))
    np.testing.assert_array_equal(outs[0], outs[1])


#: vector registers the kernel's packed multiply-adds must use, and must not
_REGISTERS = {"avx512": ("[yz]mm", None), "avx2": ("ymm", "zmm"), "portable": ("xmm", "zmm")}
_TAPS_SIGNATURE = ("void(float32[::1], int64, int64, float32[::1], uint64[::1], float32[::1], "
                   + ", ".join(["int64"] * 6) + ")")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="checks x86 assembly")
def test_kernel_is_vectorised():
    """The loop over channels compiled to packed multiply-adds (ps) on the variant's vector
    registers, never wider than the target has; scalar (ss) code alone would mean the loop
    vectorizer gave up (aliasing, wraparound checks)."""
    fresh = njit(nogil=True, fastmath={"contract"}, error_model="numpy")(depthwise_taps.py_func)
    fresh.compile(_TAPS_SIGNATURE)
    asm = "".join(fresh.inspect_asm().values())
    want, never = _REGISTERS[isa.ISA]
    assert re.search(rf"\bvfmadd\d+ps\s[^\n]*%{want}", asm), \
        f"no packed multiply-add on {want} registers in depthwise_taps ({isa.ISA})"
    if never:
        assert f"%{never}" not in asm, f"{never} registers in the {isa.ISA} build"


#: the tests that check the kernel on one instruction set
_PER_VARIANT_TESTS = ("test_kernel_matches_reference_and_brute_force",
                      "test_masks_and_recorded_bits_match_brute_force",
                      "test_kernel_is_vectorised")


@pytest.mark.slow
def test_kernel_on_avx2():
    """The kernel properties and the assembly check, rerun in a process whose Numba targets
    haswell with haswell's features (`kernels.isa.ENVIRONMENTS["avx2"]`), on an AVX-512 host."""
    import llvmlite.binding as ll
    from numba.core.codegen import get_host_cpu_features
    if isa.ISA == "avx2":
        pytest.skip("this process already runs the avx2 variant")
    if isa.choose(ll.get_host_cpu_name(), get_host_cpu_features()) != "avx512":
        pytest.skip("the avx2 build is checked here only from an AVX-512 host")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU_")}
    env.update(isa.ENVIRONMENTS["avx2"])
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         "-k", " or ".join(_PER_VARIANT_TESTS)],
        env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "3 passed" in run.stdout, run.stdout[-2000:]


# -- the reference against Keras 3 ----------------------------------------------------------
keras_cases = st.fixed_dictionaries({
    "n": st.integers(1, 2), "h": st.integers(3, 9), "w": st.integers(3, 9),
    "cin": st.integers(1, 7), "mult": st.integers(1, 3),
    "kernel": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    # TensorFlow's depthwise convolution takes strides > 1 or dilation > 1, not both
    "strides_dilation": st.sampled_from([((1, 1), (1, 1)), ((2, 2), (1, 1)), ((1, 2), (1, 1)),
                                         ((3, 1), (1, 1)), ((1, 1), (2, 2)),
                                         ((1, 1), (1, 2))]),
    "padding": st.sampled_from(["valid", "same"]), "bias": st.booleans(),
    "seed": st.integers(0, 2**16),
})


def _keras_layer(keras, cls, c, weights, **extra):
    strides, dilation = c["strides_dilation"]
    layer = getattr(keras.layers, cls)(
        kernel_size=c["kernel"], strides=strides, padding=c["padding"],
        depth_multiplier=c["mult"], dilation_rate=dilation, use_bias=c["bias"],
        data_format="channels_last", **extra)
    layer.build((None, c["h"], c["w"], c["cin"]))
    layer.set_weights(weights)
    return layer


def _valid(c) -> bool:
    strides, dilation = c["strides_dilation"]
    return c["padding"] == "same" or all(
        (c["kernel"][a] - 1) * dilation[a] + 1 <= (c["h"], c["w"])[a] for a in range(2))


@pytest.mark.keras
@settings(max_examples=15)
@given(keras_cases)
def test_reference_matches_keras_depthwise(keras3, c):
    """Reference vs keras.layers.DepthwiseConv2D, channels_last; channels_first by transposing
    input and output (TensorFlow's CPU kernels run depthwise convolution only as NHWC)."""
    assume(_valid(c))
    rng = np.random.default_rng(c["seed"])
    x = rng.standard_normal((c["n"], c["h"], c["w"], c["cin"])).astype(np.float32)
    k = rng.standard_normal((*c["kernel"], c["cin"], c["mult"])).astype(np.float32)
    b = rng.standard_normal(c["cin"] * c["mult"]).astype(np.float32)
    layer = _keras_layer(keras3, "DepthwiseConv2D", c, [k, b] if c["bias"] else [k],
                         activation="relu6")
    want = np.asarray(layer(x))
    strides, dilation = c["strides_dilation"]
    bias = b if c["bias"] else None
    got = depthwise_conv2d(x, k, bias, strides, c["padding"], dilation)
    np.testing.assert_allclose(np.clip(got, 0, 6), want, rtol=1e-5, atol=1e-5)
    got_cf = depthwise_conv2d(x.transpose(0, 3, 1, 2), k, bias, strides, c["padding"], dilation,
                              "channels_first")
    np.testing.assert_array_equal(got_cf, got.transpose(0, 3, 1, 2))
    # and the kernel with relu6 fused, against Keras directly
    kern = DepthwiseConv2D(k, bias, strides, c["padding"], dilation,
                           activation_code({"name": "relu6"}))
    np.testing.assert_allclose(kern(x, NO_MASK, 0, 0, NO_SEEN, 0, 0, NO_GROUPS), want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.keras
@settings(max_examples=8)
@given(keras_cases, st.integers(1, 6))
def test_separable_reference_matches_keras(keras3, c, filters):
    """SeparableConv2D = depthwise (no bias) then a 1x1 convolution with the bias."""
    assume(_valid(c))
    rng = np.random.default_rng(c["seed"])
    x = rng.standard_normal((c["n"], c["h"], c["w"], c["cin"])).astype(np.float32)
    dk = rng.standard_normal((*c["kernel"], c["cin"], c["mult"])).astype(np.float32)
    pk = rng.standard_normal((1, 1, c["cin"] * c["mult"], filters)).astype(np.float32)
    b = rng.standard_normal(filters).astype(np.float32)
    layer = _keras_layer(keras3, "SeparableConv2D", c, [dk, pk, b] if c["bias"] else [dk, pk],
                         filters=filters)
    want = np.asarray(layer(x))
    strides, dilation = c["strides_dilation"]
    got = separable_conv2d(x, dk, pk, b if c["bias"] else None, strides, c["padding"], dilation)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
