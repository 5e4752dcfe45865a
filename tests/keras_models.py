"""Hypothesis strategies that describe random Keras CNNs, and builders that make them in a dialect.

A drawn `ModelSpec` is plain data (layer kinds and hyper-parameters, with the tensor shapes
tracked while drawing so every spec is buildable); `build_model(K, spec)` turns it into a Keras
model with `K` either Keras 3 (`import keras`) or the Keras 2 dialect (`import tf_keras`), and
`randomize_weights` gives every variable random, non-trivial values (biases, batch-norm moving
statistics and PReLU slopes included), so that a file written by Keras exercises every weight
the reader must find.

Nothing here imports Keras: the module object is passed in, so the strategies can be drawn (and
this file imported) without TensorFlow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

# Activation names both dialects serialise and refdecomp's IR knows; Keras 3 adds a few more.
COMMON_ACTIVATIONS = (
    "linear", "relu", "sigmoid", "tanh", "softplus", "softsign", "selu", "elu", "exponential",
    "hard_sigmoid", "swish", "gelu",
)
KERAS3_ACTIVATIONS = COMMON_ACTIVATIONS + ("relu6", "silu", "leaky_relu")

BATCH = 3


# --------------------------------------------------------------------------------------------
# Spec data
# --------------------------------------------------------------------------------------------
@dataclass
class LayerSpec:
    """One Keras layer: `kind` (our short name) and its keyword arguments."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.kind}({args})"


@dataclass
class Block:
    """A piece of a Functional graph.

    kind "layer": one layer; "add" / "concat": parallel branches (lists of layers, an empty list
    is the identity) merged by Add / Concatenate(axis); "shared": one layer called twice in a row.
    """

    kind: str
    layer: LayerSpec | None = None
    branches: list[list[LayerSpec]] = field(default_factory=list)
    axis: int = -1

    def __repr__(self) -> str:
        if self.kind in ("layer", "shared"):
            return f"{self.kind}:{self.layer!r}"
        return f"{self.kind}(axis={self.axis}, branches={self.branches!r})"


@dataclass
class ModelSpec:
    """A whole model: input shape (no batch axis), data format, blocks, how to assemble it.

    `nest` = (start, stop) wraps blocks[start:stop] in an inner model (Sequential when they are
    all plain layers, else Functional) that the outer Functional model calls.
    """

    input_shape: tuple[int, ...]
    data_format: str
    blocks: list[Block]
    functional: bool
    seed: int
    nest: tuple[int, int] | None = None


@dataclass
class MultiIOSpec:
    """Two inputs (an image and a vector) and two outputs, in a drawn order."""

    image_shape: tuple[int, int, int]
    vector_size: int
    data_format: str
    trunk: list[LayerSpec]
    pool: LayerSpec
    vector_units: int
    classes: int
    second_output: str          # "image" (a conv on the trunk) or "vector" (dense on the vector)
    swap_inputs: bool
    swap_outputs: bool
    seed: int


# --------------------------------------------------------------------------------------------
# Shape bookkeeping (shapes exclude the batch axis)
# --------------------------------------------------------------------------------------------
def _hwc(shape: tuple[int, ...], fmt: str) -> tuple[int, int, int]:
    if fmt == "channels_last":
        return (shape[0], shape[1], shape[2])
    return (shape[1], shape[2], shape[0])


def _image(h: int, w: int, c: int, fmt: str) -> tuple[int, int, int]:
    return (h, w, c) if fmt == "channels_last" else (c, h, w)


def _channel_axis(fmt: str) -> int:
    """Channel axis counted with the batch axis, as Keras layers take it."""
    return 3 if fmt == "channels_last" else 1


def _window_out(n: int, k: int, s: int, d: int, padding: str) -> int:
    if padding == "same":
        return -(-n // s)
    return (n - d * (k - 1) - 1) // s + 1


# --------------------------------------------------------------------------------------------
# Layer strategies: each takes the current shape and returns (LayerSpec, new shape)
# --------------------------------------------------------------------------------------------
def _activations(dialect: str) -> tuple[str, ...]:
    return KERAS3_ACTIVATIONS if dialect == "keras3" else COMMON_ACTIVATIONS


def _draw_conv(draw, shape, fmt, dialect, *, filters=None, strides=None, padding=None):
    h, w, c = _hwc(shape, fmt)
    padding = padding or draw(st.sampled_from(["valid", "same"]))
    if strides is None:
        strides = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    if strides == (1, 1):  # Keras refuses strides > 1 together with dilation > 1
        dilation = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    else:
        dilation = (1, 1)
    kernel = []
    for n, d in zip((h, w), dilation):
        kmax = 3 if padding == "same" else min(3, (n - 1) // d + 1)
        kernel.append(draw(st.integers(1, kmax)))
    filters = filters or draw(st.integers(1, 6))
    spec = LayerSpec("conv", dict(
        filters=filters, kernel_size=tuple(kernel), strides=tuple(strides), padding=padding,
        dilation_rate=tuple(dilation), activation=draw(st.sampled_from(_activations(dialect))),
        use_bias=draw(st.booleans()), data_format=fmt,
    ))
    oh = _window_out(h, kernel[0], strides[0], dilation[0], padding)
    ow = _window_out(w, kernel[1], strides[1], dilation[1], padding)
    return spec, _image(oh, ow, filters, fmt)


def _draw_depthwise(draw, shape, fmt, dialect):
    """DepthwiseConv2D or SeparableConv2D: the window of `_draw_conv`, a depth multiplier."""
    conv, _ = _draw_conv(draw, shape, fmt, dialect)
    p = dict(conv.params)
    h, w, c = _hwc(shape, fmt)
    mult = draw(st.integers(1, 3))
    separable = draw(st.booleans())
    filters = p.pop("filters")
    if not separable:
        filters = c * mult
    spec = LayerSpec("separable" if separable else "depthwise",
                     dict(p, depth_multiplier=mult, **({"filters": filters} if separable else {})))
    oh = _window_out(h, p["kernel_size"][0], p["strides"][0], p["dilation_rate"][0], p["padding"])
    ow = _window_out(w, p["kernel_size"][1], p["strides"][1], p["dilation_rate"][1], p["padding"])
    return spec, _image(oh, ow, filters, fmt)


def _draw_upsample(draw, shape, fmt, dialect):
    h, w, c = _hwc(shape, fmt)
    size = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    return (LayerSpec("upsample", dict(size=size, data_format=fmt, interpolation="nearest")),
            _image(h * size[0], w * size[1], c, fmt))


def _draw_pool(draw, shape, fmt, dialect):
    h, w, c = _hwc(shape, fmt)
    padding = draw(st.sampled_from(["valid", "same"]))
    pool = tuple(draw(st.integers(1, 3 if padding == "same" else min(3, n))) for n in (h, w))
    strides = draw(st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    s = strides or pool
    spec = LayerSpec(draw(st.sampled_from(["max_pool", "avg_pool"])), dict(
        pool_size=pool, strides=strides, padding=padding, data_format=fmt))
    oh = _window_out(h, pool[0], s[0], 1, padding)
    ow = _window_out(w, pool[1], s[1], 1, padding)
    return spec, _image(oh, ow, c, fmt)


def _draw_batch_norm(draw, shape, fmt, dialect):
    rank = len(shape) + 1
    if len(shape) == 3:
        ch = _channel_axis(fmt)
        axis = draw(st.sampled_from([ch, ch - rank]) | st.sampled_from([1, 2, 3]))
    else:
        axis = draw(st.sampled_from([-1, rank - 1]))
    spec = LayerSpec("batch_norm", dict(
        axis=axis, epsilon=draw(st.sampled_from([1e-3, 1e-5, 0.1])),
        center=draw(st.booleans()), scale=draw(st.booleans())))
    return spec, shape


def _draw_normalization(draw, shape, fmt, dialect):
    """Keras's preprocessing Normalization: per-channel, last-axis, or over several axes (its
    mean / variance then have those axes' sizes); values are set by randomize_weights."""
    rank = len(shape) + 1
    if len(shape) == 3:
        ch = _channel_axis(fmt)
        axis = draw(st.sampled_from([ch, -1]) | st.lists(
            st.integers(1, rank - 1), min_size=1, max_size=2, unique=True).map(tuple))
    else:
        axis = -1
    return LayerSpec("normalization", dict(axis=axis)), shape


def _draw_activation_layer(draw, shape, fmt, dialect):
    kind = draw(st.sampled_from(["relu", "leaky_relu", "prelu", "activation", "softmax"]))
    rank = len(shape) + 1
    if kind == "relu":
        params = dict(
            max_value=draw(st.none() | st.sampled_from([6.0, 1.0]) | st.floats(0.5, 3.0)),
            negative_slope=draw(st.sampled_from([0.0]) | st.floats(0.0, 0.5)),
            threshold=draw(st.sampled_from([0.0]) | st.floats(0.0, 0.5)),
        )
    elif kind == "leaky_relu":
        params = dict(negative_slope=draw(st.floats(0.01, 0.5)))
    elif kind == "prelu":
        axes = draw(st.none() | st.lists(st.integers(1, rank - 1), min_size=1, max_size=rank - 1,
                                          unique=True).map(sorted))
        params = dict(shared_axes=axes)
    elif kind == "activation":
        params = dict(activation=draw(st.sampled_from(_activations(dialect) + ("softmax",))))
    else:
        params = dict(axis=draw(st.sampled_from([-1, *range(1, rank)])))
    return LayerSpec(kind, params), shape


def _draw_rescaling(draw, shape, fmt, dialect):
    scale = draw(st.sampled_from([1 / 255, 2.0])
                 | st.floats(-2.0, 2.0).filter(lambda v: abs(v) > 0.05))
    offset = draw(st.sampled_from([0.0, -1.0]) | st.floats(-1.0, 1.0))
    return LayerSpec("rescaling", dict(scale=scale, offset=offset)), shape


def _draw_dropout(draw, shape, fmt, dialect):
    kinds = ["dropout", "gaussian_noise", "gaussian_dropout", "alpha_dropout"]
    if len(shape) == 3:
        kinds.append("spatial_dropout")
    kind = draw(st.sampled_from(kinds))
    params: dict[str, Any] = dict(rate=draw(st.floats(0.1, 0.6)))
    if kind == "gaussian_noise":
        params = dict(stddev=params["rate"])
    if kind == "spatial_dropout":
        params["data_format"] = fmt
    return LayerSpec(kind, params), shape


def _draw_zero_pad(draw, shape, fmt, dialect):
    h, w, c = _hwc(shape, fmt)
    (t, b), (l, r) = draw(st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                                    st.tuples(st.integers(0, 2), st.integers(0, 2))))
    spec = LayerSpec("zero_pad", dict(padding=((t, b), (l, r)), data_format=fmt))
    return spec, _image(h + t + b, w + l + r, c, fmt)


def _draw_reshape(draw, shape, fmt, dialect):
    """A raw reshape that keeps the tensor an image: swap the sizes of the two spatial axes
    (the data is reinterpreted, not transposed), with one size given as -1."""
    h, w, c = _hwc(shape, fmt)
    new = _image(w, h, c, fmt)
    hole = draw(st.sampled_from([None, 0, 1, 2]))
    target = tuple(-1 if i == hole else n for i, n in enumerate(new))
    return LayerSpec("reshape", dict(target_shape=target)), new


_IMAGE_LAYERS = (
    (_draw_conv, 5), (_draw_pool, 2), (_draw_batch_norm, 2), (_draw_activation_layer, 2),
    (_draw_rescaling, 1), (_draw_dropout, 1), (_draw_zero_pad, 1), (_draw_reshape, 1),
    (_draw_normalization, 1), (_draw_depthwise, 2), (_draw_upsample, 1),
)
_VECTOR_LAYERS = (_draw_batch_norm, _draw_activation_layer, _draw_rescaling, _draw_dropout,
                  _draw_normalization)


def _draw_weighted(draw, table):
    """Pick one drawer from [(drawer, weight)] (hypothesis shrinks towards the first)."""
    pool = [fn for fn, weight in table for _ in range(weight)]
    return draw(st.sampled_from(pool))


def _draw_image_layer(draw, shape, fmt, dialect):
    return _draw_weighted(draw, _IMAGE_LAYERS)(draw, shape, fmt, dialect)


def _draw_head(draw, shape, fmt, dialect) -> tuple[list[LayerSpec], tuple[int, ...]]:
    """Image -> vector (flatten or global pooling), a few vector layers, Dense, maybe Softmax;
    or no head at all (the model outputs the image tensor)."""
    way = draw(st.sampled_from(["flatten", "global_pool", "none"]))
    if way == "none":
        return [], shape
    layers: list[LayerSpec] = []
    h, w, c = _hwc(shape, fmt)
    if way == "flatten":
        layers.append(LayerSpec("flatten", dict(data_format=fmt)))
        shape = (h * w * c,)
    else:
        keepdims = draw(st.booleans())
        layers.append(LayerSpec(draw(st.sampled_from(["global_avg_pool", "global_max_pool"])),
                                dict(data_format=fmt, keepdims=keepdims)))
        if keepdims:
            layers.append(LayerSpec("flatten", dict(data_format=fmt)))
        shape = (c,)
    for _ in range(draw(st.integers(0, 2))):
        spec, shape = draw(st.sampled_from(_VECTOR_LAYERS))(draw, shape, fmt, dialect)
        layers.append(spec)
    units = draw(st.integers(1, 6))
    final = draw(st.sampled_from(["dense", "dense_softmax", "softmax_layer"]))
    act = "softmax" if final == "dense_softmax" else draw(st.sampled_from(_activations(dialect)))
    layers.append(LayerSpec("dense", dict(units=units, activation=act,
                                          use_bias=draw(st.booleans()))))
    if final == "softmax_layer":
        layers.append(LayerSpec("softmax", dict(axis=-1)))
    return layers, (units,)


def _draw_input(draw, dialect):
    fmt = draw(st.sampled_from(["channels_last", "channels_first"]))
    h, w = draw(st.integers(5, 12)), draw(st.integers(5, 12))
    return fmt, _image(h, w, draw(st.integers(1, 4)), fmt)


def _draw_merge_block(draw, shape, fmt, dialect):
    """Parallel branches that keep the spatial size in step (all reduce by the same stride with
    `same` padding or 1x1 kernels), merged by Add (same channels) or Concatenate."""
    h, w, c = _hwc(shape, fmt)
    kind = draw(st.sampled_from(["add", "concat"]))
    stride = draw(st.sampled_from([1, 2]))
    n_branches = draw(st.integers(2, 3))
    add_filters = draw(st.integers(1, 6))
    branches, out_shapes = [], []
    for _ in range(n_branches):
        filters = add_filters if kind == "add" else draw(st.integers(1, 6))
        if stride == 1 and filters == c and draw(st.booleans()):
            branches.append([])       # identity branch (a shortcut)
            out_shapes.append(shape)
            continue
        k1 = draw(st.integers(1, 3))
        padding = "same" if k1 > 1 else draw(st.sampled_from(["same", "valid"]))
        two_convs = draw(st.booleans())
        first = draw(st.integers(1, 6)) if two_convs else filters
        conv = LayerSpec("conv", dict(
            filters=first, kernel_size=(k1, k1), strides=(stride, stride), padding=padding,
            dilation_rate=(1, 1), activation=draw(st.sampled_from(_activations(dialect))),
            use_bias=draw(st.booleans()), data_format=fmt))
        cur = _image(-(-h // stride), -(-w // stride), first, fmt)
        branch = [conv]
        if draw(st.booleans()):
            extra, cur = draw(st.sampled_from([_draw_batch_norm, _draw_activation_layer,
                                               _draw_dropout]))(draw, cur, fmt, dialect)
            branch.append(extra)
        if two_convs:
            conv2, cur = _draw_conv(draw, cur, fmt, dialect, filters=filters, strides=(1, 1),
                                    padding="same")
            branch.append(conv2)
        branches.append(branch)
        out_shapes.append(cur)
    if kind == "add":
        return Block("add", branches=branches), out_shapes[0]
    ch = _channel_axis(fmt)
    if all(s == out_shapes[0] for s in out_shapes) and draw(st.booleans()):
        axis = draw(st.sampled_from([1, 2, 3, -1, -2, -3]))
    else:
        axis = draw(st.sampled_from([ch, ch - 4]))
    pos = axis if axis > 0 else axis + 4
    out = list(out_shapes[0])
    out[pos - 1] = sum(s[pos - 1] for s in out_shapes)
    return Block("concat", branches=branches, axis=axis), tuple(out)


def _draw_shared_block(draw, shape, fmt, dialect):
    """A shape-keeping convolution called twice (a shared layer: two inbound nodes)."""
    h, w, c = _hwc(shape, fmt)
    conv, _ = _draw_conv(draw, shape, fmt, dialect, filters=c, strides=(1, 1), padding="same")
    return Block("shared", layer=conv), shape


@st.composite
def model_specs(draw, dialect: str, functional: bool, nested: bool = False) -> ModelSpec:
    """Random Sequential (plain layers) or Functional (plus Add / Concatenate / shared-layer
    blocks) CNN specs for `dialect` "keras3" or "tf_keras"; `nested` wraps part of a
    Functional model in an inner model."""
    fmt, shape = _draw_input(draw, dialect)
    input_shape = shape
    blocks: list[Block] = []
    for _ in range(draw(st.integers(1, 5))):
        choice = draw(st.sampled_from(["layer", "layer", "merge", "shared"]) if functional
                      else st.just("layer"))
        if choice == "merge":
            block, shape = _draw_merge_block(draw, shape, fmt, dialect)
        elif choice == "shared":
            block, shape = _draw_shared_block(draw, shape, fmt, dialect)
        else:
            layer, shape = _draw_image_layer(draw, shape, fmt, dialect)
            block = Block("layer", layer=layer)
        blocks.append(block)
    head, shape = _draw_head(draw, shape, fmt, dialect)
    blocks += [Block("layer", layer=layer) for layer in head]
    nest = None
    if nested:
        start = draw(st.integers(0, len(blocks) - 1))
        nest = (start, draw(st.integers(start + 1, len(blocks))))
    return ModelSpec(input_shape, fmt, blocks, functional or nested,
                     draw(st.integers(0, 2**31 - 1)), nest)


@st.composite
def multi_io_specs(draw, dialect: str) -> MultiIOSpec:
    """An image input through a small conv trunk and a vector input, merged into a classifier
    output, plus a second output (conv on the trunk, or a dense on the vector)."""
    fmt, shape = _draw_input(draw, dialect)
    image_shape = shape
    trunk = []
    for _ in range(draw(st.integers(1, 3))):
        layer, shape = _draw_image_layer(draw, shape, fmt, dialect)
        trunk.append(layer)
    pool = LayerSpec(draw(st.sampled_from(["global_avg_pool", "global_max_pool", "flatten"])),
                     dict(data_format=fmt))
    return MultiIOSpec(
        image_shape=image_shape, vector_size=draw(st.integers(2, 8)), data_format=fmt,
        trunk=trunk, pool=pool, vector_units=draw(st.integers(1, 6)),
        classes=draw(st.integers(2, 6)), second_output=draw(st.sampled_from(["image", "vector"])),
        swap_inputs=draw(st.booleans()), swap_outputs=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------
def dialect_of(K) -> str:
    return "keras3" if K.__version__.startswith("3.") else "tf_keras"


def make_layer(K, spec: LayerSpec):
    """The Keras layer for `spec` in the dialect of module `K`."""
    L, p, kind = K.layers, dict(spec.params), spec.kind
    simple = {
        "conv": L.Conv2D, "max_pool": L.MaxPooling2D, "avg_pool": L.AveragePooling2D,
        "batch_norm": L.BatchNormalization, "relu": L.ReLU, "prelu": L.PReLU,
        "activation": L.Activation, "softmax": L.Softmax, "rescaling": L.Rescaling,
        "zero_pad": L.ZeroPadding2D, "reshape": L.Reshape, "flatten": L.Flatten,
        "global_avg_pool": L.GlobalAveragePooling2D, "global_max_pool": L.GlobalMaxPooling2D,
        "dense": L.Dense, "dropout": L.Dropout, "spatial_dropout": L.SpatialDropout2D,
        "gaussian_noise": L.GaussianNoise, "gaussian_dropout": L.GaussianDropout,
        "alpha_dropout": L.AlphaDropout, "normalization": L.Normalization,
        "depthwise": L.DepthwiseConv2D, "separable": L.SeparableConv2D,
        "upsample": L.UpSampling2D,
    }
    if kind == "leaky_relu":
        slope = p.pop("negative_slope")
        p["negative_slope" if dialect_of(K) == "keras3" else "alpha"] = slope
        return L.LeakyReLU(**p)
    return simple[kind](**p)


# Layers whose computation depends on data_format: the channels_last twin runs them between
# Permutes instead (see Builder).
_LAYOUT_KINDS = frozenset({"conv", "max_pool", "avg_pool", "zero_pad", "global_avg_pool",
                           "global_max_pool", "flatten", "spatial_dropout", "depthwise",
                           "separable", "upsample"})


class Builder:
    """Builds the model of a spec; remembers the Keras layer made for each LayerSpec.

    With `twin=True` it builds the *channels_last twin* of a channels_first spec: the same
    function, with the tensors kept in (C, H, W) layout and every layout-dependent layer run as
    Permute -> channels_last layer -> Permute (Flatten and global pooling: Permute, then the
    channels_last layer, which is how Keras defines them for channels_first). The twin never
    uses TensorFlow's NCHW kernels, so it is an oracle for channels_first models independent of
    them; `copy_weights` gives it the original's weights.
    """

    def __init__(self, K, twin: bool = False):
        self.K, self.twin = K, twin
        self.layers: dict[int, Any] = {}

    def _via_permute(self, spec: LayerSpec) -> bool:
        return (self.twin and spec.kind in _LAYOUT_KINDS
                and spec.params.get("data_format") == "channels_first")

    def __call__(self, spec: LayerSpec, x):
        """Apply the (one, possibly shared) layer of `spec` to tensor `x`."""
        layer = self.layers.get(id(spec))
        via = self._via_permute(spec)
        if layer is None:
            made = LayerSpec(spec.kind, dict(spec.params, data_format="channels_last")) \
                if via else spec
            layer = self.layers[id(spec)] = make_layer(self.K, made)
        if not via:
            return layer(x)
        P = self.K.layers.Permute
        y = layer(P((2, 3, 1))(x))
        return P((3, 1, 2))(y) if len(y.shape) == 4 else y

    def blocks(self, blocks: list[Block], x):
        for block in blocks:
            if block.kind == "layer":
                x = self(block.layer, x)
            elif block.kind == "shared":
                x = self(block.layer, self(block.layer, x))
            else:
                outs = []
                for branch in block.branches:
                    y = x
                    for spec in branch:
                        y = self(spec, y)
                    outs.append(y)
                merge = (self.K.layers.Add() if block.kind == "add"
                         else self.K.layers.Concatenate(axis=block.axis))
                x = merge(outs)
        return x


def build_model(K, spec: ModelSpec, builder: Builder | None = None):
    """The Keras model for `spec` (weights still Keras's initial ones: see randomize_weights).
    A twin builder gives a flat Functional model of the same function."""
    b = builder or Builder(K)
    if not spec.functional and not b.twin:
        return K.Sequential([K.Input(shape=spec.input_shape),
                             *(b.layers.setdefault(id(bl.layer), make_layer(K, bl.layer))
                               for bl in spec.blocks)])
    inp = K.Input(shape=spec.input_shape)
    blocks = spec.blocks
    if spec.nest is None or b.twin:
        return K.Model(inp, b.blocks(blocks, inp))
    start, stop = spec.nest
    x = b.blocks(blocks[:start], inp)
    inner_in = K.Input(shape=tuple(x.shape[1:]))
    inner_blocks = blocks[start:stop]
    if all(bl.kind == "layer" for bl in inner_blocks):
        inner = K.Sequential([inner_in, *(b.layers.setdefault(id(bl.layer), make_layer(K, bl.layer))
                                          for bl in inner_blocks)])
    else:
        inner = K.Model(inner_in, b.blocks(inner_blocks, inner_in))
    return K.Model(inp, b.blocks(blocks[stop:], inner(x)))


def _multi_io_heads(spec: MultiIOSpec) -> dict[str, LayerSpec]:
    """The fixed layers of a MultiIOSpec (kept per spec so that a twin can share them)."""
    return spec.__dict__.setdefault("_heads", dict(
        vector=LayerSpec("dense", dict(units=spec.vector_units, activation="relu")),
        classes=LayerSpec("dense", dict(units=spec.classes, activation="softmax")),
        map=LayerSpec("conv", dict(filters=2, kernel_size=1, activation="tanh",
                                   data_format=spec.data_format)),
        score=LayerSpec("dense", dict(units=3, activation="sigmoid")),
    ))


def build_multi_io(K, spec: MultiIOSpec, builder: Builder | None = None):
    """Two-input, two-output Functional model for `spec`."""
    b = builder or Builder(K)
    heads = _multi_io_heads(spec)
    image = K.Input(shape=spec.image_shape, name="image")
    vector = K.Input(shape=(spec.vector_size,), name="vector")
    x = image
    for layer in spec.trunk:
        x = b(layer, x)
    trunk_out = x
    joint = K.layers.Concatenate()([b(spec.pool, x), b(heads["vector"], vector)])
    out1 = b(heads["classes"], joint)
    if spec.second_output == "image":
        out2 = b(heads["map"], trunk_out)
    else:
        out2 = b(heads["score"], vector)
    inputs = [vector, image] if spec.swap_inputs else [image, vector]
    outputs = [out2, out1] if spec.swap_outputs else [out1, out2]
    return K.Model(inputs, outputs)


def copy_weights(source: Builder, target: Builder) -> None:
    """Give every layer `target` made the weights of the layer `source` made for the same spec."""
    for key, layer in target.layers.items():
        layer.set_weights(source.layers[key].get_weights())
        if layer.__class__.__name__ == "Normalization":
            layer.finalize_state()


def _variable_name(v) -> str:
    """Short variable name (`kernel`, `moving_mean`, ...) in both dialects."""
    name = getattr(v, "path", None) or v.name
    return name.split("/")[-1].split(":")[0]


def randomize_weights(model, seed: int) -> None:
    """Give every variable random values of its kind: kernels (depthwise and pointwise ones
    too) ~ N(0, 1/fan_in), biases and betas ~ N(0, 0.2^2), gammas in [0.5, 1.5], moving means
    ~ N(0, 0.5^2), moving variances in [0.3, 2], PReLU slopes in [-0.3, 0.6], Normalization
    means ~ N(0, 0.5^2) and variances in [0.3, 2]. Keras's initial moving statistics (0 and 1)
    would hide a reader that ignores them."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(int(d) for d in v.shape)
        name = _variable_name(v)
        if name in ("kernel", "depthwise_kernel", "pointwise_kernel"):
            fan_in = int(np.prod(shape[:-1])) or 1
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        elif name == "gamma":
            value = rng.uniform(0.5, 1.5, shape)
        elif name == "moving_variance":
            value = rng.uniform(0.3, 2.0, shape)
        elif name == "moving_mean":
            value = rng.normal(0.0, 0.5, shape)
        elif name == "alpha":
            value = rng.uniform(-0.3, 0.6, shape)
        elif name in ("bias", "beta"):
            value = rng.normal(0.0, 0.2, shape)
        elif name == "mean":          # Normalization
            value = rng.normal(0.0, 0.5, shape)
        elif name == "variance":
            value = rng.uniform(0.3, 2.0, shape)
        else:
            continue
        v.assign(value.astype(np.float32))
    _finalize_normalization(model)


def _finalize_normalization(model) -> None:
    """Normalization layers compute with copies of their mean / variance variables made by
    `finalize_state()` (as after `adapt` or loading): refresh them after assigning."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            _finalize_normalization(layer)
        elif layer.__class__.__name__ == "Normalization":
            layer.finalize_state()


def random_inputs(shapes: list[tuple[int, ...]], seed: int) -> list[np.ndarray]:
    """A batch of BATCH standard-normal float32 samples per input shape."""
    rng = np.random.default_rng(seed + 1)
    return [rng.standard_normal((BATCH, *s)).astype(np.float32) for s in shapes]
