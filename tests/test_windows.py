"""Sliding-window source->sink maps against brute-force constructions."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from interp_graphs import brute_conv

from refdecomp.windows import out_size_and_pads, sink_source, source_sink

cases = st.fixed_dictionaries({
    "hw": st.tuples(st.integers(1, 9), st.integers(1, 9)),
    "kernel": st.tuples(st.integers(1, 4), st.integers(1, 4)),
    "strides": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "padding": st.sampled_from(["valid", "same"]),
    "dilation": st.sampled_from([(1, 1), (2, 2), (2, 1)]),
})


def brute_table(hw, kernel, strides, padding, dilation):
    """Map built one tap at a time from the Keras/TF padding rule written out directly."""
    H, W = hw
    rows = []
    if padding == "same":
        oh, ow = -(-H // strides[0]), -(-W // strides[1])
        span_h = (kernel[0] - 1) * dilation[0] + 1
        span_w = (kernel[1] - 1) * dilation[1] + 1
        top = max((oh - 1) * strides[0] + span_h - H, 0) // 2
        left = max((ow - 1) * strides[1] + span_w - W, 0) // 2
    else:
        oh = (H - (kernel[0] - 1) * dilation[0] - 1) // strides[0] + 1
        ow = (W - (kernel[1] - 1) * dilation[1] - 1) // strides[1] + 1
        top = left = 0
    for a in range(max(oh, 0)):
        for b in range(max(ow, 0)):
            row = []
            for i in range(kernel[0]):
                for j in range(kernel[1]):
                    ih, iw = a * strides[0] - top + i * dilation[0], \
                        b * strides[1] - left + j * dilation[1]
                    row.append(ih * W + iw if 0 <= ih < H and 0 <= iw < W else -1)
            rows.append(row)
    return np.array(rows, np.int64).reshape(-1, kernel[0] * kernel[1])


@settings(max_examples=60)
@given(cases)
def test_source_sink_matches_brute_force(c):
    table = source_sink(c["hw"], c["kernel"], c["strides"], c["padding"], c["dilation"])
    want = brute_table(c["hw"], c["kernel"], c["strides"], c["padding"], c["dilation"])
    assert table.dtype == np.int32
    np.testing.assert_array_equal(table, want)


@settings(max_examples=40)
@given(cases)
def test_sink_source_inverts_the_table(c):
    table = source_sink(c["hw"], c["kernel"], c["strides"], c["padding"], c["dilation"])
    n_in = c["hw"][0] * c["hw"][1]
    offsets, pairs = sink_source(table, n_in)
    brute = {p: [] for p in range(n_in)}
    for o in range(table.shape[0]):
        for t in range(table.shape[1]):
            if table[o, t] >= 0:
                brute[int(table[o, t])].append((o, t))
    for p in range(n_in):
        assert [tuple(r) for r in pairs[offsets[p]:offsets[p + 1]]] == brute[p]


@settings(max_examples=30)
@given(cases, st.integers(0, 2**16))
def test_convolution_through_the_table_equals_brute_force_conv(c, seed):
    """Gathering inputs through the map and contracting with the kernel is the convolution."""
    rng = np.random.default_rng(seed)
    H, W = c["hw"]
    x = rng.standard_normal((2, H, W, 3)).astype(np.float32)
    k = rng.standard_normal((*c["kernel"], 3, 2)).astype(np.float32)
    table = source_sink(c["hw"], c["kernel"], c["strides"], c["padding"], c["dilation"])
    if table.size == 0:
        return
    flat = np.concatenate([x.reshape(2, H * W, 3), np.zeros((2, 1, 3), np.float32)], axis=1)
    gathered = flat[:, table]                    # -1 picks the zero row appended at the end
    y = np.einsum("npkc,kcd->npd", gathered, k.reshape(-1, 3, 2))
    want = brute_conv(x, k, None, c["strides"], c["padding"], c["dilation"])
    np.testing.assert_allclose(y, want.reshape(2, -1, 2), rtol=1e-4, atol=1e-4)


def test_same_padding_extra_cell_bottom_right():
    assert out_size_and_pads(5, 2, 2, "same") == (3, 0, 1)
    assert out_size_and_pads(6, 3, 2, "same") == (3, 0, 1)
    assert out_size_and_pads(7, 3, 2, "same") == (4, 1, 1)
    assert out_size_and_pads(7, 3, 2, "valid") == (3, 0, 0)


def test_reference_ops_do_not_import_the_kernels():
    """The NumPy specification stands alone: refdecomp/ops/reference.py (and the window
    geometry it shares with the kernels) import nothing from refdecomp.kernels."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "refdecomp"
    for path in (root / "ops" / "reference.py", root / "windows.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any("kernels" in n.split(".") for n in names), \
                f"{path.name}:{node.lineno} imports {names}"


def test_unknown_padding_is_a_broken_invariant():
    """The reader refuses paddings other than valid / same, so one reaching the geometry is a
    bug in refdecomp, not bad input."""
    import pytest

    from refdecomp.errors import InternalError

    with pytest.raises(InternalError, match="padding"):
        out_size_and_pads(5, 3, 1, "causal")
