"""The op definitions: importing this package registers every op (`refdecomp.ops.registry`).

One module per op or small family of ops; each declares its `OpSpec`s and the rules only it
needs. Adding an op is adding a module here and its import below (docs/architecture.md)."""
from . import (  # noqa: F401
    conv2d,
    dense,
    depthwise,
    elementwise,
    graph_ends,
    layout,
    merge,
    pooling,
    upsampling,
)
