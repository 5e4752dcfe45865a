"""refdecomp: decompose trained Keras CNNs into reusable, replaceable per-class modules.

A framework-free reference interpreter (NumPy + Numba) reads Keras files, computes what Keras
computes, and records which nodes each class activates, in one pass, for the decomposition of
Pan & Rajan, "Decomposing Convolutional Neural Networks into Reusable and Replaceable Modules"
(ICSE 2022). TensorFlow and Keras are never imported.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from . import limits
from ._version import __version__
from .audit_modules import audit_modules
from .decompose import build_modules, decompose, observe
from .errors import (
    DataError,
    InternalError,
    LimitError,
    ModelFormatError,
    ModuleFileError,
    OutputError,
    RefdecompError,
    UnsupportedLayerError,
)
from .keras_objects import keras_objects

if importlib.util.find_spec(f"{__name__}.kernels") is None:
    # A checkout's kernels/ folder becomes refdecomp.kernels only through installation.
    raise ImportError(
        "refdecomp is not installed: its Numba kernels (the kernels/ folder of a checkout) are "
        "installed as refdecomp.kernels; install the checkout first (pip install -e . or "
        "bash tools/bootstrap.sh)")

# decompose, audit_modules and keras_objects are bound here at import: each function shadows
# the submodule of the same name on purpose, and a submodule imported later would otherwise
# take the name. Their modules keep the reader, the interpreter and h5py out of their top-level
# imports so that `import refdecomp` stays light. The other public functions load on first use.
_LAZY = {"load_model": "loading", "load_modules": "modules"}

if TYPE_CHECKING:
    from .loading import load_model
    from .modules import load_modules

__all__ = [
    "__version__",
    "RefdecompError",
    "ModelFormatError",
    "UnsupportedLayerError",
    "DataError",
    "ModuleFileError",
    "LimitError",
    "OutputError",
    "InternalError",
    "limits",
    "load_model",
    "decompose",
    "observe",
    "build_modules",
    "load_modules",
    "keras_objects",
    "audit_modules",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
