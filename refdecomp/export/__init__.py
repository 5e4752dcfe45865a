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
`order.keras_layer_order` reproduces that ordering.

With ``compact=True`` the filters and units a module removed entirely (mask 0 at every position)
are dropped together with the matching input channels / rows of their consumers, whenever every
op between them passes zero channels through unchanged (`refdecomp.compact.compact_graph`).

By concern: this module checks the masks and assembles the model config; `layers` maps each
node to Keras layers (each op's `export` rule, `refdecomp/ops/defs/`); `order` gives Keras'
layer order; `h5` writes the file.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..compact import compact_graph
from ..errors import DataError, RefdecompError, describe_layer
from ..fileio import atomic_path
from ..graph import Graph
from ..transforms import optimize
from .h5 import KERAS_DIALECT_VERSION, write_h5
from .layers import NODE_MASK_NAME, keras_layers, safe_name
from .order import keras_layer_order

__all__ = ["KERAS_DIALECT_VERSION", "NODE_MASK_NAME", "compact_graph", "export_keras",
           "read_export_info"]


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
    layers, inputs, outputs = keras_layers(graph, masks)
    config = {
        "class_name": "Functional",
        "config": {
            "name": safe_name(graph.name or "model"),
            "trainable": True,
            "layers": [lay.config_entry() for lay in layers],
            "input_layers": [[name, 0, 0] for name in inputs],
            "output_layers": [[name, 0, 0] for name in outputs],
        },
    }
    order = keras_layer_order(layers, inputs, outputs)
    target = Path(path)
    with atomic_path(target, suffix=".h5") as tmp:
        write_h5(tmp, config, [layers[i] for i in order], graph)
    return target


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
    return optimize(graph)[0]


def _check_masks(graph: Graph, masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, mask in masks.items():
        if name not in graph:
            raise DataError(f"mask for {name!r}: the graph {graph.name!r} has no such node; "
                            "masks must be keyed by the names of the exported graph's nodes")
        node = graph[name]
        if not node.weighted:
            raise DataError(f"mask for {describe_layer(name, node.keras_class)}: only weighted "
                            f"nodes (conv2d, dense, depthwise_conv2d) take masks, not {node.op}")
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


