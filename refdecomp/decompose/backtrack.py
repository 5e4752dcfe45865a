"""Backtracking (paper Section 3.4, MC-BLN and MC-BI) as a liveness analysis.

One backward pass in reverse topological order computes, for every tensor, which of its nodes
(elements) can still influence the module's output. Each op answers "given which of my output
nodes are live, which of my input nodes are live for me"; a node read by several layers is
live when it is live for ANY of them (dead only when dead for all). Masked (inactive) nodes are
dead sources: their value is forced to 0, so their inputs do not matter through them. A conv2d /
dense node found dead gets mask 0, which changes no output of the module: this is exactly the
paper's "remove nodes that only feed removed nodes", extended to every op of the graph.

Each op's rule is its `OpSpec.liveness` (`refdecomp/ops/defs/`).

Modes: "last_conv" (MC-BLN): convolutions are barriers (all their inputs stay live), so the
pass runs through the dense head, flatten / pooling / add layers back to the last convolutions.
"input" (MC-BI): the pass also goes through convolutions (via the sliding-window source/sink
maps of `refdecomp.windows.source_sink`) down to the model input.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import RefdecompError, UnsupportedLayerError, describe_layer
from ..graph import Graph, Node
from ..ops.rules import flat_index_map

__all__ = ["MODES", "flat_index_map", "liveness", "prune_masks"]

MODES = ("last_conv", "input")


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
        if not node.inputs or not out.any():
            continue
        for src, need in zip(node.inputs, _live_inputs(graph, node, out, mode)):
            live[src] |= need
    return live


def prune_masks(graph: Graph, masks: Mapping[str, np.ndarray], mode: str,
                exclude: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """Masks with every dead weighted node set to 0 (nodes in `exclude` untouched)."""
    live = liveness(graph, masks, mode)
    out = {}
    for node in graph.nodes:
        if node.weighted and node.name not in exclude:
            out[node.name] = live[node.name].astype(np.uint8)
    return out


def _live_inputs(graph: Graph, node: Node, out: np.ndarray, mode: str) -> list[np.ndarray]:
    """The op's liveness rule: live output nodes -> live nodes of each input."""
    rule = node.spec.liveness
    if rule is None:
        raise UnsupportedLayerError(f"{describe_layer(node.name, node.keras_class)}: "
                                    f"backtracking does not handle op {node.op!r}; use "
                                    f"backtrack='none'")
    return rule(node, out, [graph[s].shape for s in node.inputs], mode)
