"""The framework-free model graph: what the reader produces and the interpreter runs.

A `Graph` is a list of `Node`s in topological order. Each node is one *call* of a Keras layer
(a shared layer called twice gives two nodes sharing weight arrays) and produces exactly one
tensor, named by the node's name. Nested models are inlined by the reader (their nodes get the
nested model's name as a prefix), so the interpreter only ever sees flat graphs of primitive ops.

Tensors keep the layout Keras gives them (no batch axis in `Node.shape`); ops that care about
layout carry `data_format` ("channels_last" | "channels_first") in their attributes.

The op vocabulary, with the attributes (`Node.attrs`) and weights (`Node.weights`) each uses.
Readers must normalise every Keras dialect to exactly this form:

=================  ============================================================  ======================
op                 attrs                                                         weights
=================  ============================================================  ======================
input              dtype                                                         -
conv2d             strides (2), padding "valid"|"same", dilation (2),            kernel (kh,kw,cin,cout)
                   activation (see ACTIVATIONS), data_format                     bias (cout,) optional
dense              activation                                                    kernel (in,out), bias
max_pool2d         pool (2), strides (2), padding, data_format                   -
avg_pool2d         pool (2), strides (2), padding, data_format                   -
                   (Keras `same`: padded cells are not counted in the mean)
global_avg_pool2d  data_format, keepdims                                         -
global_max_pool2d  data_format, keepdims                                         -
flatten            data_format (channels_first: move C last, as Keras does)       -
reshape            target_shape (tuple, may hold one -1)                         -
add                -                                                             -
concatenate        axis (negative or positive, counted *with* the batch axis)    -
activation         activation (see ACTIVATIONS)                                  -
prelu              shared_axes (tuple or None)                                   alpha (shape of input
                                                                                 with shared axes = 1)
softmax            axis                                                          -
batch_norm         axis (tuple of non-batch axes, counted with batch axis),      gamma, beta,
                   epsilon, center, scale                                        moving_mean,
                                                                                 moving_variance
rescaling          scale, offset (floats or lists broadcast on the last axis)    -
normalization      axis (tuple), epsilon-free Keras 3 formula:                   mean, variance
                   (x - mean) / max(sqrt(variance), 1e-7)
zero_pad2d         padding ((top,bottom),(left,right)), data_format              -
identity           - (Dropout, SpatialDropout2D, GaussianNoise, ... at inference) -
channel_logsumexp  class_index: (N,) logits -> (2,) [z_c, logsumexp of the others]  -
                   (only in module graphs, "logsumexp" channeling; never read)
=================  ============================================================  ======================

ACTIVATIONS are given as a dict ``{"name": str, **params}``; names: linear, relu (params
max_value, negative_slope, threshold), leaky_relu (negative_slope), elu (alpha), selu,
sigmoid, hard_sigmoid (param "dialect": "keras2" = clip(0.2x+0.5), "keras3" = clip(x/6+0.5)),
tanh, softplus, softsign, softmax (axis), exponential, swish / silu, gelu (approximate), relu6.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InternalError

OPS = frozenset(
    {
        "input", "conv2d", "dense", "max_pool2d", "avg_pool2d", "global_avg_pool2d",
        "global_max_pool2d", "flatten", "reshape", "add", "concatenate", "activation", "prelu",
        "softmax", "batch_norm", "rescaling", "normalization", "zero_pad2d", "identity",
        "channel_logsumexp",
    }
)

#: Ops whose output nodes the decomposition reasons about (they own weights and a bias).
WEIGHTED_OPS = frozenset({"conv2d", "dense"})

LINEAR = {"name": "linear"}


@dataclass
class Node:
    """One layer call: op, hyper-parameters, weights, producers and output shape.

    `inputs` lists producer node names in the order the layer receives them.
    `shape` is the output shape without the batch axis. `keras_class` and `name` are kept for
    messages and summaries; `source` names the file the node came from.
    """

    name: str
    op: str
    inputs: list[str]
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    keras_class: str = ""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise InternalError(f"unknown op {self.op!r} for layer {self.name!r}")

    @property
    def activation(self) -> dict[str, Any]:
        return self.attrs.get("activation", LINEAR)

    def replace(self, **changes: Any) -> Node:
        return dataclasses.replace(self, **changes)

    def n_params(self) -> int:
        return int(sum(w.size for w in self.weights.values()))


@dataclass
class Graph:
    """A flat, topologically ordered graph of `Node`s with named inputs and outputs."""

    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    name: str = "model"
    source: str = ""          # path of the file it was read from ("" if built in memory)
    sha256: str = ""          # of that file, for provenance of modules and reports
    meta: dict[str, Any] = field(default_factory=dict)  # keras_version, backend, format, ...

    def __post_init__(self) -> None:
        self._index = {n.name: i for i, n in enumerate(self.nodes)}
        if len(self._index) != len(self.nodes):
            raise InternalError("duplicate node names in graph")

    # -- lookup -------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        return self.nodes[self._index[name]]

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def position(self, name: str) -> int:
        return self._index[name]

    def consumers(self) -> dict[str, list[str]]:
        """Map node name -> names of the nodes that read its output (in graph order)."""
        out: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for src in n.inputs:
                out[src].append(n.name)
        return out

    def nodes_of(self, ops: Iterable[str]) -> list[Node]:
        ops = set(ops)
        return [n for n in self.nodes if n.op in ops]

    def input_shapes(self) -> list[tuple[int, ...]]:
        return [self[name].shape for name in self.inputs]

    def output_shapes(self) -> list[tuple[int, ...]]:
        return [self[name].shape for name in self.outputs]

    def validate(self) -> None:
        """Check topological order and that every referenced producer exists."""
        seen: set[str] = set()
        for n in self.nodes:
            for src in n.inputs:
                if src not in seen:
                    raise InternalError(
                        f"node {n.name!r} reads {src!r} before it is produced"
                    )
            seen.add(n.name)
        for name in [*self.inputs, *self.outputs]:
            if name not in seen:
                raise InternalError(f"graph input/output {name!r} is not a node")

    def with_nodes(self, nodes: list[Node]) -> Graph:
        """A copy of this graph with another node list (same inputs, outputs, provenance)."""
        g = Graph(nodes, list(self.inputs), list(self.outputs), self.name, self.source,
                  self.sha256, dict(self.meta))
        g.validate()
        return g
