"""conv2d: Keras Conv2D / Convolution2D (Keras 2 name)."""
from __future__ import annotations

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
from ..channels import Filters
from ..registry import KerasLayer, OpSpec, register
from ..rules import channels_first, through_windows, window_used


def read(layer, shapes, w, dialect) -> Lowered:
    cfg = layer.config
    if integer(cfg.get("groups", 1) or 1, layer, dialect, "groups") != 1:
        raise fail(layer, dialect, f"grouped convolution (groups={cfg['groups']}) is not "
                                   f"supported")
    kh, kw = pair(cfg.get("kernel_size"), None, layer, dialect, "kernel_size")
    strides = pair(cfg.get("strides"), 1, layer, dialect, "strides")
    dilation = pair(cfg.get("dilation_rate"), 1, layer, dialect, "dilation_rate")
    if dilation != (1, 1) and strides != (1, 1):
        raise fail(layer, dialect, f"strides {strides} with dilation_rate {dilation}: Keras "
                                   f"does not allow both above 1")
    kernel = f32(w["kernel"])
    filters = integer(cfg.get("filters", kernel.shape[-1]), layer, dialect, "filters")
    if kernel.ndim != 4 or kernel.shape[:2] != (kh, kw) or kernel.shape[3] != filters:
        raise bad(layer, dialect, f"kernel of shape {kernel.shape} does not match kernel_size "
                                  f"{(kh, kw)} and {filters} filters")
    if dialect.backend == "theano" and dialect.keras_major == 2:
        # Theano convolves (flips the kernel); Keras 2 flipped Theano kernels when loading
        # them under another backend, so the file's kernel is rotated 180 degrees here.
        kernel = np.ascontiguousarray(kernel[::-1, ::-1, :, :])
    weights = {"kernel": kernel}
    if "bias" in w:
        weights["bias"] = f32(w["bias"]).reshape(filters)
    attrs = {"strides": strides, "padding": padding(layer, dialect), "dilation": dilation,
             "activation": activation(cfg.get("activation"), layer, dialect),
             "data_format": data_format(cfg)}
    return Lowered("conv2d", attrs, weights)


def roles(layer):
    return (["kernel", "bias"] if layer.config.get("use_bias", True) else ["kernel"]), []


def expected(layer, shapes, dialect):
    cfg = layer.config
    (x,) = shapes if len(shapes) == 1 else (None,)
    kh, kw = pair(cfg.get("kernel_size"), None, layer, dialect, "kernel_size")
    filters = cfg.get("filters")
    filters = None if filters is None else integer(filters, layer, dialect, "filters")
    return {"kernel": (kh, kw, channels(x, cfg), filters), "bias": (filters,)}


def shape(attrs, weights, shapes, where):
    (x,) = shapes
    kernel = weights["kernel"]
    c = hwc(x, attrs.get("data_format", "channels_last"))[2]
    if c is not None and kernel.shape[2] != c:
        raise ShapeError(f"kernel of shape {kernel.shape} expects {kernel.shape[2]} input "
                         f"channels, the input has {c}")
    return window_shape(attrs, x, kernel.shape[:2], kernel.shape[3], where)


def channel_axis(node) -> int:
    return 0 if channels_first(node) else len(node.shape) - 1


def spatial_size(node) -> int:
    return int(np.prod(node.shape[1:] if channels_first(node) else node.shape[:-1]))


def macs(node) -> int:
    kh, kw, cin, cout = node.weights["kernel"].shape
    return spatial_size(node) * kh * kw * cin * cout


def liveness(node, out, in_shapes, mode):
    """Backtracking: in "last_conv" a barrier; in "input", input (p, cin) is live when a live
    output (q, cout) reads it through a tap whose weight W[tap, cin, cout] is nonzero."""
    if mode != "input":
        return [np.ones(in_shapes[0], dtype=bool)]
    k = node.weights["kernel"]
    taps = (k != 0).reshape(-1, k.shape[2], k.shape[3]).astype(np.float32)
    return [through_windows(node, out, in_shapes[0], k.shape[:2],
                            lambda t, q: (q @ taps[t].T) > 0)]


def used_weights(node, kin, kout):
    """W[tap, cin, cout] is kept when some kept output (q, cout) reads a kept input (p, cin)
    through that tap."""
    k = node.weights["kernel"]
    used = window_used(node, kin, kout, k.shape[:2], lambda i, o: (i.T @ o) > 0)
    return used.reshape(k.shape)


def scale_outputs(node, scale, shift) -> dict:
    """Batch-norm folding: y * scale + shift per output channel, into kernel and bias."""
    kernel = node.weights["kernel"].astype(np.float32) * scale   # out channels are last
    bias = node.weights.get("bias", np.zeros(kernel.shape[-1], np.float32))
    return {**node.weights, "kernel": kernel,
            "bias": (bias.astype(np.float32) * scale + shift).astype(np.float32)}


def export(node, k) -> str:
    a, w = node.attrs, node.weights
    act_string, act_layers = k.activation(node.activation)
    kernel = w["kernel"]
    cfg = {"filters": int(kernel.shape[3]), "kernel_size": list(kernel.shape[:2]),
           "strides": list(a.get("strides", (1, 1))), "padding": a.get("padding", "valid"),
           "data_format": a.get("data_format", "channels_last"),
           "dilation_rate": list(a.get("dilation", (1, 1))), "groups": 1,
           "activation": act_string, "use_bias": "bias" in w}
    weights = [("kernel", kernel)] + ([("bias", w["bias"])] if "bias" in w else [])
    return k.chain(act_layers, k.add("Conv2D", cfg, weights, nhwc_only=True))


register(OpSpec(
    name="conv2d",
    attrs="strides (2), padding 'valid'|'same', dilation (2), activation, data_format",
    weights="kernel (kh, kw, cin, cout), bias (cout,) optional",
    keras={"Conv2D": KerasLayer(read, roles, expected),
           "Convolution2D": KerasLayer(read, roles, expected, keras2_only=True)},
    shape=shape, reference=ref.conv2d, linear=ref.conv2d_linear, lowering="conv",
    weighted=True, channel_axis=channel_axis, scale_outputs=scale_outputs,
    macs=macs, liveness=liveness, used_weights=used_weights,
    compaction=Filters(channel_axis, lambda node, rank: (0 if channels_first(node) else 2)
                       if rank == 3 else None, quantum=True),
    export=export,
))
