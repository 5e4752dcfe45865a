"""`load_model`: a Keras model file into a `Model` on refdecomp's interpreter."""
from __future__ import annotations

from .interpreter import Model
from .reader import read_graph


def load_model(path, architecture=None, *, fold: bool = True) -> Model:
    """Read a Keras model file (legacy HDF5, `.keras` archive, or weights-only file plus an
    `architecture`: a JSON config file or a full model file) into a `Model` that runs on
    refdecomp's own interpreter. Nothing in the file is executed."""
    return Model(read_graph(path, architecture=architecture), fold=fold)
