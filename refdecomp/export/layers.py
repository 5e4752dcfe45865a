"""Graph nodes -> Keras layers: each op's `export` rule (`refdecomp/ops/defs/`) gets an
`ExportContext` and appends the layer(s) that give its node's value; masks become
`refdecomp>NodeMask` layers right after their node."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..activations import keras_form
from ..errors import UnsupportedLayerError, describe_layer
from ..graph import Graph, Node

#: The registered name of the mask layer (`package>name`).
NODE_MASK_NAME = "refdecomp>NodeMask"

@dataclass
class Layer:
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


class Namer:
    """Unique Keras-safe layer names ('/' is not allowed in Keras 3 layer names)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, wanted: str) -> str:
        base = safe_name(wanted)
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "layer"


class ExportContext:
    """What an op's export rule may use: `inbound` (the Keras layers giving its inputs),
    `input_shape(i)`, `add(class, config, weights, nhwc_only)` (the node's own layer; returns
    its name),
    `chain(extra, last)` (extra layers after `last`), `activation(act)` (an activation as a
    config string plus extra layers)."""

    def __init__(self, node: Node, own_name: str, inbound: list[str], graph: Graph,
                 namer: Namer, layers: list[Layer]):
        self.node, self.own_name, self.inbound = node, own_name, inbound
        self.graph, self.namer, self.layers = graph, namer, layers

    def input_shape(self, i: int = 0) -> tuple:
        return tuple(self.graph[self.node.inputs[i]].shape)

    def add(self, class_name: str, config: dict, weights=(), nhwc_only: bool = False) -> str:
        """`nhwc_only`: a layer whose channels_first form TensorFlow runs only through
        oneDNN's NCHW kernels (its default CPU kernels take NHWC only, e.g. on AVX2 CPUs):
        exported in channels_last between two transposes."""
        if config.get("data_format") == "channels_first" and nhwc_only:
            return self._channels_last_between_transposes(class_name, config, weights)
        lay = Layer(self.own_name, class_name, config, self.inbound, list(weights))
        self.layers.append(lay)
        return lay.name

    def _channels_last_between_transposes(self, class_name: str, config: dict, weights) -> str:
        """The layer in channels_last between Permute layers (NCHW -> NHWC -> NCHW): the same
        function, and one that TensorFlow runs on every CPU."""
        name = self.node.name
        to_last = Layer(self.namer(f"{name}_to_channels_last"), "Permute", {"dims": [2, 3, 1]},
                        self.inbound)
        lay = Layer(self.own_name, class_name, {**config, "data_format": "channels_last"},
                    [to_last.name], list(weights))
        back = Layer(self.namer(f"{name}_to_channels_first"), "Permute", {"dims": [3, 1, 2]},
                     [lay.name])
        self.layers.extend((to_last, lay, back))
        return back.name

    def activation(self, act: Mapping[str, Any]) -> tuple[str, list[tuple[str, dict]]]:
        return keras_activation(self.node, act)

    def chain(self, extra: list[tuple[str, dict]], last: str) -> str:
        """Append the activation layers `extra` after the layer `last`; return the final name."""
        for k, (cls, cfg) in enumerate(extra):
            lay = Layer(self.namer(f"{self.node.name}_{cls.lower()}{'' if k == 0 else k}"), cls,
                        cfg, [last])
            self.layers.append(lay)
            last = lay.name
        return last


def keras_layers(graph: Graph, masks: Mapping[str, np.ndarray]):
    """Map every node to Keras layers; returns (layers, input layer names, output names)."""
    namer = Namer()
    # Node names are claimed first, so extra layers (masks, activations) never take one.
    own_name = {node.name: namer(node.name) for node in graph}
    layers: list[Layer] = []
    tensor: dict[str, str] = {}  # node name -> Keras layer name producing its value
    for node in graph:
        rule = node.spec.export
        if rule is None:
            raise UnsupportedLayerError(f"{describe_layer(node.name, node.keras_class)}: op "
                                        f"{node.op!r} has no Keras export")
        ctx = ExportContext(node, own_name[node.name], [tensor[i] for i in node.inputs], graph,
                            namer, layers)
        try:
            last = rule(node, ctx)
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsupportedLayerError(
                f"{describe_layer(node.name, node.keras_class)}: cannot export op {node.op!r} "
                f"with attributes {node.attrs}: {exc}") from exc
        if node.name in masks:
            mask = masks[node.name]
            mask_layer = Layer(namer(f"{node.name}_mask"), "NodeMask",
                               {"mask_shape": list(mask.shape)}, [last],
                               [("mask", mask.astype(np.float32))])
            layers.append(mask_layer)
            last = mask_layer.name
        tensor[node.name] = last
    inputs = [tensor[name] for name in graph.inputs]
    outputs = [tensor[name] for name in graph.outputs]
    return layers, inputs, outputs


def keras_activation(node: Node, act: Mapping[str, Any]) -> tuple[str, list[tuple[str, dict]]]:
    """An activation as (config string, extra layers after it) valid in Keras 3 and tf_keras
    (`refdecomp.activations.keras_form`: parametrised activations become layers, hard_sigmoid
    Rescaling + ReLU(max_value=1) in its dialect)."""
    form = keras_form(act)
    if form is None:
        raise UnsupportedLayerError(
            f"{describe_layer(node.name, node.keras_class)}: activation {dict(act)} has no "
            "definition shared by Keras 3 and tf_keras")
    return form
