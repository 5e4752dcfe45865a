"""Legacy HDF5 files: full models (`model.save("x.h5")`) and weights-only files
(`save_weights` to `.h5`, and Keras 3 `.weights.h5`).

A full-model file carries `model_config` (JSON) and `keras_version` / `backend` attributes at
the root and the weights under `model_weights`; a legacy weights-only file carries
`layer_names` at the root; a Keras 3 weights file has `layers` / `vars` groups and no
attributes. Keras 1 files (`keras_version` 1.x, or a weights file without `keras_version`) are
refused: their layouts and parameter names differ throughout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelFormatError
from .config import load_json
from .weights import assign_legacy, assign_v3, legacy_groups, member, text


@dataclass
class Contents:
    """What a model or weights file holds, before any layer is interpreted.

    `config` is the model entry (`{"class_name", "config"}`) or None for weights-only files;
    `assign(model_spec)` attaches this file's weights to a parsed model.
    """

    config: dict | None
    keras_version: str | None
    backend: str | None
    format: str
    assign: Any


def keras_major(version: str | None) -> int | None:
    if not version:
        return None
    try:
        return int(str(version).split(".")[0][:6])
    except ValueError:
        return None


def refuse_keras1(source: str, what: str) -> ModelFormatError:
    return ModelFormatError(
        f"{source}: {what} was written by Keras 1, whose file layout and layer parameters "
        f"differ from Keras 2 and 3; refdecomp reads Keras 2.0+ files. Load it with Keras 2.x "
        f"(which converts Keras 1 models) and save it again")


def open_hdf5(path: str, source: str):
    import h5py

    try:
        return h5py.File(path, "r")
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelFormatError(f"{source}: the HDF5 file cannot be opened ({exc}); it is "
                               f"probably truncated (an incomplete download or copy) or "
                               f"damaged") from None


def read_hdf5(f, source: str) -> Contents:
    """Classify an open HDF5 file and return its `Contents`."""
    attrs = f.attrs
    version = text(attrs["keras_version"], source, "the keras_version attribute") \
        if "keras_version" in attrs else None
    backend = text(attrs["backend"], source, "the backend attribute") \
        if "backend" in attrs else None
    if "model_config" in attrs:
        if keras_major(version) == 1:
            raise refuse_keras1(source, f"this model (keras_version {version})")
        raw = attrs["model_config"]
        if isinstance(raw, np.ndarray) and raw.shape == ():
            raw = raw[()]
        if not isinstance(raw, (str, bytes, np.bytes_)):
            raise ModelFormatError(f"{source}: the model_config attribute is not text (it is "
                                   f"{type(raw).__name__})")
        config = load_json(bytes(raw) if isinstance(raw, np.bytes_) else raw, source,
                           "the model_config attribute")
        if version is None and _looks_keras1(config):
            raise refuse_keras1(source, "this model (Keras 1 parameter names, no "
                                        "keras_version)")
        weights = member(f, "model_weights", source) if "model_weights" in f else f
        return Contents(config, version, backend, "hdf5",
                        lambda model: assign_legacy(model, legacy_groups(weights, source),
                                                    source))
    if "layer_names" in attrs:
        if version is None or keras_major(version) == 1:
            raise refuse_keras1(source, "this weights-only file (no keras_version attribute)"
                                if version is None else f"this weights-only file ({version})")
        return Contents(None, version, backend, "hdf5-weights",
                        lambda model: assign_legacy(model, legacy_groups(f, source), source))
    if "layers" in f or "_layer_checkpoint_dependencies" in f or \
            any(isinstance(k, str) and k.startswith("_layer_checkpoint_dependencies\\")
                for k in f):
        return Contents(None, None, None, "keras3-weights",
                        lambda model: assign_v3(model, f, source))
    raise ModelFormatError(
        f"{source}: this HDF5 file is not a Keras model or weights file (it has no "
        f"model_config, layer_names or layers group; top-level entries: "
        f"{', '.join(map(str, list(f.keys())[:6])) or 'none'})")


_KERAS1_KEYS = ("nb_filter", "output_dim", "border_mode", "dim_ordering", "subsample", "init")


def _looks_keras1(config: Any) -> bool:
    """Keras 1 layer parameter names (Keras 2 renamed every one of these)."""
    if isinstance(config, dict):
        return any(k in config for k in _KERAS1_KEYS) or \
            any(_looks_keras1(v) for v in config.values())
    if isinstance(config, list):
        return any(_looks_keras1(v) for v in config)
    return False
