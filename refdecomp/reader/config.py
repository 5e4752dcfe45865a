"""Keras model configs -> a tree of `ModelSpec` / `LayerSpec` (no weights, no shapes yet).

Handles the config dialects Keras has written over the years:

- Sequential `config` as a bare list of layers (Keras <= 2.2.2) or a dict with `layers`;
- the input shape as `batch_input_shape` (Keras 2), `batch_shape` (Keras 3), an `InputLayer`,
  `build_input_shape` or a first layer's `build_config`;
- three `inbound_nodes` dialects: Keras 1 `[[name, node, tensor]]`, Keras 2
  `[[name, node, tensor, kwargs]]`, Keras 3 `{"args": [...__keras_tensor__...], "kwargs": {}}`;
- node indices of nested models (Keras 2 counts the model's own internal node as node 0, so
  outer references start at 1; Keras 3 starts at 0);
- `input_layers` / `output_layers` as a list of triples, a single triple or a dict of triples.

Nothing here executes anything from the file: configs are plain JSON data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelFormatError, UnsupportedLayerError, describe_layer

MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})

#: Layer classes that run Python or TensorFlow code stored in (or named by) the file.
CODE_CLASSES = {
    "Lambda": "a Lambda layer holds (marshalled) Python code, which refdecomp never executes",
    "TFOpLambda": "a TFOpLambda layer calls a TensorFlow function by name, which refdecomp "
                  "never executes",
    "SlicingOpLambda": "a SlicingOpLambda layer calls TensorFlow slicing code, which refdecomp "
                       "never executes",
}

# A tensor reference: (layer name, node index as written in the file, tensor index).
Ref = tuple[str, int, int]


@dataclass
class LayerSpec:
    """One layer entry of a config: its class, config, calls and (for models) the inner model.

    `calls[k]` lists the tensors the k-th call reads (file node indices, not yet offset).
    `weights` is filled in by `weights.py` (role -> array).
    """

    name: str
    class_name: str
    config: dict[str, Any]
    calls: list[list[Ref]] = field(default_factory=list)
    model: "ModelSpec | None" = None
    weights: dict[str, Any] = field(default_factory=dict)
    custom: bool = False   # a registered custom object or a class from a non-Keras module

    @property
    def trainable(self) -> bool:
        return bool(self.config.get("trainable", True))

    def describe(self) -> str:
        return describe_layer(self.name, self.class_name)


@dataclass
class ModelSpec:
    """A Sequential or Functional model: its layers in config order, inputs and outputs.

    For Sequential models `inputs` / `outputs` are empty and `input_shape` / `input_name` say
    where the chain starts; `layers` then excludes the InputLayer (as Keras' `model.layers`).
    """

    name: str
    class_name: str
    layers: list[LayerSpec]
    inputs: list[Ref] = field(default_factory=list)
    outputs: list[Ref] = field(default_factory=list)
    input_shape: tuple | None = None      # Sequential only, without the batch axis
    input_name: str = ""                  # Sequential only
    input_dtype: str = "float32"
    trainable: bool = True

    @property
    def sequential(self) -> bool:
        return self.class_name == "Sequential"

    def layer(self, name: str) -> LayerSpec:
        for spec in self.layers:
            if spec.name == name:
                return spec
        raise KeyError(name)


def parse_model(cfg: Any, source: str) -> ModelSpec:
    """Parse a model entry `{"class_name": ..., "config": ...}` into a `ModelSpec`."""
    if not isinstance(cfg, dict) or "class_name" not in cfg:
        raise ModelFormatError(f"{source}: the model config is not a Keras model config "
                               f"(no 'class_name'); the file may be damaged")
    class_name = cfg["class_name"]
    _refuse_custom_model(cfg, source)
    body = cfg.get("config")
    if class_name == "Sequential":
        return _parse_sequential(body, source)
    return _parse_functional(body, class_name, source)


def _refuse_custom_model(cfg: dict, source: str) -> None:
    class_name = cfg.get("class_name")
    name = (cfg.get("config") or {}).get("name", "?") if isinstance(cfg.get("config"), dict) \
        else "?"
    if class_name not in MODEL_CLASSES or _is_custom(cfg):
        raise UnsupportedLayerError(
            f"{source}: model {name!r} is of class {class_name!r}, a subclassed or custom model "
            f"whose computation is Python code in the program that saved it (not in the file); "
            f"refdecomp reads only Sequential and Functional models built from Keras layers. "
            f"Rebuild it as a Functional model and save it again")


def _is_custom(entry: dict) -> bool:
    """Keras 3 marks registered custom objects with `registered_name`, and non-Keras modules."""
    registered = entry.get("registered_name")
    if registered not in (None, entry.get("class_name")):
        return True
    if "module" in entry:
        module = entry["module"]
        if module is None or not str(module).startswith(("keras", "tf_keras")):
            return True
    return False


def _layer_list(body: Any, source: str, what: str) -> list:
    layers = body if isinstance(body, list) else (body or {}).get("layers")
    if not isinstance(layers, list):
        raise ModelFormatError(f"{source}: {what} config has no list of layers; the file may "
                               f"be damaged or not a Keras model")
    return layers


def _parse_sequential(body: Any, source: str) -> ModelSpec:
    entries = _layer_list(body, source, "Sequential")
    meta = body if isinstance(body, dict) else {}
    spec = ModelSpec(meta.get("name", "sequential"), "Sequential", [],
                     trainable=bool(meta.get("trainable", True)))
    for i, entry in enumerate(entries):
        layer = _parse_layer(entry, source)
        if layer.class_name == "InputLayer" and i == 0:
            spec.input_shape = _input_shape(layer.config)
            spec.input_name = layer.name
            spec.input_dtype = _dtype(layer.config)
            continue
        if i == 0 or (spec.input_shape is None and not spec.layers):
            shape = _input_shape(layer.config)
            if shape is not None:
                spec.input_shape = shape
                spec.input_dtype = _dtype(layer.config)
        spec.layers.append(layer)
    if not spec.layers:
        raise ModelFormatError(f"{source}: Sequential model {spec.name!r} has no layers")
    if spec.input_shape is None:
        spec.input_shape = _shape_from(meta.get("build_input_shape"))
    if spec.input_shape is None and spec.layers[0].model is not None:
        spec.input_shape = _nested_input_shape(spec.layers[0].model)
    if spec.input_shape is None:
        first = spec.layers[0]
        raise ModelFormatError(
            f"{source}: Sequential model {spec.name!r} does not record its input shape "
            f"(no InputLayer, batch_input_shape or build_input_shape on "
            f"{first.describe()}); save it after building it with an input shape")
    if not spec.input_name:
        spec.input_name = f"{spec.layers[0].name}_input"
    return spec


def _nested_input_shape(model: ModelSpec) -> tuple | None:
    if model.sequential:
        return model.input_shape
    if len(model.inputs) == 1:
        layer = model.layer(model.inputs[0][0])
        return _input_shape(layer.config)
    return None


def _parse_functional(body: Any, class_name: str, source: str) -> ModelSpec:
    entries = _layer_list(body, source, f"{class_name}")
    spec = ModelSpec(body.get("name", "model"), "Functional",
                     [_parse_layer(e, source) for e in entries],
                     trainable=bool(body.get("trainable", True)))
    spec.inputs = _io_refs(body.get("input_layers"), source, spec.name)
    spec.outputs = _io_refs(body.get("output_layers"), source, spec.name)
    if not spec.inputs or not spec.outputs:
        raise ModelFormatError(f"{source}: model {spec.name!r} lists no input or output layers")
    return spec


def _io_refs(value: Any, source: str, model: str) -> list[Ref]:
    """`input_layers` / `output_layers`: list of triples, one bare triple, or a dict."""
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return []
    if len(value) == 3 and isinstance(value[0], str):
        value = [value]
    refs = []
    for item in value:
        if isinstance(item, dict):      # {"name": [..]} nested one level
            refs.extend(_io_refs(item, source, model))
        elif isinstance(item, (list, tuple)) and len(item) >= 3 and isinstance(item[0], str):
            refs.append((item[0], int(item[1]), int(item[2])))
        else:
            raise ModelFormatError(f"{source}: model {model!r} has an unreadable input/output "
                                   f"entry {item!r}")
    return refs


def _parse_layer(entry: Any, source: str) -> LayerSpec:
    if not isinstance(entry, dict) or "class_name" not in entry:
        raise ModelFormatError(f"{source}: a layer entry has no 'class_name': {str(entry)[:80]}")
    class_name = entry["class_name"]
    config = entry.get("config") or {}
    if not isinstance(config, dict):
        config = {}
    name = entry.get("name") or config.get("name") or class_name.lower()
    layer = LayerSpec(name, class_name, config,
                      calls=[_parse_call(c, source, name) for c in entry.get("inbound_nodes", [])])
    layer.config.setdefault("name", name)
    layer.custom = _is_custom(entry)
    if class_name in MODEL_CLASSES and not layer.custom:
        layer.model = parse_model(entry, source)
        layer.model.name = name
    return layer


def _parse_call(call: Any, source: str, layer: str) -> list[Ref]:
    """One inbound node, in any of the three dialects -> the tensor references it reads."""
    if isinstance(call, dict):                              # Keras 3
        refs: list[Ref] = []
        _collect_keras_tensors(call.get("args", []), refs)
        return refs
    if isinstance(call, list):                              # Keras 1 / 2
        refs = []
        for item in call:
            if isinstance(item, (list, tuple)) and len(item) >= 3 and isinstance(item[0], str):
                refs.append((item[0], int(item[1]), int(item[2])))
            else:
                raise ModelFormatError(f"{source}: layer {layer!r} has an unreadable inbound "
                                       f"node entry {str(item)[:80]}")
        return refs
    raise ModelFormatError(f"{source}: layer {layer!r} has an unreadable inbound node "
                           f"{str(call)[:80]}")


def _collect_keras_tensors(value: Any, out: list[Ref]) -> None:
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            hist = value["config"]["keras_history"]
            out.append((hist[0], int(hist[1]), int(hist[2])))
            return
        for v in value.values():
            _collect_keras_tensors(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect_keras_tensors(v, out)


def _shape_from(value: Any) -> tuple | None:
    if not isinstance(value, (list, tuple)) or not value:
        return None
    return tuple(None if d is None else int(d) for d in value[1:])


def _input_shape(config: dict) -> tuple | None:
    """Input shape without the batch axis, from any of the spellings Keras used."""
    for key in ("batch_input_shape", "batch_shape"):
        if config.get(key) is not None:
            return _shape_from(config[key])
    for key in ("input_shape", "shape"):
        if config.get(key) is not None:
            return tuple(None if d is None else int(d) for d in config[key])
    build = config.get("build_config")
    if isinstance(build, dict) and build.get("input_shape") is not None:
        return _shape_from(build["input_shape"])
    return None


def _dtype(config: dict) -> str:
    dtype = config.get("dtype", "float32")
    if isinstance(dtype, dict):  # Keras 3 DTypePolicy
        dtype = (dtype.get("config") or {}).get("name", "float32")
    return str(dtype or "float32")


input_shape_of = _input_shape
dtype_of = _dtype
