"""The errors refdecomp raises: `RefdecompError` and its subclasses for bad input, and
`InternalError` for its own bugs.

Every `RefdecompError` message names the file, layer (name and class) or argument at fault,
says why, and, where there is one, what the user can do about it; the command line prints it
as one line (exit status 2). An `InternalError` is a broken invariant, whatever the input: it
is deliberately not a `RefdecompError`, so that code catching bad input (and the fuzz tests,
which accept only `RefdecompError`s) never takes a bug for one.
"""
from __future__ import annotations


class RefdecompError(Exception):
    """Base class of every error refdecomp raises on purpose."""


class ModelFormatError(RefdecompError):
    """The file is not a model file refdecomp can read (not HDF5/zip, truncated, Git-LFS pointer,
    Keras 1, weights-only without an architecture, ...)."""


class UnsupportedLayerError(RefdecompError):
    """A layer (or a whole model) that refdecomp refuses: unknown class, `Lambda` code, custom or
    subclassed models, options it does not implement."""


class DataError(RefdecompError):
    """Bad or missing data: datasets, labels, shapes that do not match the model."""


class ModuleFileError(RefdecompError):
    """A module file that cannot be read or does not match its source model."""


def describe_layer(name: str, keras_class: str) -> str:
    """Uniform way to name a layer in messages: `layer 'conv2d_1' (Conv2D)`."""
    return f"layer {name!r} ({keras_class})"


class LimitError(RefdecompError):
    """A declared size (a tensor, an archive member, a dataset file) exceeds a documented limit
    of `refdecomp.limits`; the message names the file, the tensor and the limit to raise."""


class OutputError(RefdecompError):
    """A result cannot be written where it was asked to go (a folder in the way, no space,
    no permission)."""


class InternalError(Exception):
    """A broken invariant inside refdecomp: a bug, not bad input. The command line prints it
    with its traceback and asks for it to be reported (exit status 70)."""
