"""Compact modules: a module with the filters and units it removed entirely physically dropped.

`Module.compact()` slices the module's graph with `compact_graph` (which channels can go: zero
everywhere, passed through zero-preserving ops, absorbed by the input rows of the next
weighted layers, kept where an Add operand or a graph output still needs them; each op's part
is its `OpSpec.compaction` rule, `refdecomp.ops.channels`) and keeps the remaining
position-level masks. `refdecomp.export` uses the same slicing for `compact=True`. The result
computes the same function as the masked module, to float32 rounding, with fewer
multiply-accumulates and parameters.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .graph import Graph, Node

#: Compact convolutions keep a multiple of this many filters (zero ones where needed): the
#: micro-kernels compute 8-32 channels per call, so 8 keeps them on their wide variants.
CHANNEL_QUANTUM = 8


class CompactModule:
    """An executable compact module: `model` (a refdecomp Model of the sliced graph) and the
    position-level `masks` still needed on it; `predict` equals the module's `predict`."""

    def __init__(self, model, masks: Mapping[str, np.ndarray], class_index: int,
                 head_input: str | None = None, feature_shape: tuple[int, ...] = (),
                 feature_keep: np.ndarray | None = None):
        self.model = model
        self.class_index = int(class_index)
        # the head's input in the compact graph holds the elements `feature_keep` (flat
        # indices) of the module's full feature tensor of shape `feature_shape`
        self.head_input = head_input
        self.feature_shape = tuple(feature_shape)
        self.feature_keep = feature_keep
        # all-ones masks change nothing: leave them out (the kernels then skip masking)
        self.masks = {k: np.asarray(v, np.uint8) for k, v in masks.items()
                      if not np.asarray(v).all()}

    @property
    def graph(self) -> Graph:
        return self.model.graph

    def predict(self, x, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """(n, 2) probabilities [concerned, unconcerned], as `Module.predict`."""
        return self.model.run(x, batch_size, masks=self.masks, progress=progress)[0]

    def features(self, x, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """The module's head-input features at full size (dropped channels are exactly 0)."""
        part = self.model.run(x, batch_size, masks=self.masks, outputs=[self.head_input],
                              progress=progress)[0]
        n = part.shape[0]
        out = np.zeros((n, int(np.prod(self.feature_shape))), np.float32)
        out[:, self.feature_keep] = part.reshape(n, -1)
        return out.reshape(n, *self.feature_shape)

    def macs(self) -> int:
        return graph_macs(self.graph)

    def params(self) -> int:
        return graph_params(self.graph)

    def __repr__(self) -> str:
        return (f"<CompactModule class {self.class_index}: {self.macs():,} MACs, "
                f"{self.params():,} parameters>")


def graph_macs(graph: Graph) -> int:
    """Multiply-accumulates per image of a graph's weighted nodes."""
    from .interpreter import node_macs

    return int(sum(node_macs(graph, n) for n in graph.weighted_nodes()))


def graph_params(graph: Graph) -> int:
    """Weights and biases of every node of a graph."""
    return int(sum(n.n_params() for n in graph))


def compact_module(module) -> CompactModule:
    """The compact form of `module` (see the module docstring)."""
    graph, masks = compact_graph(module.graph, module.masks, CHANNEL_QUANTUM)
    name = module.head_input
    shape = tuple(module.graph[name].shape)
    removed = removable_channels(module.graph, module.masks, CHANNEL_QUANTUM).get(name)
    keep = np.ones(shape, bool)
    if removed is not None and removed[1].any():
        axis, gone = removed
        keep = np.broadcast_to(np.expand_dims(~gone, [a for a in range(len(shape))
                                                      if a != axis]), shape)
    return CompactModule(module.source_model.with_graph(graph), masks, module.class_index,
                         name, shape, np.flatnonzero(keep.reshape(-1)))


def compact_fractions(module, compact: CompactModule) -> dict[str, float]:
    """flops_fraction (multiply-accumulates of the compact module / of the model) and
    params_fraction (parameters, likewise), both over the model's execution graph."""
    model_graph = module.source_model.graph
    macs, params = graph_macs(model_graph), graph_params(model_graph)
    return {"flops_fraction": compact.macs() / macs if macs else 1.0,
            "params_fraction": compact.params() / params if params else 1.0}


# --------------------------------------------------------------------------------------------
# Which channels are zero everywhere and can be removed
# --------------------------------------------------------------------------------------------
def compact_graph(graph: Graph, masks: Mapping[str, np.ndarray],
                  quantum: int = 1) -> tuple[Graph, dict]:
    """Drop the channels / units that are zero everywhere because of `masks`.

    Returns an equivalent graph (same outputs for every input) and the masks sliced to it.
    `quantum` q > 1 keeps some zero filters of each conv2d so that it keeps a multiple of q
    (or all) of them: the convolution kernels run channel blocks of 8-32, and an odd count
    costs more kernel calls than the filters it saves.
    """
    removed = removable_channels(graph, masks, quantum)
    if not any(r is not None and r[1].any() for r in removed.values()):
        return graph, dict(masks)
    new_nodes: list[Node] = []
    new_masks: dict[str, np.ndarray] = {}
    for node in graph:
        own = removed.get(node.name)
        keep_out, shape = None, node.shape
        if own is not None and own[1].any():
            axis, gone = own
            keep_out = (axis, np.flatnonzero(~gone))
            shape = tuple(len(keep_out[1]) if a == axis else d for a, d in enumerate(node.shape))
        if node.name in masks:
            new_masks[node.name] = masks[node.name] if keep_out is None else \
                np.take(masks[node.name], keep_out[1], axis=keep_out[0])
        src = removed.get(node.inputs[0]) if node.inputs else None
        keep_in = np.flatnonzero(~src[1]) if src is not None and src[1].any() else None
        weights = node.spec.compaction.slice_weights(node, dict(node.weights), keep_out, keep_in)
        new_nodes.append(node.replace(shape=shape, weights=weights))
    return graph.with_nodes(new_nodes), new_masks


def removable_channels(graph: Graph, masks: Mapping[str, np.ndarray],
                       quantum: int = 1) -> dict:
    """{node: (channel axis, bool array of removed channels)} for nodes whose channels may go.

    A weighted node's channel is zero when its mask is 0 at every position; each op's
    compaction rule says how zero channels pass through it (`refdecomp.ops.channels`). A
    channel is removed only where every consumer along the way can take its removal; graph
    outputs keep their shape. The sets only shrink, so the sweeps reach a fixed point.
    """
    rem: dict[str, tuple[int, np.ndarray] | None] = {}
    for node in graph:                                   # initial (largest) sets, forward
        rem[node.name] = node.spec.compaction.initial(
            node, [rem.get(i) for i in node.inputs], graph, masks)
    changed = True
    while changed:
        changed = _keep_outputs(graph, rem)
        changed |= _backward(graph, rem)
        changed |= _forward(graph, rem)
        if not changed and quantum > 1:
            changed = _round_to_quantum(graph, rem, quantum)
        if not changed:
            changed = _keep_one_channel(rem)
    return rem


def _keep_outputs(graph: Graph, rem: dict) -> bool:
    """Graph outputs keep their shape."""
    changed = False
    for name in graph.outputs:
        if rem.get(name) is not None and rem[name][1].any():
            rem[name][1][:] = False
            changed = True
    return changed


def _shrink(target: np.ndarray, new: np.ndarray) -> bool:
    if np.array_equal(new, target):
        return False
    target[:] = new
    return True


def _backward(graph: Graph, rem: dict) -> bool:
    """Each consumer limits what its producers may remove."""
    changed = False
    for node in reversed(graph.nodes):
        for pos, src_name in enumerate(node.inputs):
            src = rem.get(src_name)
            if src is not None and src[1].any():
                allowed = node.spec.compaction.allowed(node, pos, src, rem.get(node.name), graph)
                changed |= _shrink(src[1], src[1] & allowed)
    return changed


def _forward(graph: Graph, rem: dict) -> bool:
    """Outputs cannot remove what their producers keep."""
    changed = False
    for node in graph:
        own = rem.get(node.name)
        if own is not None:
            new = node.spec.compaction.refine(node, own, [rem.get(i) for i in node.inputs],
                                              graph)
            if new is not None:
                changed |= _shrink(own[1], new)
    return changed


def _round_to_quantum(graph: Graph, rem: dict, quantum: int) -> bool:
    """Keep a multiple of `quantum` filters of the ops that ask for it (zero ones: exact)."""
    changed = False
    for node in graph:
        own = rem.get(node.name)
        if own is None or not node.spec.compaction.quantum:
            continue
        gone = own[1]
        extra = (-int((~gone).sum())) % quantum
        if extra and gone.any():
            gone[np.flatnonzero(gone)[:extra]] = False
            changed = True
    return changed


def _keep_one_channel(rem: dict) -> bool:
    """Keep at least one channel in every tensor (Keras has no empty layers)."""
    changed = False
    for own in rem.values():
        if own is not None and own[1].size and own[1].all():
            own[1][0] = False
            changed = True
    return changed
