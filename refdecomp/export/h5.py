"""The HDF5 file of an export: tf.keras 2 legacy layout, read by Keras 3 and tf_keras."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from .._version import __version__
from ..graph import Graph

#: The Keras dialect of the written config and weight layout (tf.keras 2 HDF5 format).
KERAS_DIALECT_VERSION = "2.21.0"


def write_h5(tmp: Path, config: dict, layers: list, graph: Graph) -> None:
    """The legacy HDF5 model file: config and provenance attributes, then each layer's weights
    in `layers` order (Keras loads them by position)."""
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
