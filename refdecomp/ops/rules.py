"""Helpers shared by the rules of several ops (`refdecomp/ops/defs/`): sliding windows for
liveness and kept weights, index maps of flatten / reshape, the data_format of a node, unit
flows (`OpSpec.units`)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..windows import source_sink


def channels_first(node) -> bool:
    return node.attrs.get("data_format") == "channels_first"


def window_sources(node, in_hw: tuple[int, int], kernel_hw) -> np.ndarray:
    """(OH*OW, KH*KW) flat input position each tap of each output position reads, -1 on
    padding (`refdecomp.windows.source_sink`)."""
    return source_sink(in_hw, tuple(kernel_hw), node.attrs["strides"], node.attrs["padding"],
                       node.attrs.get("dilation", (1, 1)))


def through_windows(node, out: np.ndarray, in_shape: tuple[int, ...], kernel_hw,
                    need: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    """Live input nodes of a sliding-window op: input (p, cin) is live when `need(tap,
    live outputs (Q, cout) as float32)` -> (Q, cin) is true at some output position q whose
    window reads p through that tap."""
    cf = channels_first(node)
    if cf:
        out = np.moveaxis(out, 0, -1)
        in_shape = (*in_shape[1:], in_shape[0])
    h, w, cin = in_shape
    src = window_sources(node, (h, w), kernel_hw)
    q_live = out.reshape(-1, out.shape[-1]).astype(np.float32)  # (Q, cout)
    live = np.zeros((h * w, cin), dtype=bool)
    for t in range(src.shape[1]):
        ok = src[:, t] >= 0
        live[src[ok, t]] |= need(t, q_live)[ok]  # one tap maps distinct outputs to distinct inputs
    live = live.reshape(h, w, cin)
    return np.moveaxis(live, -1, 0) if cf else live


def window_used(node, kin: np.ndarray, kout: np.ndarray, kernel_hw,
                used_at: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Per tap, `used_at(kept inputs (Q, cin) read by the tap, kept outputs (Q, cout))`, both
    float32, stacked (taps, ...): which weights of a sliding-window op a module keeps."""
    if channels_first(node):
        kin, kout = np.moveaxis(kin, 0, -1), np.moveaxis(kout, 0, -1)
    h, w, cin = kin.shape
    src = window_sources(node, (h, w), kernel_hw)
    kin_flat = np.concatenate([kin.reshape(h * w, cin), np.zeros((1, cin), bool)])  # -1 -> pad
    kout_q = kout.reshape(-1, kout.shape[-1]).astype(np.float32)
    return np.stack([used_at(kin_flat[src[:, t]].astype(np.float32), kout_q)
                     for t in range(src.shape[1])])


def flat_index_map(node, in_shape: tuple[int, ...]) -> np.ndarray:
    """For flatten / reshape: flat input index of each flat output element (a permutation)."""
    idx = np.arange(int(np.prod(in_shape))).reshape(in_shape)
    if node.op == "flatten" and channels_first(node) and len(in_shape) > 1:
        idx = np.moveaxis(idx, 0, -1)  # Keras moves channels last before flattening
    return idx.reshape(-1)


def nonbatch_axis(axis: int) -> int:
    """An axis counted with the batch axis, as an axis of arrays without it."""
    return axis - 1 if axis > 0 else axis


def along_axis(out: np.ndarray, axis) -> np.ndarray:
    """Softmax mixes along `axis`: an input is live when any output along that axis is."""
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    axes = tuple(nonbatch_axis(a) for a in axes)
    return np.broadcast_to(out.any(axis=axes, keepdims=True), out.shape).copy()


def per_channel(node, units: np.ndarray) -> np.ndarray:
    """A map of the node's output shape holding, per channel, the value `units` (of the
    input's shape, channel-wise constant) has in that channel (pooling, padding and
    upsampling change positions only)."""
    units = np.asarray(units)
    if units.shape == tuple(node.shape):
        return units
    cf = channels_first(node)
    channel = units[:, 0, 0] if cf else units[0, 0, :]
    shape = [1] * len(node.shape)
    shape[0 if cf else -1] = -1
    return np.broadcast_to(channel.reshape(shape), node.shape)


def units_same(node, units, src, graph):
    """Unit flow of an element-wise op that maps 0 to 0: the same units, a zero stays zero."""
    return units, True


def units_mixed(node, units, src, graph):
    """Unit flow of an element-wise op that may not map 0 to 0 (batch norm, rescaling, ...)."""
    return units, False


def units_spatial(node, units, src, graph):
    """Unit flow of pooling / padding / upsampling: each channel keeps its unit."""
    return per_channel(node, units), True


def same_live(node, out, in_shapes, mode) -> list[np.ndarray]:
    """Liveness of an element-wise op: each input element is live where its output is."""
    return [out.copy() for _ in in_shapes]


def same_kept(node, kin: np.ndarray, in_shape) -> np.ndarray:
    """Metrics: an element-wise op's output is kept where its input is."""
    return kin
