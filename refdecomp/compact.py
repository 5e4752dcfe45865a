"""Compact modules: a module with the filters and units it removed entirely physically dropped.

`Module.compact()` slices the module's graph with `refdecomp.export.compact_graph` (the rules for
which channels can go: zero everywhere, passed through zero-preserving ops, absorbed by the
input rows of the next conv2d / dense layers, kept where an Add operand or a graph output still
needs them) and keeps the remaining position-level masks. The result computes the same function
as the masked module, to float32 rounding, with fewer multiply-accumulates and parameters.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .graph import WEIGHTED_OPS, Graph

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
    """Multiply-accumulates per image of a graph's conv2d and dense nodes."""
    from .interpreter import node_macs

    return int(sum(node_macs(graph, n) for n in graph.nodes_of(WEIGHTED_OPS)))


def graph_params(graph: Graph) -> int:
    """Weights and biases of every node of a graph."""
    return int(sum(n.n_params() for n in graph))


def compact_module(module) -> CompactModule:
    """The compact form of `module` (see the module docstring)."""
    from .export import _removable_channels, compact_graph

    graph, masks = compact_graph(module.graph, module.masks, CHANNEL_QUANTUM)
    name = module.head_input
    shape = tuple(module.graph[name].shape)
    removed = _removable_channels(module.graph, module.masks, CHANNEL_QUANTUM).get(name)
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
