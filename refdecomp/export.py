"""Write a graph (a model or a module) as a Keras legacy HDF5 file, without importing Keras.

The file follows the tf.keras 2 HDF5 layout that both Keras 3 and tf_keras load with
`load_model(path, custom_objects=refdecomp.keras_objects())`:

- root attributes `model_config` (JSON of a `Functional` model of standard layers),
  `keras_version`, `backend`;
- `model_weights/` with `layer_names`, and per layer `<layer>/<layer>/<weight>:0` datasets listed
  in the layer group's `weight_names` attribute.

Every op of `refdecomp.graph` maps back to a standard Keras layer. A node mask (1 keeps, 0 forces
the node's output to zero after its activation) becomes a `refdecomp>NodeMask` layer right after
the node: a constant 0/1 multiplier holding the mask as a non-trainable weight.

Keras loads legacy weights by *position*: the n-th layer with weights in `model.layers` gets the
n-th layer group with weights named in `layer_names`. `model.layers` is ordered by Keras' graph
traversal (depth from the outputs, ties by depth-first visiting order), not by the config, so
`_keras_layer_order` reproduces that ordering.

With ``compact=True`` the filters and units a module removed entirely (mask 0 at every position)
are dropped together with the matching input channels / rows of their consumers, whenever every
op between them passes zero channels through unchanged (see `_removable_channels`).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._version import __version__
from .activations import keras_form
from .errors import DataError, RefdecompError, UnsupportedLayerError, describe_layer
from .fileio import atomic_path
from .graph import Graph, Node

#: The Keras dialect of the written config and weight layout (tf.keras 2 HDF5 format).
KERAS_DIALECT_VERSION = "2.21.0"
#: The registered name of the mask layer (`package>name`).
NODE_MASK_NAME = "refdecomp>NodeMask"



# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------
def export_keras(
    graph: Graph,
    path: str | os.PathLike,
    *,
    masks: Mapping[str, np.ndarray] | None = None,
    compact: bool = False,
    fold: bool = True,
) -> Path:
    """Write `graph` (with node `masks` applied) as a Keras HDF5 model file at `path`.

    `masks` maps conv2d / dense node names to uint8 arrays of the node's output shape
    (1 keep, 0 zero after the activation), as `refdecomp.interpreter.Model.run` takes them.
    With `fold` (default) the interpreter's execution graph is exported (batch norms folded,
    activations fused), so masks apply exactly where the interpreter applies them.
    `compact` drops the filters / units that are masked out entirely.
    The loaded Keras model computes `Model(graph).run(x, masks=masks)`. Returns the path.
    """
    if fold:
        graph = _execution_graph(graph)
    masks = _check_masks(graph, masks or {})
    graph = _reachable(graph)
    if compact:
        graph, masks = compact_graph(graph, masks)
    layers, inputs, outputs = _keras_layers(graph, masks)
    config = {
        "class_name": "Functional",
        "config": {
            "name": _safe_name(graph.name or "model"),
            "trainable": True,
            "layers": [lay.config_entry() for lay in layers],
            "input_layers": [[name, 0, 0] for name in inputs],
            "output_layers": [[name, 0, 0] for name in outputs],
        },
    }
    order = _keras_layer_order(layers, inputs, outputs)
    target = Path(path)
    with atomic_path(target, suffix=".h5") as tmp:
        _write_h5(tmp, config, [layers[i] for i in order], graph)
    return target


def compact_graph(graph: Graph, masks: Mapping[str, np.ndarray],
                  quantum: int = 1) -> tuple[Graph, dict]:
    """Drop the channels / units that are zero everywhere because of `masks`.

    Returns an equivalent graph (same outputs for every input) and the masks sliced to it.
    `quantum` q > 1 keeps some zero filters of each conv2d so that it keeps a multiple of q
    (or all) of them: the convolution kernels run channel blocks of 8-32, and an odd count
    costs more kernel calls than the filters it saves.
    """
    removed = _removable_channels(graph, masks, quantum)
    if not any(r is not None and r[1].any() for r in removed.values()):
        return graph, dict(masks)
    new_nodes: list[Node] = []
    new_masks: dict[str, np.ndarray] = {}
    for node in graph:
        own = removed.get(node.name)
        weights = dict(node.weights)
        shape = node.shape
        if own is not None and own[1].any():
            axis, gone = own
            keep = np.flatnonzero(~gone)
            shape = tuple(len(keep) if a == axis else d for a, d in enumerate(node.shape))
            if node.op in ("conv2d", "dense"):
                weights["kernel"] = np.take(weights["kernel"], keep, axis=-1)
                if "bias" in weights:
                    weights["bias"] = weights["bias"][keep]
            elif node.op == "prelu" and weights["alpha"].shape[axis] > 1:
                weights["alpha"] = np.take(weights["alpha"], keep, axis=axis)
            if node.name in masks:
                new_masks[node.name] = np.take(masks[node.name], keep, axis=axis)
        elif node.name in masks:
            new_masks[node.name] = masks[node.name]
        if node.op in ("conv2d", "dense"):
            src = removed.get(node.inputs[0])
            if src is not None and src[1].any():
                keep_in = np.flatnonzero(~src[1])
                weights["kernel"] = np.take(weights["kernel"], keep_in, axis=-2)
        new_nodes.append(node.replace(shape=shape, weights=weights))
    return graph.with_nodes(new_nodes), new_masks


def read_export_info(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance attributes refdecomp stored in an exported file."""
    with h5py.File(path, "r") as f:
        raw = f.attrs.get("refdecomp_export")
    if raw is None:
        raise RefdecompError(f"{path}: not a file written by refdecomp.export_keras")
    return json.loads(raw)


# --------------------------------------------------------------------------------------------
# Checks and preparation
# --------------------------------------------------------------------------------------------
def _execution_graph(graph: Graph) -> Graph:
    """The graph the interpreter executes (`Model(graph).graph`: batch norms folded,
    activations fused); module masks are keyed by its node names."""
    from .transforms import optimize

    return optimize(graph)[0]


def _check_masks(graph: Graph, masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, mask in masks.items():
        if name not in graph:
            raise DataError(f"mask for {name!r}: the graph {graph.name!r} has no such node; "
                            "masks must be keyed by the names of the exported graph's nodes")
        node = graph[name]
        if node.op not in ("conv2d", "dense"):
            raise DataError(f"mask for {describe_layer(name, node.keras_class)}: only conv2d and "
                            f"dense nodes take masks, not {node.op}")
        arr = np.asarray(mask)
        if arr.shape != tuple(node.shape):
            raise DataError(f"mask for {describe_layer(name, node.keras_class)} has shape "
                            f"{arr.shape}, the node's output shape is {tuple(node.shape)}")
        if not np.isin(arr, (0, 1)).all():
            raise DataError(f"mask for {describe_layer(name, node.keras_class)} holds values "
                            "other than 0 and 1")
        out[name] = arr.astype(np.uint8)
    return out


def _reachable(graph: Graph) -> Graph:
    """Drop nodes no output depends on (Keras would drop them; inputs are always kept)."""
    needed = set(graph.outputs) | set(graph.inputs)
    for node in reversed(graph.nodes):
        if node.name in needed:
            needed.update(node.inputs)
    if len(needed) == len(graph):
        return graph
    return graph.with_nodes([n for n in graph if n.name in needed])


# --------------------------------------------------------------------------------------------
# Compaction: which channels are zero everywhere and can be removed
# --------------------------------------------------------------------------------------------
def _channel_axis(node: Node) -> int:
    """Channel axis (without the batch axis) of a node's output for ops with a data_format."""
    rank = len(node.shape)
    if node.op in ("global_avg_pool2d", "global_max_pool2d") and not node.attrs.get("keepdims"):
        return 0
    return 0 if node.attrs.get("data_format") == "channels_first" else rank - 1


def _maps_zero_to_zero(act: Mapping[str, Any]) -> bool:
    """Whether an element-wise activation keeps zero channels zero (by the reference ops)."""
    from .ops.reference import activate

    if act.get("name") in ("softmax", "log_softmax"):  # not element-wise
        return False
    try:
        return float(activate(np.zeros(1, np.float32), dict(act))[0]) == 0.0
    except RefdecompError:
        return False


def _flatten_channels(in_shape: tuple[int, ...], axis: int, data_format: str) -> np.ndarray:
    """For each element of a Flatten output, the input channel it comes from (Keras order)."""
    ch = np.arange(in_shape[axis]).reshape([-1 if a == axis else 1 for a in range(len(in_shape))])
    ch = np.broadcast_to(ch, in_shape)
    if data_format == "channels_first" and len(in_shape) > 1:
        ch = np.moveaxis(ch, 0, -1)
    return ch.reshape(-1)


def _removable_channels(graph: Graph, masks: Mapping[str, np.ndarray],
                        quantum: int = 1) -> dict:
    """{node: (channel axis, bool array of removed channels)} for nodes whose channels may go.

    A conv2d / dense channel is zero when its mask is 0 at every position. Zero channels pass
    through ops that keep channels apart and map 0 to 0 (pooling, padding, flatten, add with
    every operand zero there, concatenation along channels, zero-preserving activations) and
    are absorbed by conv2d / dense consumers (their input rows are dropped). A channel is
    removed only where every consumer along the way can take its removal; graph outputs keep
    their shape. The sets only shrink, so the forward/backward sweeps reach a fixed point.
    """
    rem: dict[str, tuple[int, np.ndarray] | None] = {}
    flat_map: dict[str, np.ndarray] = {}

    def passes(node: Node) -> bool:
        if node.op in ("identity", "max_pool2d", "avg_pool2d", "zero_pad2d",
                       "global_avg_pool2d", "global_max_pool2d", "prelu", "flatten", "add"):
            return True
        if node.op == "activation":
            return _maps_zero_to_zero(node.activation)
        return False

    # Initial (largest) sets, forward.
    for node in graph:
        src = [rem.get(i) for i in node.inputs]
        if node.op in ("conv2d", "dense"):
            axis = _channel_axis(node) if node.op == "conv2d" else len(node.shape) - 1
            mask = masks.get(node.name)
            if mask is None:
                gone = np.zeros(node.shape[axis], bool)
            else:
                other = tuple(a for a in range(mask.ndim) if a != axis)
                gone = ~mask.astype(bool).any(axis=other) if other else ~mask.astype(bool)
            rem[node.name] = (axis, gone)
        elif node.op == "concatenate":
            rem[node.name] = _concat_rem(graph, node, src)
        elif passes(node) and src and all(s is not None for s in src):
            if node.op == "flatten":
                axis, gone = src[0]
                in_shape = graph[node.inputs[0]].shape
                fm = _flatten_channels(in_shape, axis, node.attrs.get("data_format", ""))
                flat_map[node.name] = fm
                rem[node.name] = (0, gone[fm])
            elif node.op == "add":
                axes = {s[0] for s in src}
                rem[node.name] = (src[0][0], np.logical_and.reduce([s[1] for s in src])) \
                    if len(axes) == 1 else None
            elif node.op in ("identity", "activation", "prelu"):
                rem[node.name] = (src[0][0], src[0][1].copy())
            else:  # pooling, padding: the input's channel axis must be the op's
                in_axis = 0 if node.attrs.get("data_format") == "channels_first" else 2
                rem[node.name] = (_channel_axis(node), src[0][1].copy()) \
                    if src[0][0] == in_axis else None
        else:
            rem[node.name] = None

    changed = True
    while changed:
        changed = False
        for name in graph.outputs:
            if rem.get(name) is not None and rem[name][1].any():
                rem[name][1][:] = False
                changed = True
        # Backward: each consumer limits what its producers may remove.
        for node in reversed(graph.nodes):
            for pos, src_name in enumerate(node.inputs):
                src = rem.get(src_name)
                if src is None or not src[1].any():
                    continue
                allowed = _allowed_removal(graph, node, pos, src, rem.get(node.name), flat_map)
                new = src[1] & allowed
                if not np.array_equal(new, src[1]):
                    src[1][:] = new
                    changed = True
        # Forward: outputs cannot remove what their producers keep.
        for node in graph:
            own = rem.get(node.name)
            if own is None or node.op in ("conv2d", "dense"):
                continue
            src = [rem.get(i) for i in node.inputs]
            if any(s is None for s in src):
                new = np.zeros_like(own[1])
            elif node.op == "flatten":
                new = own[1] & src[0][1][flat_map[node.name]]
            elif node.op == "concatenate":
                new = own[1] & np.concatenate([s[1] for s in src])
            elif node.op == "add":
                new = own[1] & np.logical_and.reduce([s[1] for s in src])
            else:
                new = own[1] & src[0][1]
            if not np.array_equal(new, own[1]):
                own[1][:] = new
                changed = True
        # Keep a multiple of `quantum` filters of every conv2d (zero ones: exact).
        if not changed and quantum > 1:
            for node in graph.nodes_of(("conv2d",)):
                own = rem.get(node.name)
                if own is None:
                    continue
                gone = own[1]
                extra = (-int((~gone).sum())) % quantum
                if extra and gone.any():
                    gone[np.flatnonzero(gone)[:extra]] = False
                    changed = True
        # Keep at least one channel in every tensor (Keras has no empty layers).
        if not changed:
            for own in rem.values():
                if own is not None and own[1].size and own[1].all():
                    own[1][0] = False
                    changed = True
    return rem


def _concat_rem(graph: Graph, node: Node, src: list) -> tuple[int, np.ndarray] | None:
    """Concatenation along the channel axis of every operand passes removals through."""
    if not src or any(s is None for s in src):
        return None
    rank = len(node.shape)
    axis = node.attrs.get("axis", -1)
    axis = axis + rank + 1 if axis < 0 else axis
    if any(s[0] != axis - 1 for s in src):
        return None
    return (axis - 1, np.concatenate([s[1] for s in src]))


def _allowed_removal(graph: Graph, node: Node, pos: int, src: tuple, own, flat_map) -> np.ndarray:
    """Which channels of input `pos` the consumer `node` accepts to see removed."""
    axis, gone = src
    nothing = np.zeros_like(gone)
    in_rank = len(graph[node.inputs[pos]].shape)
    if node.op == "conv2d":
        return gone if axis == _channel_axis(node) and in_rank == 3 else nothing
    if node.op == "dense":
        return gone if axis == in_rank - 1 else nothing
    if own is None:
        return nothing
    if node.op == "flatten":
        fm = flat_map[node.name]
        kept_out = ~own[1]
        allowed = np.ones_like(gone)
        allowed[fm[kept_out]] = False
        return allowed
    if node.op == "concatenate":
        sizes = [graph[i].shape[own[0]] for i in node.inputs]
        offset = int(sum(sizes[:pos]))
        return own[1][offset:offset + sizes[pos]].copy()
    return own[1].copy()


# --------------------------------------------------------------------------------------------
# Keras layers
# --------------------------------------------------------------------------------------------
@dataclass
class _Layer:
    """One Keras layer of the exported model, called once."""

    name: str
    class_name: str
    config: dict[str, Any]
    inbound: list[str]
    weights: list[tuple[str, np.ndarray]] = field(default_factory=list)

    def config_entry(self) -> dict[str, Any]:
        cfg = {"name": self.name, "trainable": self.class_name != "NodeMask", "dtype": "float32",
               **self.config}
        if self.class_name == "InputLayer":
            cfg.pop("trainable")
        inbound = [[[src, 0, 0, {}] for src in self.inbound]] if self.inbound else []
        return {"class_name": self.class_name, "config": cfg, "name": self.name,
                "inbound_nodes": inbound}


class _Namer:
    """Unique Keras-safe layer names ('/' is not allowed in Keras 3 layer names)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, wanted: str) -> str:
        base = _safe_name(wanted)
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "layer"


def _keras_layers(graph: Graph, masks: Mapping[str, np.ndarray]):
    """Map every node to Keras layers; returns (layers, input layer names, output names)."""
    namer = _Namer()
    # Node names are claimed first, so extra layers (masks, activations) never take one.
    own_name = {node.name: namer(node.name) for node in graph}
    layers: list[_Layer] = []
    tensor: dict[str, str] = {}  # node name -> Keras layer name producing its value
    for node in graph:
        try:
            last = _node_layers(node, own_name[node.name], [tensor[i] for i in node.inputs],
                                graph, namer, layers)
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsupportedLayerError(
                f"{describe_layer(node.name, node.keras_class)}: cannot export op {node.op!r} "
                f"with attributes {node.attrs}: {exc}") from exc
        if node.name in masks:
            mask = masks[node.name]
            mask_layer = _Layer(namer(f"{node.name}_mask"), "NodeMask",
                                {"mask_shape": list(mask.shape)}, [last],
                                [("mask", mask.astype(np.float32))])
            layers.append(mask_layer)
            last = mask_layer.name
        tensor[node.name] = last
    inputs = [tensor[name] for name in graph.inputs]
    outputs = [tensor[name] for name in graph.outputs]
    return layers, inputs, outputs


#: Keras layers whose channels_first form TensorFlow runs only through oneDNN's NCHW kernels
#: (its default CPU kernels take NHWC only, e.g. on AVX2 CPUs): exported in channels_last
#: between two transposes.
_NHWC_ONLY = frozenset({"Conv2D", "MaxPooling2D", "AveragePooling2D"})


def _node_layers(node: Node, own_name: str, inbound: list[str], graph: Graph, namer: _Namer,
                 layers: list[_Layer]) -> str:
    """Append the Keras layer(s) of one node; return the name of the layer giving its value."""
    a, w = node.attrs, node.weights
    op = node.op

    def add(class_name: str, config: dict, weights=()) -> str:
        if config.get("data_format") == "channels_first" and class_name in _NHWC_ONLY:
            return _channels_last_between_transposes(class_name, config, weights)
        lay = _Layer(own_name, class_name, config, inbound, list(weights))
        layers.append(lay)
        return lay.name

    def _channels_last_between_transposes(class_name: str, config: dict, weights) -> str:
        """The layer in channels_last between Permute layers (NCHW -> NHWC -> NCHW): the same
        function, and one that TensorFlow runs on every CPU."""
        to_last = _Layer(namer(f"{node.name}_to_channels_last"), "Permute", {"dims": [2, 3, 1]},
                         inbound)
        lay = _Layer(own_name, class_name, {**config, "data_format": "channels_last"},
                     [to_last.name], list(weights))
        back = _Layer(namer(f"{node.name}_to_channels_first"), "Permute", {"dims": [3, 1, 2]},
                      [lay.name])
        layers.extend((to_last, lay, back))
        return back.name

    if op == "input":
        return add("InputLayer", {"batch_input_shape": [None, *node.shape],
                                  "dtype": str(a.get("dtype", "float32"))})
    if op in ("conv2d", "dense"):
        act_string, act_layers = _activation(node, node.activation)
        weights = [("kernel", w["kernel"])] + ([("bias", w["bias"])] if "bias" in w else [])
        if op == "conv2d":
            kernel = w["kernel"]
            cfg = {"filters": int(kernel.shape[3]), "kernel_size": list(kernel.shape[:2]),
                   "strides": list(a.get("strides", (1, 1))), "padding": a.get("padding", "valid"),
                   "data_format": a.get("data_format", "channels_last"),
                   "dilation_rate": list(a.get("dilation", (1, 1))), "groups": 1,
                   "activation": act_string, "use_bias": "bias" in w}
            last = add("Conv2D", cfg, weights)
        else:
            cfg = {"units": int(w["kernel"].shape[1]), "activation": act_string,
                   "use_bias": "bias" in w}
            last = add("Dense", cfg, weights)
        return _chain(act_layers, last, node, namer, layers)
    if op in ("max_pool2d", "avg_pool2d"):
        cls = "MaxPooling2D" if op == "max_pool2d" else "AveragePooling2D"
        return add(cls, {"pool_size": list(a["pool"]), "strides": list(a["strides"]),
                         "padding": a.get("padding", "valid"),
                         "data_format": a.get("data_format", "channels_last")})
    if op in ("global_avg_pool2d", "global_max_pool2d"):
        cls = "GlobalAveragePooling2D" if op == "global_avg_pool2d" else "GlobalMaxPooling2D"
        return add(cls, {"data_format": a.get("data_format", "channels_last"),
                         "keepdims": bool(a.get("keepdims", False))})
    if op == "flatten":
        return add("Flatten", {"data_format": a.get("data_format", "channels_last")})
    if op == "reshape":
        return add("Reshape", {"target_shape": [int(d) for d in a["target_shape"]]})
    if op == "add":
        return add("Add", {})
    if op == "concatenate":
        return add("Concatenate", {"axis": int(a.get("axis", -1))})
    if op == "activation":
        act_string, act_layers = _activation(node, node.activation)
        if not act_layers:
            return add("Activation", {"activation": act_string})
        return _chain(act_layers, inbound[0], node, namer, layers)
    if op == "identity":
        return add("Activation", {"activation": "linear"})
    if op == "softmax":
        return add("Softmax", {"axis": int(a.get("axis", -1))})
    if op == "channel_logsumexp":
        return add("ChannelLogSumExp", {"class_index": int(a["class_index"])})
    if op == "prelu":
        shared = a.get("shared_axes")
        return add("PReLU", {"shared_axes": list(shared) if shared else None},
                   [("alpha", w["alpha"].reshape(node.shape if not shared else w["alpha"].shape))])
    if op == "batch_norm":
        return add("BatchNormalization", *_batch_norm(node, graph))
    if op == "rescaling":
        return add("Rescaling", {"scale": _jsonable(a.get("scale", 1.0)),
                                 "offset": _jsonable(a.get("offset", 0.0))})
    if op == "normalization":
        axes = a.get("axis", -1)
        axes = [int(x) for x in ((axes,) if isinstance(axes, int) else (axes or ()))]
        in_shape = graph[node.inputs[0]].shape
        axes = [ax if ax > 0 else ax + len(in_shape) + 1 for ax in axes]
        kept = [in_shape[ax - 1] for ax in axes]
        return add("Normalization", {"axis": axes, "mean": _per_axis(w["mean"], kept),
                                     "variance": _per_axis(w["variance"], kept),
                                     "invert": False})
    if op == "zero_pad2d":
        (t, b), (l, r) = a["padding"]
        return add("ZeroPadding2D", {"padding": [[int(t), int(b)], [int(l), int(r)]],
                                     "data_format": a.get("data_format", "channels_last")})
    raise UnsupportedLayerError(f"{describe_layer(node.name, node.keras_class)}: op {op!r} has "
                                "no Keras export")


def _per_axis(value: Any, kept: list[int]) -> list:
    """Normalization statistics as a nested list of the kept axes' shape."""
    arr = np.asarray(value, dtype=np.float64)
    arr = arr.reshape(kept) if arr.size == int(np.prod(kept)) else np.broadcast_to(arr, kept)
    return arr.tolist()


def _batch_norm(node: Node, graph: Graph) -> tuple[dict, list]:
    a, w = node.attrs, node.weights
    axes = a.get("axis", -1)
    axes = [int(x) for x in ((axes,) if isinstance(axes, int) else axes)]
    in_shape = graph[node.inputs[0]].shape
    axes = [ax if ax > 0 else ax + len(in_shape) + 1 for ax in axes]
    param_shape = tuple(in_shape[ax - 1] for ax in axes)
    names = (["gamma"] if a.get("scale", True) else []) + \
        (["beta"] if a.get("center", True) else []) + ["moving_mean", "moving_variance"]
    weights = [(n, np.asarray(w[n]).reshape(param_shape)) for n in names]
    cfg = {"axis": axes, "momentum": 0.99, "epsilon": float(a.get("epsilon", 1e-3)),
           "center": bool(a.get("center", True)), "scale": bool(a.get("scale", True))}
    return cfg, weights


def _activation(node: Node, act: Mapping[str, Any]) -> tuple[str, list[tuple[str, dict]]]:
    """An activation as (config string, extra layers after it) valid in Keras 3 and tf_keras
    (`refdecomp.activations.keras_form`: parametrised activations become layers, hard_sigmoid
    Rescaling + ReLU(max_value=1) in its dialect)."""
    form = keras_form(act)
    if form is None:
        raise UnsupportedLayerError(
            f"{describe_layer(node.name, node.keras_class)}: activation {dict(act)} has no "
            "definition shared by Keras 3 and tf_keras")
    return form


def _chain(extra: list[tuple[str, dict]], last: str, node: Node, namer: _Namer,
           layers: list[_Layer]) -> str:
    """Append the activation layers `extra` after the layer `last`; return the final name."""
    for k, (cls, cfg) in enumerate(extra):
        lay = _Layer(namer(f"{node.name}_{cls.lower()}{'' if k == 0 else k}"), cls, cfg, [last])
        layers.append(lay)
        last = lay.name
    return last


def _jsonable(v: Any) -> Any:
    return np.asarray(v).tolist() if isinstance(v, (np.ndarray, list, tuple)) else float(v)


# --------------------------------------------------------------------------------------------
# Keras' layer order (for position-based weight loading)
# --------------------------------------------------------------------------------------------
def _keras_layer_order(layers: list[_Layer], inputs: list[str], outputs: list[str]) -> list[int]:
    """Indices of `layers` in the order a loaded Keras Functional model lists them.

    Same rule in Keras 3 (`ops.function.map_graph`) and tf_keras (`_map_graph_network`): a
    depth-first walk from the outputs gives each layer a first-visit index and a post-order;
    depth is the longest path to an output; layers sort by decreasing depth, then visit index.
    """
    by_name = {lay.name: i for i, lay in enumerate(layers)}
    visit_index: dict[str, int] = {}
    post: list[str] = []
    finished: set[str] = set()
    for out in outputs:
        if out in finished:
            continue
        visit_index.setdefault(out, len(visit_index))
        stack = [(out, iter(layers[by_name[out]].inbound))]
        while stack:
            name, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                finished.add(name)
                post.append(name)
            elif nxt not in finished:
                visit_index.setdefault(nxt, len(visit_index))
                stack.append((nxt, iter(layers[by_name[nxt]].inbound)))
    depth: dict[str, int] = {}
    for name in reversed(post):
        d = depth.setdefault(name, 0)
        for src in layers[by_name[name]].inbound:
            depth[src] = max(d + 1, depth.get(src, 0))
    for name in inputs:
        if name not in depth:
            depth[name], visit_index[name] = 0, -1
    ordered = sorted(depth, key=lambda n: (-depth[n], visit_index[n]))
    return [by_name[n] for n in ordered]


# --------------------------------------------------------------------------------------------
# HDF5 writing
# --------------------------------------------------------------------------------------------
def _write_h5(tmp: Path, config: dict, layers: list[_Layer], graph: Graph) -> None:
    str_dt = h5py.string_dtype()
    with h5py.File(tmp, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = KERAS_DIALECT_VERSION
        f.attrs["backend"] = "tensorflow"
        f.attrs["refdecomp_export"] = json.dumps({
            "refdecomp_version": __version__, "source": graph.source,
            "source_sha256": graph.sha256, "graph": graph.name})
        mw = f.create_group("model_weights")
        mw.attrs["keras_version"] = KERAS_DIALECT_VERSION
        mw.attrs["backend"] = "tensorflow"
        mw.attrs["layer_names"] = np.array([lay.name for lay in layers], dtype=str_dt)
        for lay in layers:
            g = mw.create_group(lay.name)
            names = [f"{lay.name}/{wname}:0" for wname, _ in lay.weights]
            g.attrs["weight_names"] = np.array(names, dtype=str_dt)
            for full, (_, value) in zip(names, lay.weights):
                g.create_dataset(full, data=np.asarray(value, dtype=np.float32))
