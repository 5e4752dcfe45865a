"""Bind graph nodes to the Numba kernels in `refdecomp.kernels`.

`lower(graph)` returns `{node name: fn(inputs, mask, seen, groups) -> output}` for the nodes
whose op's spec names a lowering in `LOWERINGS` (conv2d, depthwise_conv2d, dense, max/avg
pooling, same-shape add); every other node runs on the reference ops. Layout conversions
(channels_first) and activations the kernels do not implement are handled here, so the kernels
only ever see NHWC arrays and activation codes.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..activations import activation_code
from ..graph import Graph, Node
from ..kernels.add import add as add_kernel
from ..kernels.conv import Conv2D
from ..kernels.dense import Dense
from ..kernels.depthwise import DepthwiseConv2D
from ..kernels.epilogue import PerThreadRecord
from ..kernels.pool import pool2d
from . import reference as ref

NO_MASK = np.empty(0, np.uint8)
NO_SEEN = np.empty((0, 0), np.uint8)
NO_GROUPS = np.empty(0, np.int32)
LINEAR_CODE = (0, 0.0, 0.0, 0.0)

Fn = Callable[[list, "np.ndarray | None", "np.ndarray | None", "np.ndarray | None"], np.ndarray]


def _weighted(node: Node, kernel, positions: int, channels: int, channels_first: bool) -> Fn:
    """Wrap a Conv2D / Dense kernel: flat mask/seen addressing, fallback activations."""
    code = activation_code(node.activation)
    where = ref.describe_layer(node.name, node.keras_class or node.op)
    kernel.act = code if code is not None else LINEAR_CODE
    sp, sc = (1, positions) if channels_first else (channels, 1)

    def run(x, mask, seen, groups):
        fused_mask = mask is not None and code is not None
        y = kernel(x, mask.reshape(-1) if fused_mask else NO_MASK, sp, sc,
                   _flat_seen(seen), sp, sc,
                   NO_GROUPS if groups is None else groups)
        return y, (None if code is not None else node.activation), \
            (mask if mask is not None and not fused_mask else None), where
    return run


def _flat_seen(seen):
    """Recording target as the kernels address it: a `PerThreadRecord` (already flat,
    resolved per thread inside the kernels) or a (n_groups, ...) array, flattened per group
    (an array must then be written from one thread only)."""
    if seen is None:
        return NO_SEEN
    return seen if isinstance(seen, PerThreadRecord) else seen.reshape(seen.shape[0], -1)


def _finish(y, act, mask, where):
    if act is not None:
        y = ref.activate(y, act, where)
    if mask is not None:
        y = y * mask
    return y


def _windowed(make_kernel: Callable[[Node], object]) -> Callable[[Node], Fn]:
    """The lowering of a sliding-window weighted op whose kernel class takes NHWC input and
    has `cout` output channels (Conv2D, DepthwiseConv2D): channels_first runs between
    transposes."""
    def lower_windowed(node: Node) -> Fn:
        cf = node.attrs.get("data_format") == "channels_first"
        kern = make_kernel(node)
        spatial = node.shape[1:] if cf else node.shape[:-1]
        run = _weighted(node, kern, int(np.prod(spatial)), kern.cout, cf)

        def windowed(inputs, mask, seen, groups):
            x = inputs[0]
            if cf:
                x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            y, act, m, where = run(x, mask, seen, groups)
            if cf:
                y = np.ascontiguousarray(y.transpose(0, 3, 1, 2))
            return _finish(y, act, m, where)
        return windowed
    return lower_windowed


def _window_args(node: Node) -> tuple:
    a = node.attrs
    return (node.weights["kernel"], node.weights.get("bias"), a["strides"], a["padding"],
            a.get("dilation", (1, 1)), LINEAR_CODE)


def _dense(node: Node) -> Fn:
    k = node.weights["kernel"]
    kern = Dense(k, node.weights.get("bias"), LINEAR_CODE)
    run = _weighted(node, kern, int(np.prod(node.shape[:-1], dtype=np.int64)), k.shape[-1], False)

    def dense(inputs, mask, seen, groups):
        return _finish(*run(np.ascontiguousarray(inputs[0]), mask, seen, groups))
    return dense


def _pool(is_max: bool) -> Callable[[Node], Fn]:
    def lower_pool(node: Node) -> Fn:
        a = node.attrs
        cf = a.get("data_format") == "channels_first"

        def pool(inputs, mask, seen, groups):
            x = ref.to_nhwc(inputs[0], "channels_first" if cf else "channels_last")
            y = pool2d(x, tuple(a["pool"]), tuple(a["strides"]), a["padding"], is_max)
            return np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if cf else y
        return pool
    return lower_pool


def _add(node: Node, act: Node | None = None) -> Fn:
    """Sum of the inputs; with `act` (an activation node reading only this sum), act(sum)
    in the same pass."""
    code = LINEAR_CODE if act is None else activation_code(act.activation)

    def add(inputs, mask, seen, groups):
        if code is None or any(t.shape != inputs[0].shape for t in inputs[1:]):
            y = ref.add(node, inputs)        # broadcasting add: the reference handles it
            return y if act is None else ref.run_node(act, [y])
        return add_kernel([t.astype(np.float32, copy=False) for t in inputs], code)
    return add


#: The lowerings an op's spec may name (`OpSpec.lowering`).
LOWERINGS: dict[str, Callable[[Node], Fn]] = {
    "conv": _windowed(lambda node: Conv2D(*_window_args(node))),
    "depthwise": _windowed(lambda node: DepthwiseConv2D(*_window_args(node))),
    "dense": _dense, "max_pool": _pool(True), "avg_pool": _pool(False),
    "add": _add}


def lower(graph: Graph) -> dict[str, Fn]:
    """Kernel-backed implementations of the graph's nodes whose op names a lowering."""
    return {n.name: LOWERINGS[n.spec.lowering](n) for n in graph if n.spec.lowering}


def add_activation_pairs(graph: Graph) -> dict[str, tuple[str, Fn]]:
    """{add node: (activation node, fn computing act(sum))} for every add whose only reader
    is an activation the kernels implement (the residual `Add -> ReLU` of ResNets). The
    executor runs the pair as one pass when the add's own output is not asked for; the graph
    itself is unchanged (module files and exports see the same nodes)."""
    consumers = graph.consumers()
    pairs = {}
    for node in (n for n in graph if n.spec.lowering == "add"):
        readers = consumers[node.name]
        if len(readers) != 1 or node.name in graph.outputs:
            continue
        act = graph[readers[0]]
        if act.op == "activation" and activation_code(act.activation) is not None:
            pairs[node.name] = (act.name, _add(node, act))
    return pairs
