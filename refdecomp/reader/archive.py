"""`.keras` zip archives (Keras 3, and tf.keras 2.13+): `config.json`, `metadata.json` and
`model.weights.h5` (weights in the Keras 3 layout, see `weights.py`)."""
from __future__ import annotations

import io
import json
import zipfile

from ..errors import ModelFormatError
from .hdf5 import Contents
from .weights import assign_v3


def read_archive(path: str, source: str) -> Contents:
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names:
                raise ModelFormatError(f"{source}: this zip file has no config.json, so it is not "
                                       f"a .keras model archive (members: "
                                       f"{', '.join(sorted(names)[:6])})")
            config = json.loads(z.read("config.json"))
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
            if "model.weights.h5" not in names:
                raise ModelFormatError(f"{source}: the archive has no model.weights.h5 (members: "
                                       f"{', '.join(sorted(names))}); refdecomp reads archives "
                                       f"with HDF5 weights")
            weights = z.read("model.weights.h5")
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as exc:
        raise ModelFormatError(f"{source}: the .keras archive cannot be read ({exc}); it is "
                               f"probably truncated or damaged") from None
    except ValueError as exc:
        raise ModelFormatError(f"{source}: config.json / metadata.json is not valid JSON "
                               f"({exc})") from None

    def assign(model) -> None:
        import h5py

        try:
            f = h5py.File(io.BytesIO(weights), "r")
        except OSError as exc:
            raise ModelFormatError(f"{source}: model.weights.h5 inside the archive cannot be "
                                   f"opened ({exc}); the archive is damaged") from None
        with f:
            assign_v3(model, f, source)

    return Contents(config, meta.get("keras_version"), None, "keras", assign)
