"""Weight arrays left in their HDF5 file until the layer that owns them is built, and the one
way to step into an HDF5 group (which refuses links to other files)."""
from __future__ import annotations

import numpy as np

from .. import limits
from ..errors import ModelFormatError


def member(group, key: str, source: str):
    """`group[key]`, refusing links to other files (an external link would make reading this
    file read another one)."""
    import h5py

    link = group.get(key, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise ModelFormatError(f"{source}: {group.name.rstrip('/')}/{key} is an external link "
                               f"to {link.filename!r}; refdecomp reads nothing outside the "
                               f"file it is given")
    return group[key]


class StoredArray:
    """A weight array still in the file: dtype and size are checked when it is found, the
    values are read only when the layer that owns it is built and its expected shape known
    (`layers.lower`), so a file cannot make refdecomp allocate what its layers do not use."""

    def __init__(self, dataset, source: str):
        import h5py

        if not isinstance(dataset, h5py.Dataset):
            raise ModelFormatError(f"{source}: {dataset.name!r} is a "
                                   f"{type(dataset).__name__} where a weight array was "
                                   f"expected; the file is damaged")
        self.dataset, self.source, self.name = dataset, source, dataset.name
        dtype = dataset.dtype
        if dtype.kind not in "fiub" or dtype.fields is not None or \
                h5py.check_dtype(ref=dtype) is not None or dtype.itemsize == 0:
            kind = "complex" if dtype.kind == "c" else str(dtype)
            raise ModelFormatError(f"{source}: weight {self.name!r} has dtype {kind}; weights "
                                   f"are real numbers (float or integer)")
        if dataset.shape is None:
            raise ModelFormatError(f"{source}: weight {self.name!r} is an empty (null) dataset")
        if dataset.external or getattr(dataset, "is_virtual", False):
            raise ModelFormatError(f"{source}: weight {self.name!r} stores its values in other "
                                   f"files (external or virtual dataset); refdecomp reads "
                                   f"nothing outside the file it is given")
        self.shape = tuple(int(d) for d in dataset.shape)
        self.dtype = dtype
        limits.elements(self.shape, source, f"weight {self.name!r}", dtype.itemsize)

    def read(self) -> np.ndarray:
        return _read(self.dataset, self.source)



def _read(dataset, source: str) -> np.ndarray:
    try:
        return np.asarray(dataset[()])
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelFormatError(f"{source}: cannot read weight {dataset.name!r} ({exc}); the "
                               f"file is damaged or truncated") from None
