"""NumPy executable specification of the ops in `refdecomp/ops/defs/` (their `reference` rules).

Each op is a short function `op(node, inputs) -> array` over batched arrays (batch axis first),
written for clarity, not speed: the Numba kernels in `refdecomp.kernels` are tested against these.
Semantics follow Keras exactly (see the notes on each function).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..activations import (  # noqa: F401  (re-exported: part of the executable specification)
    ACTIVATION_NAMES,
    ACTIVATIONS,
    SELU_ALPHA,
    SELU_SCALE,
    elu,
    gelu,
    hard_sigmoid,
    relu,
    sigmoid,
    softmax,
)
from ..errors import RefdecompError, UnsupportedLayerError, describe_layer
from ..graph import Node
from ..windows import geometry
from . import registry


# --------------------------------------------------------------------------------------------
# activations: defined in refdecomp.activations, the one table of activations
# --------------------------------------------------------------------------------------------
def maps_zero_to_zero(act: dict[str, Any]) -> bool:
    """Whether an element-wise activation maps 0 to 0 (so zero channels stay zero); softmax
    mixes its axis and is not element-wise."""
    if act.get("name") in ("softmax", "log_softmax"):
        return False
    try:
        return float(activate(np.zeros(1, np.float32), dict(act))[0]) == 0.0
    except (RefdecompError, TypeError, ValueError):
        return False


def activate(x: np.ndarray, act: dict[str, Any] | None, where: str = "activation") -> np.ndarray:
    """Apply an activation given as `{"name": ..., **params}` (see `refdecomp.graph`)."""
    if act is None:
        return x
    params = {k: v for k, v in act.items() if k != "name"}
    entry = ACTIVATIONS.get(act["name"])
    if entry is None:
        raise UnsupportedLayerError(f"{where}: activation {act['name']!r} is not supported; "
                                    f"supported: {', '.join(sorted(ACTIVATIONS))}")
    return np.asarray(entry.reference(x, **params), dtype=x.dtype)


# --------------------------------------------------------------------------------------------
# layout helpers
# --------------------------------------------------------------------------------------------
def to_nhwc(x: np.ndarray, data_format: str) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if data_format == "channels_first" else x


def from_nhwc(x: np.ndarray, data_format: str) -> np.ndarray:
    return x.transpose(0, 3, 1, 2) if data_format == "channels_first" else x


def _pad_hw(x: np.ndarray, pads, value: float) -> np.ndarray:
    """Pad the H and W axes of an NHWC array."""
    (pt, pb), (pl, pr) = pads
    return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=value)


def _taps(x: np.ndarray, kernel, strides, padding, dilation, pad_value: float):
    """Yield (tap row, tap col, strided NHWC slice of the padded input) for every kernel tap."""
    (oh, pt, pb), (ow, pl, pr) = geometry(x.shape[1:3], kernel, strides, padding, dilation)
    xp = _pad_hw(x, ((pt, pb), (pl, pr)), pad_value)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            r0, c0 = i * dilation[0], j * dilation[1]
            yield i, j, xp[:, r0:r0 + (oh - 1) * strides[0] + 1:strides[0],
                           c0:c0 + (ow - 1) * strides[1] + 1:strides[1], :]


# --------------------------------------------------------------------------------------------
# ops
# --------------------------------------------------------------------------------------------
def conv2d_linear(node: Node, x: np.ndarray) -> np.ndarray:
    """Convolution plus bias, before the activation (what recording looks at)."""
    a = node.attrs
    fmt = a.get("data_format", "channels_last")
    k = node.weights["kernel"]
    xh = to_nhwc(x, fmt)
    acc = None
    for i, j, sl in _taps(xh, k.shape[:2], a["strides"], a["padding"], a.get("dilation", (1, 1)),
                          0.0):
        t = sl @ k[i, j]
        acc = t if acc is None else acc + t
    if "bias" in node.weights:
        acc = acc + node.weights["bias"]
    return from_nhwc(acc.astype(np.float32), fmt)


def dense_linear(node: Node, x: np.ndarray) -> np.ndarray:
    """x @ kernel + bias on the last axis, before the activation."""
    y = x @ node.weights["kernel"]
    if "bias" in node.weights:
        y = y + node.weights["bias"]
    return y.astype(np.float32)


def conv2d(node: Node, inputs) -> np.ndarray:
    return activate(conv2d_linear(node, inputs[0]), node.activation, _where(node))


def dense(node: Node, inputs) -> np.ndarray:
    return activate(dense_linear(node, inputs[0]), node.activation, _where(node))


def max_pool2d(node: Node, inputs) -> np.ndarray:
    """Max over each window; `same` pads with -inf so padding never wins."""
    a = node.attrs
    fmt = a.get("data_format", "channels_last")
    out = None
    for _, _, sl in _taps(to_nhwc(inputs[0], fmt), a["pool"], a["strides"], a["padding"],
                          (1, 1), -np.inf):
        out = sl if out is None else np.maximum(out, sl)
    return from_nhwc(out, fmt)


def avg_pool2d(node: Node, inputs) -> np.ndarray:
    """Mean over each window's real cells (Keras `same` does not count padded cells)."""
    a = node.attrs
    fmt = a.get("data_format", "channels_last")
    xh = to_nhwc(inputs[0], fmt)
    ones = np.ones((1, *xh.shape[1:3], 1), dtype=np.float32)
    total, count = None, None
    for (_, _, sl), (_, _, c) in zip(
            _taps(xh, a["pool"], a["strides"], a["padding"], (1, 1), 0.0),
            _taps(ones, a["pool"], a["strides"], a["padding"], (1, 1), 0.0)):
        total = sl if total is None else total + sl
        count = c if count is None else count + c
    return from_nhwc((total / count).astype(np.float32), fmt)


def _spatial_axes(node: Node) -> tuple[int, int]:
    return (2, 3) if node.attrs.get("data_format", "channels_last") == "channels_first" else (1, 2)


def global_avg_pool2d(node: Node, inputs) -> np.ndarray:
    return np.mean(inputs[0], axis=_spatial_axes(node),
                   keepdims=bool(node.attrs.get("keepdims", False))).astype(np.float32)


def global_max_pool2d(node: Node, inputs) -> np.ndarray:
    return np.max(inputs[0], axis=_spatial_axes(node),
                  keepdims=bool(node.attrs.get("keepdims", False)))


def flatten(node: Node, inputs) -> np.ndarray:
    """Keras Flatten: with channels_first, the channel axis is first moved last (so the order
    is that of the channels_last layout), then everything after the batch axis is flattened."""
    x = inputs[0]
    if node.attrs.get("data_format", "channels_last") == "channels_first" and x.ndim > 2:
        x = np.moveaxis(x, 1, -1)
    return x.reshape(x.shape[0], -1)


def reshape(node: Node, inputs) -> np.ndarray:
    x = inputs[0]
    return x.reshape(x.shape[0], *node.attrs["target_shape"])


def add(node: Node, inputs) -> np.ndarray:
    out = inputs[0]
    for t in inputs[1:]:
        out = out + t
    return out


def concatenate(node: Node, inputs) -> np.ndarray:
    return np.concatenate(inputs, axis=node.attrs.get("axis", -1))


def activation(node: Node, inputs) -> np.ndarray:
    return activate(inputs[0], node.activation, _where(node))


def prelu(node: Node, inputs) -> np.ndarray:
    x = inputs[0]
    return np.where(x >= 0, x, node.weights["alpha"] * x).astype(x.dtype)


def softmax_op(node: Node, inputs) -> np.ndarray:
    axis = node.attrs.get("axis", -1)
    return softmax(inputs[0], axis=tuple(axis) if isinstance(axis, (list, tuple)) else axis)


def logsumexp_channel(z: np.ndarray, c: int) -> np.ndarray:
    """(n, 2) float32 [z_c, log(sum_{k != c} exp z_k)] of logits z (n, N): the "logsumexp"
    channeling of a module's head (stable: the largest other logit is factored out)."""
    z = np.asarray(z, dtype=np.float32)
    others = np.delete(z, c, axis=1)
    top = others.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, np.float32(0))
    lse = top[:, 0] + np.log(np.exp(others - top).sum(axis=1))
    return np.stack([z[:, c], lse], axis=1).astype(np.float32)


def channel_logsumexp(node: Node, inputs) -> np.ndarray:
    return logsumexp_channel(inputs[0], node.attrs["class_index"])


def _broadcast(w: np.ndarray, axes, ndim: int) -> np.ndarray:
    """Reshape per-axis parameters (shape = the sizes of `axes`, counted with the batch axis) so
    they broadcast against an array of rank `ndim`."""
    axes = sorted(a % ndim for a in axes)
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == ndim:
        return w
    if w.ndim == ndim - 1:
        return w[None]
    shape = [1] * ndim
    for a, s in zip(axes, w.shape if w.ndim == len(axes) else (w.size,)):
        shape[a] = s
    return w.reshape(shape)


def batch_norm_scale_shift(node: Node, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Inference batch norm as y = x * scale + shift (Keras: inv = gamma / sqrt(var + eps),
    y = x * inv + (beta - mean * inv)); both broadcast against rank `ndim`."""
    w, a = node.weights, node.attrs
    axes = a.get("axis", (-1,))
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    inv = 1.0 / np.sqrt(w["moving_variance"].astype(np.float32) + np.float32(a.get("epsilon",
                                                                                   1e-3)))
    if a.get("scale", True) and "gamma" in w:
        inv = inv * w["gamma"].astype(np.float32)
    shift = -w["moving_mean"].astype(np.float32) * inv
    if a.get("center", True) and "beta" in w:
        shift = shift + w["beta"].astype(np.float32)
    return _broadcast(inv, axes, ndim), _broadcast(shift, axes, ndim)


def batch_norm(node: Node, inputs) -> np.ndarray:
    x = inputs[0]
    scale, shift = batch_norm_scale_shift(node, x.ndim)
    return (x * scale + shift).astype(np.float32)


def rescaling(node: Node, inputs) -> np.ndarray:
    scale = np.asarray(node.attrs.get("scale", 1.0), dtype=np.float32)
    offset = np.asarray(node.attrs.get("offset", 0.0), dtype=np.float32)
    return (inputs[0] * scale + offset).astype(np.float32)


def normalization(node: Node, inputs) -> np.ndarray:
    x = inputs[0]
    axes = node.attrs.get("axis", (-1,))
    axes = (axes,) if isinstance(axes, int) else tuple(axes or ())
    mean = _broadcast(node.weights["mean"], axes, x.ndim)
    std = np.maximum(np.sqrt(_broadcast(node.weights["variance"], axes, x.ndim)),
                     np.float32(1e-7))
    return ((x - mean) / std).astype(np.float32)


def zero_pad2d(node: Node, inputs) -> np.ndarray:
    fmt = node.attrs.get("data_format", "channels_last")
    return from_nhwc(_pad_hw(to_nhwc(inputs[0], fmt), node.attrs["padding"], 0.0), fmt)


def identity(node: Node, inputs) -> np.ndarray:
    return inputs[0]


def _where(node: Node) -> str:
    return describe_layer(node.name, node.keras_class or node.op)


def run_node(node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    """Execute one non-input node on batched inputs (by its op's registered reference)."""
    return registry.spec(node.op).reference(node, inputs)
