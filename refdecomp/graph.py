"""The framework-free model graph: what the reader produces and the interpreter runs.

A `Graph` is a list of `Node`s in topological order. Each node is one *call* of a Keras layer
(a shared layer called twice gives two nodes sharing weight arrays) and produces exactly one
tensor, named by the node's name. Nested models are inlined by the reader (their nodes get the
nested model's name as a prefix), so the interpreter only ever sees flat graphs of primitive ops.

Tensors keep the layout Keras gives them (no batch axis in `Node.shape`); ops that care about
layout carry `data_format` ("channels_last" | "channels_first") in their attributes.

The op vocabulary is the op registry (`refdecomp.ops.registry`): each op is declared once in
`refdecomp/ops/defs/`, with the attributes (`Node.attrs`) and weights (`Node.weights`) it uses
and every rule the passes apply to it; `python -m refdecomp.ops` lists them. Readers normalise
every Keras dialect to exactly that form.

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
from .ops import registry

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
        if not registry.is_op(self.op):
            raise InternalError(f"unknown op {self.op!r} for layer {self.name!r}")

    @property
    def spec(self) -> registry.OpSpec:
        """The registered rules of this node's op."""
        return registry.spec(self.op)

    @property
    def weighted(self) -> bool:
        """Whether the node takes masks and recording (conv2d, dense, depthwise_conv2d)."""
        return registry.spec(self.op).weighted

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

    def weighted_nodes(self) -> list[Node]:
        """The nodes that take masks and recording, in graph order."""
        return [n for n in self.nodes if n.weighted]

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
