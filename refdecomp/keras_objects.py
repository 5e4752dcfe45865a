"""The Keras-side objects exported files need: the `refdecomp>NodeMask` and
`refdecomp>ChannelLogSumExp` layers.

Only Keras users call this; the library never imports Keras. `keras_objects()` imports Keras 3
(`keras`) or Keras 2 (`tf_keras`) on demand and returns the custom objects to pass to
`load_model(path, custom_objects=refdecomp.keras_objects())`.
"""
from __future__ import annotations

import functools
import importlib
import os
from typing import Any

from .errors import RefdecompError

BACKENDS = ("keras", "tf_keras")


def keras_objects(backend: str | None = None) -> dict[str, Any]:
    """{"NodeMask": ..., "ChannelLogSumExp": ...} layer classes for Keras 3 (``backend="keras"``)
    or tf_keras (``"tf_keras"``).

    Without `backend`: tf_keras when TensorFlow is told to use it (``TF_USE_LEGACY_KERAS=1``),
    else Keras 3 when installed, else tf_keras.
    """
    chosen = _choose_backend(backend)
    return {"NodeMask": node_mask_class(chosen), "ChannelLogSumExp": channel_class(chosen)}


def _choose_backend(backend: str | None) -> str:
    if backend is not None:
        if backend not in BACKENDS:
            raise RefdecompError(f"keras_objects(backend={backend!r}): choose one of {BACKENDS}")
        return backend
    if os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes"):
        order = ("tf_keras", "keras")
    else:
        order = ("keras", "tf_keras")
    for name in order:
        if _major_version(name) is not None:
            return name
    raise RefdecompError("keras_objects(): neither Keras 3 (`pip install keras`) nor tf_keras "
                         "is installed; they are only needed to load exported files in Keras")


def _major_version(name: str) -> int | None:
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    major = int(str(getattr(module, "__version__", "0")).split(".")[0])
    if name == "keras" and major < 3:  # Keras 2 under the name `keras` is tf.keras' dialect
        return None
    return major


@functools.cache
def node_mask_class(backend: str) -> type:
    """Build (once per backend) and register the NodeMask layer class."""
    if backend == "keras":
        keras = importlib.import_module("keras")
        base, register = keras.layers.Layer, keras.saving.register_keras_serializable

        def multiply(x, mask):
            return x * keras.ops.cast(mask, x.dtype)
    elif backend == "tf_keras":
        tf_keras = importlib.import_module("tf_keras")
        tf = importlib.import_module("tensorflow")
        base, register = tf_keras.layers.Layer, tf_keras.saving.register_keras_serializable

        def multiply(x, mask):
            return x * tf.cast(mask, x.dtype)
    else:
        raise RefdecompError(f"node_mask_class({backend!r}): choose one of {BACKENDS}")

    class NodeMask(base):
        """Multiply the input by a constant 0/1 mask (a non-trainable weight of its shape).

        Written by refdecomp after a conv2d / dense layer of a module: 1 keeps a node, 0 forces
        it to zero after the layer's activation.
        """

        def __init__(self, mask_shape, **kwargs):
            kwargs["trainable"] = False
            super().__init__(**kwargs)
            self.mask_shape = tuple(int(d) for d in mask_shape)

        def build(self, input_shape):
            self.mask = self.add_weight(name="mask", shape=self.mask_shape,
                                        initializer="ones", trainable=False)
            self.built = True

        def call(self, inputs):
            return multiply(inputs, self.mask)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            config = super().get_config()
            config["mask_shape"] = list(self.mask_shape)
            return config

    NodeMask.__module__ = __name__
    return register(package="refdecomp", name="NodeMask")(NodeMask)


@functools.cache
def channel_class(backend: str) -> type:
    """Build (once per backend) and register the ChannelLogSumExp layer class."""
    if backend == "keras":
        keras = importlib.import_module("keras")
        base, register = keras.layers.Layer, keras.saving.register_keras_serializable
        ops = keras.ops
        concat, logsumexp = ops.concatenate, ops.logsumexp
    elif backend == "tf_keras":
        tf_keras = importlib.import_module("tf_keras")
        tf = importlib.import_module("tensorflow")
        base, register = tf_keras.layers.Layer, tf_keras.saving.register_keras_serializable
        concat, logsumexp = tf.concat, tf.reduce_logsumexp
    else:
        raise RefdecompError(f"channel_class({backend!r}): choose one of {BACKENDS}")

    class ChannelLogSumExp(base):
        """(batch, N) logits -> (batch, 2) [z_c, log(sum_{k != c} exp z_k)].

        Written by refdecomp after the head of a module with "logsumexp" channeling.
        """

        def __init__(self, class_index, **kwargs):
            super().__init__(**kwargs)
            self.class_index = int(class_index)

        def call(self, inputs):
            c = self.class_index
            others = concat([inputs[:, :c], inputs[:, c + 1:]], axis=-1)
            return concat([inputs[:, c:c + 1], logsumexp(others, axis=-1, keepdims=True)],
                          axis=-1)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], 2)

        def get_config(self):
            config = super().get_config()
            config["class_index"] = self.class_index
            return config

    ChannelLogSumExp.__module__ = __name__
    return register(package="refdecomp", name="ChannelLogSumExp")(ChannelLogSumExp)
