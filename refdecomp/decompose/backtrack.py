"""Backtracking (paper Section 3.4, MC-BLN and MC-BI) as a liveness analysis.

One backward pass in reverse topological order computes, for every tensor, which of its nodes
(elements) can still influence the module's output. Each op answers "given which of my output
nodes are live, which of my input nodes are live for me"; a node read by several layers is
live when it is live for ANY of them (dead only when dead for all). Masked (inactive) nodes are
dead sources: their value is forced to 0, so their inputs do not matter through them. A conv2d /
dense node found dead gets mask 0, which changes no output of the module: this is exactly the
paper's "remove nodes that only feed removed nodes", extended to every op of the graph.

Modes: "last_conv" (MC-BLN): conv2d layers are barriers (all their inputs stay live), so the
pass runs through the dense head, flatten / pooling / add layers back to the last convolutions.
"input" (MC-BI): the pass also goes through convolutions (via the sliding-window source/sink
maps of `refdecomp.windows.source_sink`) down to the model input.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import RefdecompError, UnsupportedLayerError, describe_layer
from ..graph import WEIGHTED_OPS, Graph, Node

MODES = ("last_conv", "input")

_ELEMENTWISE = frozenset({"activation", "prelu", "batch_norm", "rescaling", "normalization",
                          "identity"})


def liveness(graph: Graph, masks: Mapping[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
    """{node name: bool array of the node's output shape, True = live} for every node.

    `masks` holds the module's keep masks of conv2d / dense nodes (absent = all kept). The graph
    outputs are live everywhere.
    """
    if mode not in MODES:
        raise RefdecompError(f"argument backtrack={mode!r}: expected one of "
                             f"('none', {', '.join(repr(m) for m in MODES)})")
    live = {n.name: np.zeros(n.shape, dtype=bool) for n in graph.nodes}
    for name in graph.outputs:
        live[name][...] = True
    for node in reversed(graph.nodes):
        out = live[node.name]
        if node.name in masks:
            out &= np.asarray(masks[node.name]) != 0
        if node.op == "input" or not out.any():
            continue
        for src, need in zip(node.inputs, _live_inputs(graph, node, out, mode)):
            live[src] |= need
    return live


def prune_masks(graph: Graph, masks: Mapping[str, np.ndarray], mode: str,
                exclude: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """Masks with every dead conv2d / dense node set to 0 (nodes in `exclude` untouched)."""
    live = liveness(graph, masks, mode)
    out = {}
    for node in graph.nodes:
        if node.op in WEIGHTED_OPS and node.name not in exclude:
            out[node.name] = live[node.name].astype(np.uint8)
    return out


# -- per-op rules: live output nodes -> live input nodes --------------------------------------
def _live_inputs(graph: Graph, node: Node, out: np.ndarray, mode: str) -> list[np.ndarray]:
    in_shapes = [graph[s].shape for s in node.inputs]
    op = node.op
    if op in _ELEMENTWISE:
        act = node.attrs.get("activation", {}) if op == "activation" else {}
        if act.get("name") == "softmax":
            return [_along_axis(out, act.get("axis", -1))]
        return [out.copy()]
    if op == "softmax":
        axes = node.attrs.get("axis", -1)
        return [_along_axis(out, axes)]
    if op == "add":
        return [out.copy() for _ in node.inputs]
    if op == "channel_logsumexp":  # concerned reads z_c, unconcerned every other logit
        c = node.attrs["class_index"]
        live = np.full(in_shapes[0], bool(out[1]))
        live[c] = bool(out[0])
        return [live]
    if op == "dense":
        nz = (node.weights["kernel"] != 0).astype(np.float32)  # (in, out)
        return [(out.astype(np.float32) @ nz.T) > 0]
    if op == "conv2d":
        if mode != "input":
            return [np.ones(in_shapes[0], dtype=bool)]
        return [_through_windows(node, out, in_shapes[0], node.weights["kernel"] != 0)]
    if op in ("max_pool2d", "avg_pool2d"):
        return [_through_windows(node, out, in_shapes[0], None)]
    if op in ("global_avg_pool2d", "global_max_pool2d"):
        cf = node.attrs.get("data_format") == "channels_first"
        ch = out.reshape(-1)
        shape = in_shapes[0]
        return [np.broadcast_to(ch[:, None, None] if cf else ch[None, None, :], shape).copy()]
    if op in ("flatten", "reshape"):
        live = np.zeros(int(np.prod(in_shapes[0])), dtype=bool)
        live[flat_index_map(node, in_shapes[0])] = out.reshape(-1)
        return [live.reshape(in_shapes[0])]
    if op == "concatenate":
        axis = _nonbatch_axis(node.attrs["axis"])
        sizes = np.cumsum([s[axis] for s in in_shapes])[:-1]
        return [p.copy() for p in np.split(out, sizes, axis=axis)]
    if op == "zero_pad2d":
        (t, b), (l, r) = node.attrs["padding"]
        cf = node.attrs.get("data_format") == "channels_first"
        h, w = (out.shape[1], out.shape[2]) if cf else (out.shape[0], out.shape[1])
        rows, cols = slice(t, h - b), slice(l, w - r)
        return [(out[:, rows, cols] if cf else out[rows, cols, :]).copy()]
    raise UnsupportedLayerError(f"{describe_layer(node.name, node.keras_class)}: backtracking "
                                f"does not handle op {op!r}; use backtrack='none'")


def flat_index_map(node: Node, in_shape: tuple[int, ...]) -> np.ndarray:
    """For flatten / reshape: flat input index of each flat output element (a permutation)."""
    idx = np.arange(int(np.prod(in_shape))).reshape(in_shape)
    if node.op == "flatten" and node.attrs.get("data_format") == "channels_first" \
            and len(in_shape) > 1:
        idx = np.moveaxis(idx, 0, -1)  # Keras moves channels last before flattening
    return idx.reshape(-1)


def _nonbatch_axis(axis: int) -> int:
    """An axis counted with the batch axis, as an axis of arrays without it."""
    return axis - 1 if axis > 0 else axis


def _along_axis(out: np.ndarray, axis) -> np.ndarray:
    """Softmax mixes along `axis`: an input is live when any output along that axis is."""
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    axes = tuple(_nonbatch_axis(a) for a in axes)
    return np.broadcast_to(out.any(axis=axes, keepdims=True), out.shape).copy()


def _through_windows(node: Node, out: np.ndarray, in_shape: tuple[int, ...],
                     nonzero: np.ndarray | None) -> np.ndarray:
    """Live input nodes of a sliding-window op (conv2d with kernel != 0 mask, or pooling).

    Input (p, cin) is live when some live output (q, cout) with q among the sinks of p reads it
    through a tap whose weight W[tap, cin, cout] is nonzero (pooling: cout = cin).
    """
    from ..windows import source_sink

    cf = node.attrs.get("data_format") == "channels_first"
    if cf:
        out = np.moveaxis(out, 0, -1)
        in_shape = (*in_shape[1:], in_shape[0])
    h, w, cin = in_shape
    if node.op == "conv2d":
        kh, kw = node.weights["kernel"].shape[:2]
        src = source_sink((h, w), (kh, kw), node.attrs["strides"], node.attrs["padding"],
                          node.attrs.get("dilation", (1, 1)))
    else:
        src = source_sink((h, w), node.attrs["pool"], node.attrs["strides"],
                          node.attrs["padding"], (1, 1))
    q_live = out.reshape(-1, out.shape[-1]).astype(np.float32)  # (Q, cout)
    live = np.zeros((h * w, cin), dtype=bool)
    for t in range(src.shape[1]):
        if nonzero is None:
            need = q_live > 0
        else:
            tap = nonzero.reshape(-1, cin, nonzero.shape[-1])[t].astype(np.float32)
            need = (q_live @ tap.T) > 0  # (Q, cin)
        ok = src[:, t] >= 0
        live[src[ok, t]] |= need[ok]  # one tap maps distinct outputs to distinct inputs
    live = live.reshape(h, w, cin)
    return np.moveaxis(live, -1, 0) if cf else live
