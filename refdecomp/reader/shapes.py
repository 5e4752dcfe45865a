"""Shape inference on the IR: the output shape of each op from its attrs, weights and input shapes.

Shapes exclude the batch axis; `None` marks a dimension the file leaves open (e.g. a fully
convolutional model with input `(None, None, 3)`). `with_input_shapes` fixes such dimensions
for a concrete input size and re-infers every node, which is what running the graph needs.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import limits
from ..errors import DataError, LimitError, ModelFormatError
from ..graph import Graph, Node
from ..ops import registry

Shape = tuple


class ShapeError(ValueError):
    """An op cannot be applied to inputs of these shapes (the message says why)."""


def hwc(shape: Shape, fmt: str):
    if len(shape) != 3:
        raise ShapeError(f"expects a rank-3 input (H, W, C) without the batch axis, got "
                         f"shape {shape}")
    return (shape[1], shape[2], shape[0]) if fmt == "channels_first" else shape


def from_hwc(h, w, c, fmt: str) -> Shape:
    return (c, h, w) if fmt == "channels_first" else (h, w, c)


def window_out(n, k: int, s: int, d: int, padding: str):
    """Output length of a sliding window (convolution or pooling), as Keras computes it."""
    if n is None:
        return None
    if padding == "same":
        return -(-n // s)
    span = (k - 1) * d + 1
    return (n - span) // s + 1 if n >= span else 0


def prod(shape: Shape):
    """Exact product (Python integers never wrap), None if a dimension is open."""
    if any(d is None for d in shape):
        return None
    n = 1
    for d in shape:
        n *= int(d)
    return n


def broadcast_dim(a, b, what: str):
    if a is None:
        return b
    if b is None or a == b or b == 1:
        return a
    if a == 1:
        return b
    raise ShapeError(f"cannot {what} inputs whose dimensions {a} and {b} differ")


def positive_pair(attrs: dict, key: str, default=None) -> tuple[int, int]:
    value = attrs.get(key, default)
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
            for v in value):
        raise ShapeError(f"{key} {value!r} must be two integers >= 1")
    return int(value[0]), int(value[1])


def window_shape(attrs: dict, shape: Shape, k: tuple, channels, where: str) -> Shape:
    """Output shape of a convolution or pooling window; refuses sizes that would let an index
    leave its buffer (a size, stride or dilation < 1) and padded inputs or window index maps
    above the per-tensor limit."""
    fmt = attrs.get("data_format", "channels_last")
    h, w, c = hwc(shape, fmt)
    k = positive_pair({"kernel or pool size": tuple(k)}, "kernel or pool size")
    d = positive_pair(attrs, "dilation", (1, 1))
    s, p = positive_pair(attrs, "strides"), attrs["padding"]
    if p not in ("valid", "same"):
        raise ShapeError(f"padding {p!r} is neither 'valid' nor 'same'")
    oh, ow = window_out(h, k[0], s[0], d[0], p), window_out(w, k[1], s[1], d[1], p)
    if None not in (h, w, c) and p == "same":
        span_h, span_w = (k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1
        padded = (max(h, (oh - 1) * s[0] + span_h), max(w, (ow - 1) * s[1] + span_w), c)
        _limit(padded, where, "the zero-padded input")
    if None not in (oh, ow):
        _limit((oh * ow, k[0] * k[1]), where, "the window index map (positions x taps)")
    return from_hwc(oh, ow, c if channels is None else channels, fmt)


def _limit(shape: Shape, where: str, what: str) -> None:
    try:
        limits.elements(shape, where, what)
    except LimitError as exc:
        raise ShapeError(str(exc).split(": ", 1)[1]) from None


def check_scales(attrs: dict, x: Shape) -> None:
    """Rescaling's scale / offset lists broadcast on the last axis: one value or one per
    channel."""
    for key in ("scale", "offset"):
        value = attrs.get(key)
        if isinstance(value, (list, tuple)) and len(value) != 1 and (
                not x or (x[-1] is not None and len(value) != x[-1])):
            raise ShapeError(f"has {len(value)} {key} values for an input of shape {x}; give "
                             f"one value or one per channel ({x[-1] if x else 0})")


def output_shape(op: str, attrs: dict, weights: dict, shapes: list[Shape],
                 where: str = "") -> Shape:
    """Output shape of one op, by its registered shape rule; raises `ShapeError` if the inputs
    do not fit or the output (one image's tensor) is above the per-tensor limit."""
    spec = registry.spec(op)
    if spec.n_inputs is None:
        if not shapes or len({len(s) for s in shapes}) != 1:
            raise ShapeError(f"cannot {op} inputs of shapes {shapes}")
    elif len(shapes) != spec.n_inputs:
        raise ShapeError(f"expects one input, got {len(shapes)}")
    out = tuple(spec.shape(attrs, weights, shapes, where))
    if any(d is not None and d <= 0 for d in out):
        raise ShapeError(f"gives an empty output shape {out}; the input {shapes[0]} is smaller "
                         f"than the kernel or pool")
    _limit(tuple(1 if d is None else d for d in out), where, "the output tensor of one image")
    return out


def add_shape(shapes: list[Shape]) -> Shape:
    """Element-wise sum: equal dimensions, or 1 / open ones broadcast."""
    out = shapes[0]
    for s in shapes[1:]:
        out = tuple(broadcast_dim(a, b, "add") for a, b in zip(out, s))
    return out


def concat_shape(axis: int, shapes: list[Shape]) -> Shape:
    """Concatenation along `axis` (counted with the batch axis): other dimensions agree."""
    rank = len(shapes[0])
    pos = axis + rank + 1 if axis < 0 else axis
    if not 1 <= pos <= rank:
        raise ShapeError(f"axis {axis} is out of range for inputs of rank {rank + 1}")
    out = list(shapes[0])
    sizes = [s[pos - 1] for s in shapes]
    for s in shapes[1:]:
        for i, (a, b) in enumerate(zip(out, s)):
            if i != pos - 1:
                if a is not None and b is not None and a != b:
                    raise ShapeError(f"cannot concatenate inputs of shapes {shapes} on axis "
                                     f"{axis}")
                out[i] = a if a is not None else b
    out[pos - 1] = None if any(d is None for d in sizes) else sum(sizes)
    return tuple(out)


def reshape_shape(x: Shape, target: tuple) -> Shape:
    if sum(d == -1 for d in target) > 1 or any(d < -1 or d == 0 for d in target):
        raise ShapeError(f"target_shape {target} is not valid")
    total, known = prod(x), prod(tuple(d for d in target if d != -1))
    if -1 in target:
        if total is not None and total % known:
            raise ShapeError(f"cannot reshape {x} to {target}")
        return tuple((None if total is None else total // known) if d == -1 else d
                     for d in target)
    if total is not None and total != known:
        raise ShapeError(f"cannot reshape {x} ({total} values) to {target}")
    return target


def infer(node: Node, shapes: list[Shape], source: str = "") -> Shape:
    """`output_shape` for a node, with errors that name the file and layer."""
    try:
        return output_shape(node.op, node.attrs, node.weights, shapes, source)
    except ShapeError as exc:
        raise ModelFormatError(f"{source}: layer {node.name!r} ({node.keras_class or node.op}) "
                               f"{exc}") from None


def with_input_shapes(graph: Graph, shapes: list[Any]) -> Graph:
    """A copy of `graph` whose inputs have the given concrete shapes (no batch axis) and every
    node's shape re-inferred; for graphs whose file leaves dimensions open."""
    if len(shapes) != len(graph.inputs):
        raise DataError(f"with_input_shapes: the model has {len(graph.inputs)} inputs, "
                        f"got {len(shapes)} shapes")
    given = dict(zip(graph.inputs, (tuple(int(d) for d in s) for s in shapes)))
    known: dict[str, Shape] = {}
    nodes = []
    for node in graph.nodes:
        if node.op == "input":
            want = given[node.name]
            if len(want) != len(node.shape) or any(
                    d is not None and d != w for d, w in zip(node.shape, want)):
                raise DataError(f"input {node.name!r} has shape {node.shape}; {want} does not "
                                f"fit it")
            shape = want
        else:
            shape = infer(node, [known[i] for i in node.inputs], graph.source)
        known[node.name] = shape
        nodes.append(node.replace(shape=shape))
    return graph.with_nodes(nodes)
