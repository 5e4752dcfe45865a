"""`ModelSpec` (with weights attached) -> flat, topologically ordered list of graph `Node`s.

Every call of a layer becomes one node: the first call is named after the layer, the k-th
(k >= 1) `name@k`. Nested models are inlined: their nodes are named `outer/inner`, the model's
inputs are wired to the tensors the outer call passes, and its outputs stand for the call's
outputs. Shapes are inferred while building (`layers.lower`). A layer that is two ops
(SeparableConv2D) emits its first node as `name/<suffix>` before the node named after the layer.
"""
from __future__ import annotations

from .. import limits
from ..errors import ModelFormatError, UnsupportedLayerError
from ..graph import Node
from .config import LayerSpec, ModelSpec, Ref, dtype_of, input_shape_of
from .layers import Dialect, lower, refusal_reason


def check_supported(model: ModelSpec, dialect: Dialect) -> None:
    """Refuse the model, naming every offending layer, before anything is built."""
    problems: list[str] = []
    _collect_problems(model, "", dialect, problems)
    if problems:
        raise UnsupportedLayerError(
            f"{dialect.source}: cannot read this model: " + "; ".join(problems))


def _collect_problems(model: ModelSpec, prefix: str, dialect: Dialect, out: list[str]) -> None:
    for layer in model.layers:
        reason = refusal_reason(layer, dialect)
        if reason:
            out.append(f"layer {prefix + layer.name!r} ({layer.class_name}): {reason}")
        elif layer.model is not None:
            _collect_problems(layer.model, f"{prefix}{layer.name}/", dialect, out)


class _Builder:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.nodes: list[Node] = []
        self.shapes: dict[str, tuple] = {}

    def emit(self, name: str, op: str, inputs: list[str], shape: tuple, attrs: dict,
             weights: dict, keras_class: str) -> str:
        if op == "input":
            limits.elements([1 if d is None else d for d in shape], self.dialect.source,
                            f"input {name!r} (one image)")
        if name in self.shapes:
            raise ModelFormatError(f"{self.dialect.source}: two layers produce a node named "
                                   f"{name!r}; layer names must be unique")
        self.nodes.append(Node(name, op, list(inputs), tuple(shape), attrs, weights,
                               keras_class))
        self.shapes[name] = tuple(shape)
        return name

    # -- models ------------------------------------------------------------------------------
    def model(self, model: ModelSpec, prefix: str, inputs: list[str] | None) -> list[str]:
        """Emit a model's nodes; `inputs` None means it is the top level (create input nodes).
        Returns the names of the nodes holding its outputs."""
        if model.sequential:
            return self._sequential(model, prefix, inputs)
        return self._functional(model, prefix, inputs)

    def _input(self, name: str, shape, dtype: str) -> str:
        return self.emit(name, "input", [], tuple(shape), {"dtype": dtype}, {}, "InputLayer")

    def _sequential(self, model: ModelSpec, prefix: str, inputs: list[str] | None) -> list[str]:
        if inputs is None:
            current = self._input(prefix + model.input_name, model.input_shape,
                                  model.input_dtype)
        else:
            if len(inputs) != 1:
                raise ModelFormatError(f"{self.dialect.source}: Sequential model "
                                       f"{model.name!r} is called with {len(inputs)} inputs")
            current = inputs[0]
        for layer in model.layers:
            (current,) = self.call(layer, 0, prefix, [current])[:1]
        return [current]

    def _functional(self, model: ModelSpec, prefix: str, inputs: list[str] | None) -> list[str]:
        src = self.dialect.source
        offsets = _node_offsets(model)
        tensors: dict[tuple[str, int, int], str] = {}
        by_name = {layer.name: layer for layer in model.layers}

        def key(ref: Ref) -> tuple[str, int, int]:
            name, node, index = ref
            return (name, node - offsets.get(name, 0), index)

        if inputs is not None and len(inputs) != len(model.inputs):
            raise ModelFormatError(f"{src}: model {model.name!r} has {len(model.inputs)} inputs "
                                   f"but is called with {len(inputs)}")
        for i, ref in enumerate(model.inputs):
            layer = by_name.get(ref[0])
            if layer is None or layer.class_name != "InputLayer":
                raise ModelFormatError(f"{src}: model {model.name!r} input {ref[0]!r} is not an "
                                       f"InputLayer of the model")
            if inputs is None:
                try:
                    shape = input_shape_of(layer.config)
                except (TypeError, ValueError) as exc:
                    raise ModelFormatError(f"{src}: {layer.describe()}: its input shape is "
                                           f"not valid ({exc})") from None
                if shape is None:
                    raise ModelFormatError(f"{src}: {layer.describe()} has no input shape")
                tensors[key(ref)] = self._input(prefix + layer.name, shape,
                                                dtype_of(layer.config))
            else:
                tensors[key(ref)] = inputs[i]

        calls = [(layer, k, refs) for layer in model.layers if layer.class_name != "InputLayer"
                 for k, refs in enumerate(layer.calls)]
        done = set()
        for i in _call_order(calls, tensors, key):
            layer, k, refs = calls[i]
            if all(key(r) in tensors for r in refs):   # else a tensor index its producer lacks
                outs = self.call(layer, k, prefix, [tensors[key(r)] for r in refs])
                for t, node in enumerate(outs):
                    tensors[(layer.name, k, t)] = node
                done.add(i)
        waiting = [c for i, c in enumerate(calls) if i not in done]
        if waiting:
            names = ", ".join(f"{layer.name!r}" for layer, _, _ in waiting[:5])
            missing = sorted({r[0] for _, _, refs in waiting for r in refs
                              if key(r) not in tensors})
            raise ModelFormatError(f"{src}: model {model.name!r}: layers {names} read "
                                   f"tensors that are never produced (from "
                                   f"{', '.join(map(repr, missing[:5]))}); the config is "
                                   f"inconsistent")
        outputs = []
        for ref in model.outputs:
            if key(ref) not in tensors:
                raise ModelFormatError(f"{src}: model {model.name!r} output {ref[0]!r} "
                                       f"(node {ref[1]}, tensor {ref[2]}) is never produced")
            outputs.append(tensors[key(ref)])
        return outputs

    # -- layers ------------------------------------------------------------------------------
    def call(self, layer: LayerSpec, k: int, prefix: str, inputs: list[str]) -> list[str]:
        name = prefix + layer.name + (f"@{k}" if k else "")
        if layer.model is not None:
            return self.model(layer.model, name + "/", inputs)
        if layer.class_name == "InputLayer":        # an InputLayer inside a Sequential
            return list(inputs)
        low = lower(layer, [self.shapes[i] for i in inputs], self.dialect)
        for suffix, first in low.before:       # e.g. SeparableConv2D: its depthwise node
            inputs = [self.emit(f"{name}/{suffix}", first.op, inputs, first.shape, first.attrs,
                                first.weights, layer.class_name)]
        return [self.emit(name, low.op, inputs, low.shape, low.attrs, low.weights,
                          layer.class_name)]


def _call_order(calls: list, available, key) -> list[int]:
    """Indices of `calls` in the order they can run: repeated sweeps over the config order,
    each running every call whose inputs exist by the time the sweep reaches it (the order
    Keras files have always been read in, so graphs and their fingerprints do not change),
    computed in O(n log n) with a heap keyed by (sweep, position) instead of re-scanning the
    waiting calls (a long chain listed in reverse would take n sweeps of n calls).

    A call's outputs are known only by (layer name, call index), so a tensor a call reads is
    taken to come from that layer's call of that index; inputs already `available` count as
    produced."""
    import heapq

    producer = {(layer.name, k): i for i, (layer, k, _) in enumerate(calls)}
    missing = [0] * len(calls)
    readers: dict[int, list[int]] = {}
    for i, (_, _, refs) in enumerate(calls):
        for r in refs:
            kr = key(r)
            if kr in available:
                continue
            p = producer.get(kr[:2])
            if p is None:
                missing[i] = -1 << 40     # never runs: reported by the caller
                break
            missing[i] += 1
            readers.setdefault(p, []).append(i)
    heap = [(0, i) for i in range(len(calls)) if missing[i] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        sweep, i = heapq.heappop(heap)
        order.append(i)
        for j in readers.get(i, ()):
            missing[j] -= 1
            if missing[j] == 0:
                heapq.heappush(heap, (sweep if j > i else sweep + 1, j))
    return order


def _node_offsets(model: ModelSpec) -> dict[str, int]:
    """File node index of each nested model's first outer call.

    Keras 2 counts a nested model's own internal node as node 0, so references from the outer
    model start at 1; Keras 3 starts at 0. The smallest index referenced tells which."""
    nested = {layer.name for layer in model.layers if layer.model is not None}
    offsets = dict.fromkeys(nested, None)
    for ref in [r for layer in model.layers for call in layer.calls for r in call] + \
            model.outputs:
        if ref[0] in nested:
            seen = offsets[ref[0]]
            offsets[ref[0]] = ref[1] if seen is None else min(seen, ref[1])
    return {name: 0 if v is None else v for name, v in offsets.items()}


def build_nodes(model: ModelSpec, dialect: Dialect) -> tuple[list[Node], list[str], list[str]]:
    """(nodes, input node names, output node names) of the top-level model."""
    b = _Builder(dialect)
    outputs = b.model(model, "", None)
    inputs = [n.name for n in b.nodes if n.op == "input"]
    return b.nodes, inputs, outputs
