"""Compaction rules: how each op lets zero channels through, used by `refdecomp.compact`.

A module removes a filter / unit entirely when its mask is 0 at every position. Such a zero
channel can be dropped, together with the matching input channels of its consumers, when
every op between them keeps channels apart and maps 0 to 0. `refdecomp.compact
.removable_channels` runs a fixed point over the graph; each op's `OpSpec.compaction` is one
of these rules and answers, for its node:

- `initial(node, srcs, graph, masks)`: the (channel axis, bool array of removable channels) of
  its output, from its inputs' (`srcs`, None where untracked), or None (untracked);
- `allowed(node, pos, src, own, graph)`: which channels of input `pos` it accepts to lose;
- `refine(node, own, srcs, graph)`: the output channels that may still go, given its inputs'
  (None: unchanged);
- `slice_weights(node, weights, keep_out, keep_in)`: its weights once the kept output channels
  (`keep_out`, indices along its channel axis, or None) and kept channels of its first input
  (`keep_in` or None) are known.

`Barrier` (the default) tracks nothing: its inputs keep every channel.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np


def output_channel_axis(node) -> int:
    """Channel axis (no batch axis) of a node's output, for ops with a data_format."""
    if node.attrs.get("data_format") == "channels_first":
        return 0
    return len(node.shape) - 1


def input_channel_axis(node) -> int:
    """Channel axis (no batch axis) of a rank-3 input, by the node's data_format."""
    return 0 if node.attrs.get("data_format") == "channels_first" else 2


class Barrier:
    """Channels are not tracked through this op; its inputs keep all of theirs."""

    quantum = False

    def initial(self, node, srcs, graph, masks):
        return None

    def allowed(self, node, pos, src, own, graph) -> np.ndarray:
        if own is None:
            return np.zeros_like(src[1])
        return own[1].copy()

    def refine(self, node, own, srcs, graph):
        if any(s is None for s in srcs):
            return np.zeros_like(own[1])
        return own[1] & srcs[0][1]

    def slice_weights(self, node, weights: dict, keep_out, keep_in) -> dict:
        return weights


class SameChannels(Barrier):
    """An element-wise op (identity, a zero-preserving activation, PReLU): channel c of the
    output is channel c of the input. `when(node)` False makes this node a barrier."""

    def __init__(self, when: Callable | None = None, per_channel: tuple[str, ...] = ()):
        self.when = when
        self.per_channel = per_channel      # weights with one entry per channel (PReLU alpha)

    def initial(self, node, srcs, graph, masks):
        if (self.when is not None and not self.when(node)) or srcs[0] is None:
            return None
        return (srcs[0][0], srcs[0][1].copy())

    def slice_weights(self, node, weights, keep_out, keep_in):
        out = dict(weights)
        if keep_out is not None:
            axis, keep = keep_out
            for role in self.per_channel:
                if out[role].shape[axis] > 1:
                    out[role] = np.take(out[role], keep, axis=axis)
        return out


class Spatial(Barrier):
    """Pooling, padding, global pooling: channels stay apart; the input's channel axis must be
    the op's (by its data_format)."""

    def initial(self, node, srcs, graph, masks):
        src = srcs[0]
        if src is None or src[0] != input_channel_axis(node):
            return None
        return (output_channel_axis(node), src[1].copy())


def flatten_channels(in_shape: tuple[int, ...], axis: int, data_format: str) -> np.ndarray:
    """For each element of a Flatten output, the input channel it comes from (Keras order)."""
    ch = np.arange(in_shape[axis]).reshape([-1 if a == axis else 1 for a in range(len(in_shape))])
    ch = np.broadcast_to(ch, in_shape)
    if data_format == "channels_first" and len(in_shape) > 1:
        ch = np.moveaxis(ch, 0, -1)
    return ch.reshape(-1)


class Flatten(Barrier):
    """Each output element comes from one input channel; it may go when its channel goes."""

    @staticmethod
    def _map(node, src, graph):
        return flatten_channels(graph[node.inputs[0]].shape, src[0],
                                node.attrs.get("data_format", ""))

    def initial(self, node, srcs, graph, masks):
        if srcs[0] is None:
            return None
        return (0, srcs[0][1][self._map(node, srcs[0], graph)])

    def allowed(self, node, pos, src, own, graph):
        if own is None:
            return np.zeros_like(src[1])
        allowed = np.ones_like(src[1])
        allowed[self._map(node, src, graph)[~own[1]]] = False
        return allowed

    def refine(self, node, own, srcs, graph):
        if srcs[0] is None:
            return np.zeros_like(own[1])
        return own[1] & srcs[0][1][self._map(node, srcs[0], graph)]


class Add(Barrier):
    """A channel of the sum is zero when it is zero in every operand (same channel axis)."""

    def initial(self, node, srcs, graph, masks):
        if any(s is None for s in srcs) or len({s[0] for s in srcs}) != 1:
            return None
        return (srcs[0][0], np.logical_and.reduce([s[1] for s in srcs]))

    def refine(self, node, own, srcs, graph):
        if any(s is None for s in srcs):
            return np.zeros_like(own[1])
        return own[1] & np.logical_and.reduce([s[1] for s in srcs])


class Concatenate(Barrier):
    """Concatenation along the channel axis of every operand passes removals through."""

    def initial(self, node, srcs, graph, masks):
        if not srcs or any(s is None for s in srcs):
            return None
        rank = len(node.shape)
        axis = node.attrs.get("axis", -1)
        axis = axis + rank + 1 if axis < 0 else axis
        if any(s[0] != axis - 1 for s in srcs):
            return None
        return (axis - 1, np.concatenate([s[1] for s in srcs]))

    def allowed(self, node, pos, src, own, graph):
        if own is None:
            return np.zeros_like(src[1])
        sizes = [graph[i].shape[own[0]] for i in node.inputs]
        offset = int(sum(sizes[:pos]))
        return own[1][offset:offset + sizes[pos]].copy()

    def refine(self, node, own, srcs, graph):
        if any(s is None for s in srcs):
            return np.zeros_like(own[1])
        return own[1] & np.concatenate([s[1] for s in srcs])


def _mask_removal(node, masks, axis: int) -> tuple[int, np.ndarray]:
    """The channels a weighted node's mask zeroes at every position."""
    mask = masks.get(node.name)
    if mask is None:
        return (axis, np.zeros(node.shape[axis], bool))
    other = tuple(a for a in range(mask.ndim) if a != axis)
    return (axis, ~mask.astype(bool).any(axis=other) if other else ~mask.astype(bool))


class Filters(Barrier):
    """conv2d / dense: output channels whose mask is 0 everywhere go (with their kernel
    columns and bias); the rows of the kernel that read a removed input channel go too.
    `input_axis(node, in_rank)` is the axis of the input whose channels the kernel reads
    (None: it cannot absorb removals); `quantum` keeps a multiple of the compaction quantum
    of filters (the convolution kernels compute 8-32 channels per call)."""

    def __init__(self, channel_axis: Callable, input_axis: Callable, quantum: bool = False):
        self.channel_axis = channel_axis
        self.input_axis = input_axis
        self.quantum = quantum

    def initial(self, node, srcs, graph, masks):
        return _mask_removal(node, masks, self.channel_axis(node))

    def allowed(self, node, pos, src, own, graph):
        in_rank = len(graph[node.inputs[pos]].shape)
        return src[1] if src[0] == self.input_axis(node, in_rank) else np.zeros_like(src[1])

    def refine(self, node, own, srcs, graph):
        return None                         # its own mask decides

    def slice_weights(self, node, weights, keep_out, keep_in):
        out = dict(weights)
        if keep_out is not None:
            out["kernel"] = np.take(out["kernel"], keep_out[1], axis=-1)
            if "bias" in out:
                out["bias"] = out["bias"][keep_out[1]]
        if keep_in is not None:
            out["kernel"] = np.take(out["kernel"], keep_in, axis=-2)
        return out
