"""Channeling the output layer (paper Section 3.4, "Dense Layers"), and the delta rule of MC-BLN.

The head is the last dense layer, with logits z = h W + b over N classes. A module of class c
replaces its N outputs by two logits [concerned, unconcerned], and a softmax over the two gives
[P(concerned), P(unconcerned)]. Two channelings (`CHANNELINGS`):

- "mean" (the paper's rule): concerned = z_c, unconcerned = the mean of the other N - 1
  logits, i.e. a 2-unit dense layer with column c and the mean of the other columns (weights
  and bias alike).
- "logsumexp": unconcerned = log(sum_{k != c} exp z_k), so P(concerned) is exactly the model's
  softmax probability of class c when no mask changes anything. The module keeps the full
  N-wide head and a `channel_logsumexp` node after it.

The margin z_concerned - z_unconcerned orders images exactly as P(concerned) does in exact
arithmetic; composition ranks modules by it because the float32 probability saturates at 1.
"""
from __future__ import annotations

import numpy as np

from ..errors import RefdecompError, UnsupportedLayerError, describe_layer
from ..graph import Graph, Node
from ..ops.reference import logsumexp_channel

#: Ops allowed between the head dense layer and the model output.
_PASS_THROUGH = frozenset({"identity", "softmax", "activation"})

DELTA_RULES = ("prose", "pseudocode")

#: How the unconcerned logit is formed (see the module docstring).
CHANNELINGS = ("mean", "logsumexp")

#: "relative" (default): the delta rule's threshold is delta x max|W| of the model's head
#: kernel, so it does not depend on the scale of the weights; "absolute": the paper's delta.
DELTA_SCALES = ("relative", "absolute")


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


def head_weights(kernel: np.ndarray, bias: np.ndarray | None, c: int,
                 channeling: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """The head a module of class c stores: (in, 2) / (2,) for "mean" (`channel_weights`),
    a copy of the full (in, N) / (N,) head for "logsumexp"."""
    check_channeling(channeling)
    if channeling == "mean":
        return channel_weights(kernel, bias, c)
    if bias is None:
        bias = np.zeros(kernel.shape[1], dtype=kernel.dtype)
    return np.array(kernel, dtype=np.float32), np.array(bias, dtype=np.float32)


def head_logits(features: np.ndarray, kernel: np.ndarray, bias: np.ndarray, c: int,
                channeling: str = "mean") -> np.ndarray:
    """(n, 2) float32 logits [concerned, unconcerned] of a module's head on head-input
    `features` (n, in); `kernel`, `bias` as `head_weights` returns them."""
    # einsum's own loop, not BLAS: each row's sum runs in the same order however many rows
    # there are, so logits do not depend on how images were batched (refdecomp.compose).
    z = np.einsum("nd,dk->nk", np.asarray(features, dtype=np.float32).reshape(len(features), -1),
                  np.asarray(kernel, dtype=np.float32)) + bias
    z = z.astype(np.float32, copy=False)
    return z if channeling == "mean" else logsumexp_channel(z, c)


def check_channeling(channeling: str) -> None:
    if channeling not in CHANNELINGS:
        raise RefdecompError(f"argument channeling={channeling!r}: expected one of "
                             f"{CHANNELINGS}")


def delta_threshold(kernel: np.ndarray, delta: float, scale: str = "relative") -> float:
    """The weight threshold of the delta rule: `delta` itself ("absolute", the paper) or
    `delta` x the largest weight magnitude of the model's head kernel ("relative")."""
    if scale not in DELTA_SCALES:
        raise RefdecompError(f"argument delta_scale={scale!r}: expected one of {DELTA_SCALES}")
    delta = _check_delta(delta)
    if scale == "absolute":
        return delta
    return delta * float(np.max(np.abs(kernel))) if kernel.size else 0.0


def _check_delta(delta) -> float:
    try:
        value = float(delta)
    except (TypeError, ValueError):
        raise RefdecompError(f"argument delta={delta!r}: expected a finite number >= 0") from None
    if isinstance(delta, bool) or not np.isfinite(value) or value < 0:
        raise RefdecompError(f"argument delta={delta!r}: expected a finite number >= 0")
    return value


def delta_removals(kernel2: np.ndarray, delta: float, rule: str = "prose") -> np.ndarray:
    """Head input units MC-BLN removes (boolean, one per input unit of the channeled head).

    `kernel2` is the mean-channeled (in, 2) head [concerned, unconcerned] and `delta` the
    threshold in weight units (`delta_threshold`).
    "pseudocode" (Algorithm 2, line 5 as printed): W[i, uc] <= -delta and W[i, c] >= +delta.
    "prose" (the text: remove nodes that only / strongly take part in identifying the
    unconcerned classes): W[i, uc] >= +delta and W[i, c] <= -delta.
    """
    if rule not in DELTA_RULES:
        raise RefdecompError(f"argument delta_rule={rule!r}: expected one of {DELTA_RULES}")
    delta = _check_delta(delta)
    wc, wuc = kernel2[:, 0], kernel2[:, 1]
    if rule == "pseudocode":
        return (wuc <= -delta) & (wc >= delta)
    return (wuc >= delta) & (wc <= -delta)


def channeled_graph(graph: Graph, head: Node, tail: list[Node], kernel2: np.ndarray,
                    bias2: np.ndarray, channeling: str = "mean", class_index: int = 0) -> Graph:
    """`graph` with the head replaced by the channeled head, ending in a softmax over the two
    outputs [concerned, unconcerned].

    "mean": the head becomes the 2-unit dense layer (`kernel2` (in, 2)). "logsumexp": the head
    stays N wide (linear, `kernel2` (in, N)) and feeds a `channel_logsumexp` node (named
    `<head>/channel`) that forms the two logits; the nodes after the head then read it.
    """
    has_softmax = head.activation.get("name") == "softmax" or any(
        n.op == "softmax" or n.attrs.get("activation", {}).get("name") == "softmax"
        for n in tail)
    attrs = dict(head.attrs)
    weights = {"kernel": kernel2, "bias": bias2}
    if channeling == "mean":
        if not has_softmax:
            attrs["activation"] = {"name": "softmax", "axis": -1}
        new_nodes = [head.replace(shape=(2,), attrs=attrs, weights=weights)]
    else:
        attrs["activation"] = {"name": "linear"}
        channel = Node(f"{head.name}/channel", "channel_logsumexp", [head.name], (2,),
                       {"class_index": int(class_index)}, keras_class="ChannelLogSumExp")
        new_nodes = [head.replace(shape=(kernel2.shape[1],), attrs=attrs, weights=weights),
                     channel]
        if not any(n.op == "softmax" or n.attrs.get("activation", {}).get("name") == "softmax"
                   for n in tail):
            new_nodes.append(Node(f"{head.name}/softmax", "softmax", [channel.name], (2,),
                                  {"axis": -1}, keras_class="Softmax"))
    last = new_nodes[-1].name
    tail_names = {n.name for n in tail}
    nodes = []
    for n in graph.nodes:
        if n.name == head.name:
            nodes += new_nodes
        elif n.name in tail_names:
            nodes.append(n.replace(shape=(2,), inputs=[last if s == head.name else s
                                                         for s in n.inputs]))
        else:
            nodes.append(n)
    outputs = [last if o == head.name else o for o in graph.outputs]
    g = Graph(nodes, list(graph.inputs), outputs, graph.name, graph.source, graph.sha256,
              dict(graph.meta))
    g.validate()
    return g
