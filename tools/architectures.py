"""Keras model builders for the trained weights in weights/ (tool side: imports Keras).

Every model takes raw pixel values 0..255 as float32 and carries its preprocessing as its
first layer (`Rescaling`, with per-channel scale/offset lists for standardisation), so the
saved file is all a user needs. Only plain layers are used: augmentation happens outside the
model, in tools/train.py.
"""
from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

ARCHITECTURES = ("resnet20", "resnet32", "resnet56", "small_cnn", "mobilenet_v2")


def _initializers(seed: int | None):
    """He-normal initialiser factory; with a seed, each call gets its own derived seed so
    builds are reproducible."""
    count = [0]

    def make():
        count[0] += 1
        return keras.initializers.HeNormal(seed=None if seed is None else seed * 1000 + count[0])

    return make


def preprocessing(mean: Sequence[float] | None, std: Sequence[float] | None, name="preprocess"):
    """`Rescaling` mapping 0..255 to 0..1, or to per-channel standard scores when mean/std
    (of the 0..1 pixels) are given: x * (1 / (255 std)) - mean / std."""
    if mean is None or std is None:
        return layers.Rescaling(1.0 / 255.0, name=name)
    scale = [1.0 / (255.0 * s) for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    return layers.Rescaling(scale=scale, offset=offset, name=name)


def resnet_v1(depth: int, input_shape, num_classes: int, *, batch_norm: bool = False,
              mean=None, std=None, seed: int | None = None) -> keras.Model:
    """ResNet v1 for CIFAR (He et al. 2016, the Keras example layout), depth = 6n + 2.

    conv3x3(16)+ReLU, then 3 stages of n blocks with 16/32/64 filters; each block is
    conv3x3-ReLU-conv3x3, Add with the shortcut (a strided 1x1 convolution where the shape
    changes), ReLU; then average pooling over the whole final map, Flatten, Dense softmax.
    Convolutions have biases. The final map is the input divided by 4: 8x8 for CIFAR's 32x32
    (AveragePooling2D(8), the Keras example's layer) and 16x16 for Tiny ImageNet's 64x64, the
    paper's ImageNet-200 variant of the same networks. `batch_norm=True` inserts
    BatchNormalization after every 3x3 convolution (before its ReLU / the Add); the paper's
    models have none.
    """
    if (depth - 2) % 6:
        raise ValueError(f"ResNet v1 depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    init = _initializers(seed)

    def conv(x, filters, kernel, strides, name):
        return layers.Conv2D(filters, kernel, strides=strides, padding="same",
                             kernel_initializer=init(), name=name)(x)

    def bn_relu(x, name, relu=True):
        if batch_norm:
            x = layers.BatchNormalization(name=name + "_bn")(x)
        return layers.Activation("relu", name=name + "_relu")(x) if relu else x

    inputs = keras.Input(shape=input_shape, name="image")
    x = preprocessing(mean, std)(inputs)
    x = bn_relu(conv(x, 16, 3, 1, "conv1"), "conv1")
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(n):
            p = f"stage{stage + 1}_block{block + 1}"
            strides = 2 if stage > 0 and block == 0 else 1
            y = bn_relu(conv(x, filters, 3, strides, p + "_conv1"), p + "_conv1")
            y = bn_relu(conv(y, filters, 3, 1, p + "_conv2"), p + "_conv2", relu=False)
            if strides != 1 or x.shape[-1] != filters:
                x = conv(x, filters, 1, strides, p + "_shortcut")
            x = layers.Add(name=p + "_add")([x, y])
            x = layers.Activation("relu", name=p + "_out")(x)
    x = layers.AveragePooling2D(pool_size=tuple(x.shape[1:3]), name="avg_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_initializer=init(),
                           name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}_v1{'_bn' if batch_norm else ''}")


def small_cnn(input_shape, num_classes: int, *, filters=(16, 32), dense: int = 64,
              mean=None, std=None, seed: int | None = None) -> keras.Model:
    """Small CNN for digits / MNIST / Fashion-MNIST: per filter count a conv3x3(same)+ReLU and
    a 2x2 max pool (skipped once the map is smaller than 4x4), then Flatten, Dense+ReLU,
    Dense softmax."""
    init = _initializers(seed)
    inputs = keras.Input(shape=input_shape, name="image")
    x = preprocessing(mean, std)(inputs)
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, padding="same", activation="relu", kernel_initializer=init(),
                          name=f"conv{i + 1}")(x)
        if x.shape[1] >= 4:
            x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense, activation="relu", kernel_initializer=init(), name="dense1")(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_initializer=init(),
                           name="predictions")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


#: MobileNetV2's inverted residual stages for 32x32 inputs: (expansion t, channels c,
#: blocks n, stride s of the first block), the ImageNet table with the first two strides 1
MOBILENET_V2_CIFAR = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2(input_shape, num_classes: int, *, width: float = 1.0, mean=None, std=None,
                 seed: int | None = None) -> keras.Model:
    """MobileNetV2 (Sandler et al. 2018) for CIFAR-sized inputs: conv3x3(32)+BN+ReLU6, then
    inverted residual blocks (1x1 expansion + BN + ReLU6, depthwise 3x3 + BN + ReLU6, linear
    1x1 bottleneck + BN, Add where input and output shapes agree), conv1x1(1280)+BN+ReLU6,
    global average pooling, Dense softmax. `width` scales every channel count."""
    init = _initializers(seed)

    def ch(c: int) -> int:
        return max(8, int(c * width + 4) // 8 * 8)

    def conv_bn(x, filters, kernel, strides, name, relu6=True):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                          kernel_initializer=init(), name=name)(x)
        x = layers.BatchNormalization(name=name + "_bn")(x)
        return layers.ReLU(6.0, name=name + "_relu")(x) if relu6 else x

    inputs = keras.Input(shape=input_shape, name="image")
    x = conv_bn(preprocessing(mean, std)(inputs), ch(32), 3, 1, "stem")
    for stage, (t, c, n, s) in enumerate(MOBILENET_V2_CIFAR):
        for block in range(n):
            p = f"stage{stage + 1}_block{block + 1}"
            strides = s if block == 0 else 1
            y = conv_bn(x, x.shape[-1] * t, 1, 1, p + "_expand") if t != 1 else x
            y = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                                       depthwise_initializer=init(), name=p + "_depthwise")(y)
            y = layers.BatchNormalization(name=p + "_depthwise_bn")(y)
            y = layers.ReLU(6.0, name=p + "_depthwise_relu")(y)
            y = conv_bn(y, ch(c), 1, 1, p + "_project", relu6=False)
            x = layers.Add(name=p + "_add")([x, y]) if strides == 1 and \
                x.shape[-1] == ch(c) else y
    x = conv_bn(x, 1280 if width <= 1 else ch(1280), 1, 1, "head")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_initializer=init(),
                           name="predictions")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v2")


def build(architecture: str, input_shape, num_classes: int, *, batch_norm=False, mean=None,
          std=None, seed=None, filters=(16, 32), dense=64) -> keras.Model:
    """Builder by name (one of ARCHITECTURES)."""
    if architecture.startswith("resnet"):
        return resnet_v1(int(architecture[6:]), input_shape, num_classes,
                         batch_norm=batch_norm, mean=mean, std=std, seed=seed)
    if architecture == "small_cnn":
        return small_cnn(input_shape, num_classes, filters=tuple(filters), dense=dense,
                         mean=mean, std=std, seed=seed)
    if architecture == "mobilenet_v2":
        return mobilenet_v2(input_shape, num_classes, mean=mean, std=std, seed=seed)
    raise ValueError(f"unknown architecture {architecture!r}; one of {ARCHITECTURES}")
