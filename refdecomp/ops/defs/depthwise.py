"""depthwise_conv2d: Keras DepthwiseConv2D, and SeparableConv2D read as two nodes.

Kernel (KH, KW, Cin, M), M the depth multiplier: output channel c*M + m is input channel c
convolved with kernel[:, :, c, m] (plus bias[c*M + m]), so it reads one input channel.
SeparableConv2D is a depthwise convolution without bias (its strides, padding, dilation)
followed by a 1x1 conv2d with the pointwise kernel, the bias and the activation: the reader
emits a depthwise_conv2d node `<layer>/depthwise` and a conv2d node named after the layer
(docs/algorithm.md, "Depthwise and separable convolutions").
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...reader.params import (
    Lowered,
    activation,
    bad,
    channels,
    data_format,
    f32,
    fail,
    integer,
    padding,
    pair,
)
from ...reader.shapes import ShapeError, hwc, window_shape
from .. import reference as ref
from ..channels import Filters, input_channel_axis
from ..depthwise_reference import depthwise_conv2d
from ..registry import KerasLayer, OpSpec, register
from ..rules import through_windows, window_used
from .conv2d import channel_axis, spatial_size

LINEAR = {"name": "linear"}


def _window_attrs(layer, dialect) -> tuple[tuple, dict]:
    """Kernel size and the window attributes of a depthwise or separable layer."""
    cfg = layer.config
    kh, kw = pair(cfg.get("kernel_size"), None, layer, dialect, "kernel_size")
    strides = pair(cfg.get("strides"), 1, layer, dialect, "strides")
    dilation = pair(cfg.get("dilation_rate"), 1, layer, dialect, "dilation_rate")
    if dilation != (1, 1) and strides != (1, 1):
        raise fail(layer, dialect, f"strides {strides} with dilation_rate {dilation}: Keras "
                                   f"does not allow both above 1")
    return (kh, kw), {"strides": strides, "padding": padding(layer, dialect),
                      "dilation": dilation, "data_format": data_format(cfg)}


def _depthwise_kernel(layer, dialect, kernel, ksize) -> np.ndarray:
    kernel = f32(kernel)
    mult = integer(layer.config.get("depth_multiplier", 1), layer, dialect, "depth_multiplier")
    if kernel.ndim != 4 or kernel.shape[:2] != ksize or kernel.shape[3] != mult:
        raise bad(layer, dialect, f"depthwise kernel of shape {kernel.shape} does not match "
                                  f"kernel_size {ksize} and depth_multiplier {mult}")
    return kernel


def read(layer, shapes, w, dialect) -> Lowered:
    ksize, attrs = _window_attrs(layer, dialect)
    kernel = _depthwise_kernel(layer, dialect, w["kernel"], ksize)
    weights = {"kernel": kernel}
    if "bias" in w:
        weights["bias"] = f32(w["bias"]).reshape(kernel.shape[2] * kernel.shape[3])
    attrs["activation"] = activation(layer.config.get("activation"), layer, dialect)
    return Lowered("depthwise_conv2d", attrs, weights)


def read_separable(layer, shapes, w, dialect) -> Lowered:
    ksize, attrs = _window_attrs(layer, dialect)
    dw = _depthwise_kernel(layer, dialect, w["depthwise_kernel"], ksize)
    pw = f32(w["pointwise_kernel"])
    filters = integer(layer.config.get("filters", pw.shape[-1]), layer, dialect, "filters")
    if pw.shape != (1, 1, dw.shape[2] * dw.shape[3], filters):
        raise bad(layer, dialect, f"pointwise kernel of shape {pw.shape} does not match "
                                  f"{dw.shape[2] * dw.shape[3]} depthwise channels and "
                                  f"{filters} filters")
    pointwise = {"kernel": pw}
    if "bias" in w:
        pointwise["bias"] = f32(w["bias"]).reshape(filters)
    fmt = attrs["data_format"]
    first = Lowered("depthwise_conv2d", {**attrs, "activation": dict(LINEAR)}, {"kernel": dw})
    return Lowered("conv2d", {"strides": (1, 1), "padding": "valid", "dilation": (1, 1),
                              "activation": activation(layer.config.get("activation"), layer,
                                                       dialect), "data_format": fmt},
                   pointwise, before=[("depthwise", first)])


def roles(layer):
    """DepthwiseConv2D's kernel is `kernel` in Keras 3 files, `depthwise_kernel` in Keras 2
    ones: the role is `kernel` (a file name outside the known roles is not checked)."""
    bias = ["bias"] if layer.config.get("use_bias", True) else []
    return ["kernel", *bias], []


def separable_roles(layer):
    bias = ["bias"] if layer.config.get("use_bias", True) else []
    return ["depthwise_kernel", "pointwise_kernel", *bias], []


def expected(layer, shapes, dialect):
    cfg = layer.config
    (x,) = shapes if len(shapes) == 1 else (None,)
    kh, kw = pair(cfg.get("kernel_size"), None, layer, dialect, "kernel_size")
    mult = integer(cfg.get("depth_multiplier", 1), layer, dialect, "depth_multiplier")
    cin = channels(x, cfg) if x is not None else None
    out = None if cin is None else cin * mult
    want = {"kernel": (kh, kw, cin, mult), "bias": (out,)}
    if layer.class_name == "SeparableConv2D":
        want["depthwise_kernel"] = want.pop("kernel")
        filters = cfg.get("filters")
        filters = None if filters is None else integer(filters, layer, dialect, "filters")
        want.update(pointwise_kernel=(1, 1, out, filters), bias=(filters,))
    return want


def shape(attrs, weights, shapes, where):
    (x,) = shapes
    kernel = weights["kernel"]
    c = hwc(x, attrs.get("data_format", "channels_last"))[2]
    if kernel.ndim != 4 or (c is not None and kernel.shape[2] != c):
        raise ShapeError(f"depthwise kernel of shape {kernel.shape} expects "
                         f"{kernel.shape[2] if kernel.ndim == 4 else '?'} input channels, the "
                         f"input has {c}")
    return window_shape(attrs, x, kernel.shape[:2], kernel.shape[2] * kernel.shape[3], where)


def linear(node, x) -> np.ndarray:
    a = node.attrs
    return depthwise_conv2d(x, node.weights["kernel"], node.weights.get("bias"), a["strides"],
                            a["padding"], a.get("dilation", (1, 1)),
                            a.get("data_format", "channels_last"))


def reference(node, inputs) -> np.ndarray:
    return ref.activate(linear(node, inputs[0]), node.activation,
                        ref.describe_layer(node.name, node.keras_class or node.op))


def macs(node) -> int:
    kh, kw, cin, mult = node.weights["kernel"].shape
    return spatial_size(node) * kh * kw * cin * mult


def liveness(node, out, in_shapes, mode):
    """In "last_conv" a barrier (a convolution); in "input", input (p, c) is live when a live
    output (q, c*M + m) reads it through a tap whose weight W[tap, c, m] is nonzero."""
    if mode != "input":
        return [np.ones(in_shapes[0], dtype=bool)]
    k = node.weights["kernel"]
    kh, kw, cin, mult = k.shape
    taps = (k != 0).reshape(kh * kw, cin, mult)
    return [through_windows(node, out, in_shapes[0], (kh, kw),
                            lambda t, q: ((q.reshape(-1, cin, mult) > 0) & taps[t]).any(axis=2))]


def used_weights(node, kin, kout):
    """W[tap, c, m] is kept when some kept output (q, c*M + m) reads a kept input (p, c)
    through that tap."""
    k = node.weights["kernel"]
    kh, kw, cin, mult = k.shape
    used = window_used(node, kin, kout, (kh, kw), lambda i, o: np.einsum(
        "qc,qcm->cm", i, o.reshape(-1, cin, mult)) > 0)
    return used.reshape(k.shape)


def scale_outputs(node, scale, shift) -> dict:
    """Batch-norm folding: output channel c*M + m is kernel[..., c, m] (plus its bias)."""
    kernel = node.weights["kernel"].astype(np.float32)
    kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    bias = node.weights.get("bias", np.zeros(scale.size, np.float32))
    return {**node.weights, "kernel": kernel,
            "bias": (bias.astype(np.float32) * scale + shift).astype(np.float32)}


def export(node, k) -> str:
    a, w = node.attrs, node.weights
    act_string, act_layers = k.activation(node.activation)
    kernel = w["kernel"]
    cfg = {"kernel_size": list(kernel.shape[:2]), "strides": list(a.get("strides", (1, 1))),
           "padding": a.get("padding", "valid"), "depth_multiplier": int(kernel.shape[3]),
           "data_format": a.get("data_format", "channels_last"),
           "dilation_rate": list(a.get("dilation", (1, 1))), "activation": act_string,
           "use_bias": "bias" in w}
    weights = [("depthwise_kernel", kernel)] + ([("bias", w["bias"])] if "bias" in w else [])
    return k.chain(act_layers, k.add("DepthwiseConv2D", cfg, weights, nhwc_only=True))


class Depthwise(Filters):
    """depthwise_conv2d with depth multiplier M: output channel c*M + m reads input channel c
    only, and the kernel (KH, KW, Cin, M) has M outputs per input. Input channel c goes exactly
    when its M outputs go: an output group may go only with its input channel (else the
    kernel would lose its shape), and the input channel only with its whole group."""

    def __init__(self, channel_axis: Callable):
        super().__init__(channel_axis, lambda node, rank: input_channel_axis(node))

    @staticmethod
    def _m(node) -> int:
        return int(node.weights["kernel"].shape[3])

    def allowed(self, node, pos, src, own, graph):
        if src[0] != input_channel_axis(node):
            return np.zeros_like(src[1])
        return src[1] & own[1].reshape(-1, self._m(node)).all(axis=1)

    def refine(self, node, own, srcs, graph):
        if srcs[0] is None or srcs[0][0] != input_channel_axis(node):
            return np.zeros_like(own[1])
        return own[1] & np.repeat(srcs[0][1], self._m(node))

    def slice_weights(self, node, weights, keep_out, keep_in):
        out = dict(weights)
        if keep_in is not None:
            out["kernel"] = np.take(out["kernel"], keep_in, axis=2)
        if keep_out is not None and "bias" in out:
            out["bias"] = out["bias"][keep_out[1]]
        return out


register(OpSpec(
    name="depthwise_conv2d",
    attrs="strides (2), padding 'valid'|'same', dilation (2), activation, data_format",
    weights="kernel (kh, kw, cin, M), bias (cin * M,) optional",
    keras={"DepthwiseConv2D": KerasLayer(read, roles, expected),
           "SeparableConv2D": KerasLayer(read_separable, separable_roles, expected)},
    shape=shape, reference=reference, linear=linear, lowering="depthwise",
    weighted=True, channel_axis=channel_axis, scale_outputs=scale_outputs, macs=macs,
    liveness=liveness, used_weights=used_weights, compaction=Depthwise(channel_axis),
    export=export,
))
