"""The op definitions: importing this package registers every op (`refdecomp.ops.registry`).

One module per op or small family of ops; each declares its `OpSpec`s and the rules only it
needs. Adding an op is adding a module here and its import below (docs/architecture.md)."""
from . import conv2d, dense, elementwise, graph_ends, layout, merge, pooling  # noqa: F401
