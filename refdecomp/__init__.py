"""refdecomp: decompose trained Keras CNNs into reusable, replaceable per-class modules.

A framework-free reference interpreter (NumPy + Numba) reads Keras files, computes what Keras
computes, and records which nodes each class activates, in one pass, for the decomposition of
Pan & Rajan, "Decomposing Convolutional Neural Networks into Reusable and Replaceable Modules"
(ICSE 2022). TensorFlow and Keras are never imported.
"""
from __future__ import annotations

import importlib.util

if importlib.util.find_spec(f"{__name__}.kernels") is None:
    # A checkout's kernels/ folder becomes refdecomp.kernels only through installation.
    raise ImportError(
        "refdecomp is not installed: its Numba kernels (the kernels/ folder of a checkout) are "
        "installed as refdecomp.kernels; install the checkout first (pip install -e . or "
        "bash tools/bootstrap.sh)")

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

__version__ = "0.1.0"

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

from . import limits  # noqa: E402
from .decompose import build_modules, decompose, observe  # noqa: E402
from .modules import load_modules  # noqa: E402
# The function (which imports Keras only when called) shadows its module's name on purpose.
from .keras_objects import keras_objects  # noqa: E402
from .audit_modules import audit_modules  # noqa: E402  (the function, like keras_objects)


def load_model(path, architecture=None, *, fold: bool = True):
    """Read a Keras model file (legacy HDF5, `.keras` archive, or weights-only file plus an
    `architecture`: a JSON config file or a full model file) into a `Model` that runs on
    refdecomp's own interpreter. Nothing in the file is executed."""
    from .interpreter import Model
    from .reader import read_graph

    return Model(read_graph(path, architecture=architecture), fold=fold)
