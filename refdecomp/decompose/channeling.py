"""Channeling the output layer (paper Section 3.4, "Dense Layers"), and the delta rule of MC-BLN.

The head is the last dense layer. A module of class c replaces its N output units by two:
concerned = column c of the kernel and bias; unconcerned = the mean of the other N - 1 columns
(weights and bias alike). A softmax over the two gives [P(concerned), P(unconcerned)].
"""
from __future__ import annotations

import numpy as np

from ..errors import RefdecompError, UnsupportedLayerError, describe_layer
from ..graph import Graph, Node

#: Ops allowed between the head dense layer and the model output.
_PASS_THROUGH = frozenset({"identity", "softmax", "activation"})

DELTA_RULES = ("prose", "pseudocode")


def find_head(graph: Graph) -> tuple[Node, list[Node]]:
    """The head dense node and the pass-through nodes (identity / softmax) after it.

    The model must have one output, reached from a dense layer through identity, softmax or
    Activation('softmax'|'linear') nodes only, with a softmax somewhere on the way (or a linear
    head, whose two channeled logits then get a softmax).
    """
    if len(graph.outputs) != 1:
        raise UnsupportedLayerError(f"model {graph.name!r} has {len(graph.outputs)} outputs; "
                                    f"decomposition needs exactly one classification output")
    consumers = graph.consumers()
    node = graph[graph.outputs[0]]
    tail: list[Node] = []
    while node.op in _PASS_THROUGH:
        act = node.attrs.get("activation", {}).get("name") if node.op == "activation" else None
        if node.op == "activation" and act not in ("softmax", "linear"):
            raise UnsupportedLayerError(
                f"{describe_layer(node.name, node.keras_class)}: activation {act!r} after the "
                f"output layer; decomposition needs a softmax classifier")
        tail.insert(0, node)
        node = graph[node.inputs[0]]
    if node.op != "dense":
        raise UnsupportedLayerError(
            f"{describe_layer(node.name, node.keras_class)} produces the model output; "
            f"decomposition needs a Dense softmax output layer")
    act = node.activation.get("name")
    if act not in ("softmax", "linear"):
        raise UnsupportedLayerError(
            f"{describe_layer(node.name, node.keras_class)}: output activation {act!r}; "
            f"decomposition needs a softmax (or linear) output layer")
    path = [node, *tail]
    for i, n in enumerate(path):
        if len(consumers[n.name]) != (1 if i < len(path) - 1 else 0):
            raise UnsupportedLayerError(
                f"{describe_layer(n.name, n.keras_class)}: the output layer's value is also "
                f"used elsewhere in the model; cannot channel it")
    if node.weights["kernel"].shape[1] < 2:
        raise UnsupportedLayerError(
            f"{describe_layer(node.name, node.keras_class)} has "
            f"{node.weights['kernel'].shape[1]} output; decomposition needs >= 2 classes")
    return node, tail


def channel_weights(kernel: np.ndarray, bias: np.ndarray | None,
                    c: int) -> tuple[np.ndarray, np.ndarray]:
    """Channeled head of class c: kernel (in, 2) and bias (2,), columns [concerned, unconcerned]."""
    n = kernel.shape[1]
    if bias is None:
        bias = np.zeros(n, dtype=kernel.dtype)
    others = np.arange(n) != c
    k2 = np.stack([kernel[:, c], kernel[:, others].mean(axis=1)], axis=1)
    b2 = np.array([bias[c], bias[others].mean()], dtype=kernel.dtype)
    return k2.astype(kernel.dtype), b2


def delta_removals(kernel2: np.ndarray, delta: float, rule: str = "prose") -> np.ndarray:
    """Head input units MC-BLN removes (boolean, one per input unit of the channeled head).

    "pseudocode" (Algorithm 2, line 5 as printed): W[i, uc] <= -delta and W[i, c] >= +delta.
    "prose" (the text: remove nodes that only / strongly take part in identifying the
    unconcerned classes): W[i, uc] >= +delta and W[i, c] <= -delta.
    """
    if rule not in DELTA_RULES:
        raise RefdecompError(f"argument delta_rule={rule!r}: expected one of {DELTA_RULES}")
    if not np.isfinite(delta) or delta < 0:
        raise RefdecompError(f"argument delta={delta!r}: expected a finite number >= 0")
    wc, wuc = kernel2[:, 0], kernel2[:, 1]
    if rule == "pseudocode":
        return (wuc <= -delta) & (wc >= delta)
    return (wuc >= delta) & (wc <= -delta)


def channeled_graph(graph: Graph, head: Node, tail: list[Node], kernel2: np.ndarray,
                    bias2: np.ndarray) -> Graph:
    """`graph` with the head replaced by the 2-unit channeled head (softmax over the two)."""
    has_softmax = head.activation.get("name") == "softmax" or any(
        n.op == "softmax" or n.attrs.get("activation", {}).get("name") == "softmax"
        for n in tail)
    attrs = dict(head.attrs)
    if not has_softmax:
        attrs["activation"] = {"name": "softmax", "axis": -1}
    new_head = head.replace(shape=(2,), attrs=attrs,
                            weights={"kernel": kernel2, "bias": bias2})
    changed = {head.name: new_head}
    for n in tail:
        changed[n.name] = n.replace(shape=(2,))
    return graph.with_nodes([changed.get(n.name, n) for n in graph.nodes])
