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

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .. import limits
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
    model: ModelSpec | None = None
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


def load_json(text: str | bytes, source: str, what: str) -> Any:
    """Parse JSON text from a file, refusing text above `max_json_bytes`, nesting deeper than
    `max_json_depth` and invalid UTF-8, each with a ModelFormatError naming `what`."""
    lim = limits.current()
    limits.check_bytes(len(text), source, what, "max_json_bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFormatError(f"{source}: {what} is not UTF-8 text ({exc})") from None
    depth = _nesting(text)
    if depth > lim.max_json_depth:
        raise ModelFormatError(f"{source}: {what} nests {depth} levels deep, more than "
                               f"max_json_depth = {lim.max_json_depth} (refdecomp.limits); "
                               f"the file is damaged or hostile")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ModelFormatError(f"{source}: {what} is not valid JSON ({exc})") from None


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _nesting(text: str) -> int:
    """Deepest bracket nesting of JSON text, brackets inside strings ignored (no recursion;
    vectorised, since configs of long models are megabytes)."""
    import numpy as np

    code = np.frombuffer(_STRING.sub("", text).encode("utf-8", "surrogatepass"), np.uint8)
    step = np.isin(code, (ord("["), ord("{"))).astype(np.int64) - \
        np.isin(code, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def check_name(name: Any, source: str, what: str) -> str:
    """A layer or model name: a string that UTF-8 can encode (no lone surrogates), so that
    everything written later (module files, exports) can store it."""
    if not isinstance(name, str) or not name:
        raise ModelFormatError(f"{source}: {what} has the name {str(name)[:40]!r}, not a "
                               f"non-empty string")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ModelFormatError(f"{source}: {what} {name!r} holds characters that are not "
                               f"valid Unicode (lone surrogates); rename it") from None
    return name


#: What a wrongly typed config value raises while it is parsed (an int given as a string or a
#: list, a dict given as a list, null): turned into a ModelFormatError naming the entry.
CONFIG_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError)


def parse_model(cfg: Any, source: str) -> ModelSpec:
    """Parse a model entry `{"class_name": ..., "config": ...}` into a `ModelSpec`."""
    try:
        return _parse_model(cfg, source)
    except CONFIG_ERRORS as exc:
        raise ModelFormatError(f"{source}: the model config holds a value of the wrong type "
                               f"({type(exc).__name__}: {exc}); the file is damaged or not "
                               f"written by Keras") from None


def _parse_model(cfg: Any, source: str) -> ModelSpec:
    if not isinstance(cfg, dict) or "class_name" not in cfg:
        raise ModelFormatError(f"{source}: the model config is not a Keras model config "
                               f"(no 'class_name'); the file may be damaged")
    class_name = cfg["class_name"]
    _refuse_custom_model(cfg, source)
    body = cfg.get("config")
    if not isinstance(body, dict) and not (class_name == "Sequential" and
                                           isinstance(body, list)):
        raise ModelFormatError(f"{source}: model of class {class_name!r} has a 'config' that "
                               f"is not an object (got {type(body).__name__})")
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
        if not is_keras_module(module):
            return True
    return False


def is_keras_module(module: Any, extra: tuple[str, ...] = ()) -> bool:
    """`keras`, `tf_keras` or one of their submodules (`keras.layers`), not a lookalike such
    as `keras_payload`."""
    if not isinstance(module, str):
        return False
    return any(module == root or module.startswith(root + ".")
               for root in ("keras", "tf_keras", *extra))


def _layer_list(body: Any, source: str, what: str) -> list:
    layers = body if isinstance(body, list) else (body or {}).get("layers")
    if not isinstance(layers, list):
        raise ModelFormatError(f"{source}: {what} config has no list of layers; the file may "
                               f"be damaged or not a Keras model")
    return layers


def _parse_sequential(body: Any, source: str) -> ModelSpec:
    entries = _layer_list(body, source, "Sequential")
    meta = body if isinstance(body, dict) else {}
    spec = ModelSpec(check_name(meta.get("name", "sequential"), source, "a Sequential model"),
                     "Sequential", [],
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
    spec = ModelSpec(check_name(body.get("name", "model"), source, "a model"), "Functional",
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
            refs.append(_ref(item, source, f"model {model!r}"))
        else:
            raise ModelFormatError(f"{source}: model {model!r} has an unreadable input/output "
                                   f"entry {str(item)[:80]}")
    return refs


def _ref(item: Any, source: str, where: str) -> Ref:
    """(layer name, node index, tensor index) with both indices non-negative JSON integers."""
    name, node, index = item[0], item[1], item[2]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 31
               for v in (node, index)):
        raise ModelFormatError(f"{source}: {where} refers to tensor {str(list(item[:3]))[:80]}, "
                               f"whose node and tensor indices are not small non-negative "
                               f"integers")
    return (name, node, index)


def _parse_layer(entry: Any, source: str) -> LayerSpec:
    if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
        raise ModelFormatError(f"{source}: a layer entry has no 'class_name': {str(entry)[:80]}")
    class_name = entry["class_name"]
    config = entry.get("config") or {}
    if not isinstance(config, dict):
        raise ModelFormatError(f"{source}: layer entry of class {class_name!r} has a 'config' "
                               f"that is not an object (got {type(config).__name__})")
    name = check_name(entry.get("name") or config.get("name") or class_name.lower(), source,
                      f"a layer of class {class_name!r}")
    inbound = entry.get("inbound_nodes", [])
    if not isinstance(inbound, list):
        raise ModelFormatError(f"{source}: {describe_layer(name, class_name)}: inbound_nodes "
                               f"is not a list")
    try:
        calls = [_parse_call(c, source, name) for c in inbound]
    except CONFIG_ERRORS as exc:
        raise ModelFormatError(f"{source}: {describe_layer(name, class_name)}: an inbound node "
                               f"is malformed ({type(exc).__name__}: {exc})") from None
    layer = LayerSpec(name, class_name, config, calls=calls)
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
        _collect_keras_tensors(call.get("args", []), refs, source, layer)
        return refs
    if isinstance(call, list):                              # Keras 1 / 2
        refs = []
        for item in call:
            if isinstance(item, (list, tuple)) and len(item) >= 3 and isinstance(item[0], str):
                refs.append(_ref(item, source, f"layer {layer!r}"))
            else:
                raise ModelFormatError(f"{source}: layer {layer!r} has an unreadable inbound "
                                       f"node entry {str(item)[:80]}")
        return refs
    raise ModelFormatError(f"{source}: layer {layer!r} has an unreadable inbound node "
                           f"{str(call)[:80]}")


def _collect_keras_tensors(value: Any, out: list[Ref], source: str, layer: str) -> None:
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            hist = value["config"]["keras_history"]
            if not isinstance(hist, list) or len(hist) < 3 or not isinstance(hist[0], str):
                raise ValueError(f"keras_history {str(hist)[:60]} is not [name, node, tensor]")
            out.append(_ref(hist, source, f"layer {layer!r}"))
            return
        for v in value.values():
            _collect_keras_tensors(v, out, source, layer)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect_keras_tensors(v, out, source, layer)


#: Largest dimension a config may declare (what int32 indexing in the kernels can address).
MAX_DIM = (1 << 31) - 1


def _dim(d: Any) -> int | None:
    """One declared dimension: None (open) or an integer in [1, MAX_DIM]."""
    if d is None:
        return None
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_DIM:
        raise ValueError(f"dimension {str(d)[:40]} is not an integer in [1, {MAX_DIM}] or null")
    return d


def _dims(value: Any) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"shape {str(value)[:60]} is not a list")
    return tuple(_dim(d) for d in value)


def _shape_from(value: Any) -> tuple | None:
    if not isinstance(value, (list, tuple)) or not value:
        return None
    return _dims(value[1:])


def _input_shape(config: dict) -> tuple | None:
    """Input shape without the batch axis, from any of the spellings Keras used."""
    for key in ("batch_input_shape", "batch_shape"):
        if config.get(key) is not None:
            return _shape_from(config[key])
    for key in ("input_shape", "shape"):
        if config.get(key) is not None:
            return _dims(config[key])
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
