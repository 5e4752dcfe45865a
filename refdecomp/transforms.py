"""Exact graph rewrites applied before execution.

* Batch-norm folding: an inference `batch_norm` whose only producer is a `conv2d` / `dense` with
  linear activation, normalising the producer's channel axis, where the producer has no other
  consumer (and is not a graph output), is folded into the producer's kernel and bias.
* Activation fusion: an `activation` node that maps 0 to 0 (relu, tanh, ...) whose producer is a
  linear `conv2d` / `dense` with no other consumer becomes that producer's activation.

Both keep the function computed by the graph (folding up to float rounding), and both keep the
producer's name, so recording and masks address the same node as in the source graph. The map
`source name -> execution name` tells where every source node's value now lives (an absorbed node
maps to the node that absorbed it).
"""
from __future__ import annotations

from typing import Any

from .graph import Graph, Node
from .ops.reference import batch_norm_scale_shift, maps_zero_to_zero


def channel_axis(node: Node) -> int:
    """The channel axis of a weighted node's output, counted with the batch axis."""
    return node.spec.channel_axis(node) + 1


def _bn_axes(bn: Node, rank: int) -> tuple[int, ...]:
    axes = bn.attrs.get("axis", (-1,))
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return tuple(sorted(a % rank for a in axes))


def _absorbable(graph: Graph, consumers: dict[str, list[str]], node: Node) -> Node | None:
    """The linear conv2d / dense producing `node` if it feeds only `node`, else None."""
    if len(node.inputs) != 1:
        return None
    prod = graph[node.inputs[0]]
    if (prod.weighted and prod.activation.get("name") == "linear"
            and consumers[prod.name] == [node.name] and prod.name not in graph.outputs):
        return prod
    return None


def _fold_bn(prod: Node, bn: Node) -> Node:
    scale, shift = batch_norm_scale_shift(bn, len(prod.shape) + 1)
    weights = prod.spec.scale_outputs(prod, scale.reshape(-1), shift.reshape(-1))
    return _absorb(prod, bn, weights=weights)


def _absorb(prod: Node, node: Node, **changes: Any) -> Node:
    attrs = {**prod.attrs, **changes.pop("attrs", {})}
    attrs["absorbed"] = (*prod.attrs.get("absorbed", ()), node.name)
    return prod.replace(attrs=attrs, shape=node.shape, **changes)


def _rewrite(graph: Graph, mapping: dict[str, str], absorb) -> Graph:
    """One pass: `absorb(graph, consumers, node)` returns a replacement for node's producer or
    None; absorbed nodes disappear and their readers read the producer instead."""
    consumers = graph.consumers()
    replaced: dict[str, Node] = {}
    alias: dict[str, str] = {}
    for node in graph.nodes:
        new = absorb(graph, consumers, node)
        if new is not None:
            replaced[new.name] = new
            alias[node.name] = new.name
    if not alias:
        return graph
    for src, dst in mapping.items():
        mapping[src] = alias.get(dst, dst)
    nodes = [replaced.get(n.name, n).replace(inputs=[alias.get(i, i) for i in n.inputs])
             for n in graph.nodes if n.name not in alias]
    g = Graph(nodes, list(graph.inputs), [alias.get(o, o) for o in graph.outputs], graph.name,
              graph.source, graph.sha256, dict(graph.meta))
    g.validate()
    return g


def _bn_step(graph, consumers, node):
    if node.op != "batch_norm":
        return None
    prod = _absorbable(graph, consumers, node)
    rank = len(node.shape) + 1
    if prod is None or _bn_axes(node, rank) != (channel_axis(prod),):
        return None
    return _fold_bn(prod, node)


def _act_step(graph, consumers, node):
    if node.op != "activation" or not maps_zero_to_zero(node.activation):
        return None
    prod = _absorbable(graph, consumers, node)
    if prod is None:
        return None
    return _absorb(prod, node, attrs={"activation": dict(node.activation)})


def fold_batch_norm(graph: Graph, mapping: dict[str, str] | None = None) -> Graph:
    """Fold every exactly-foldable inference batch norm into its conv2d / dense producer."""
    mapping = {n.name: n.name for n in graph} if mapping is None else mapping
    return _rewrite(graph, mapping, _bn_step)


def fuse_activations(graph: Graph, mapping: dict[str, str] | None = None) -> Graph:
    """Fuse zero-preserving `activation` nodes into their linear conv2d / dense producer."""
    mapping = {n.name: n.name for n in graph} if mapping is None else mapping
    return _rewrite(graph, mapping, _act_step)


def optimize(graph: Graph, fuse: bool = True) -> tuple[Graph, dict[str, str]]:
    """Fold batch norms, then (optionally) fuse activations. Returns the execution graph and the
    map source name -> execution name."""
    mapping = {n.name: n.name for n in graph}
    g = fold_batch_norm(graph, mapping)
    if fuse:
        g = fuse_activations(g, mapping)
    return g, mapping
