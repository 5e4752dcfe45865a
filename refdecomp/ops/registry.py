"""The op registry: every graph op is declared once, as an `OpSpec`, in `refdecomp/ops/defs/`.

A spec holds every rule the passes need about its op, so no pass branches on op names:

========================  =====================================================================
rule                      used by
========================  =====================================================================
keras                     the reader: Keras class name -> `KerasLayer` (how its config and
                          weights are read in every Keras dialect)
shape                     shape inference (`refdecomp.reader.shapes.output_shape`)
reference                 the NumPy interpreter (`refdecomp.ops.reference.run_node`)
linear                    weighted ops: the value before the activation (recording looks at it)
lowering                  the Numba binding (`refdecomp.ops.lowering`; None: runs the reference)
weighted                  takes masks and recording; its output elements are the decomposition's
                          nodes (`Graph.weighted_nodes`)
channel_axis              weighted ops: the output axis of filters / units
scale_outputs             weighted ops: batch-norm folding (kernel and bias scaled per output)
macs                      multiply-accumulates per image (`refdecomp.interpreter.node_macs`)
liveness                  backtracking: live outputs -> live inputs (`decompose.backtrack`)
kept                      metrics: the kept map of the output from the input's (None: all kept)
used_weights              weighted ops, metrics: which kernel entries a module keeps
compaction                `refdecomp.ops.channels` rule: which channels may be dropped
export                    Keras export (`refdecomp.export`): the layer(s) giving the node's value
units                     auditing other tools' modules (`refdecomp.audit_modules`): how a map of
                          unit ids (-1: none) passes to the output, and whether a zero stays zero
                          (None: not followed)
========================  =====================================================================

`tests/test_op_contract.py` walks every registered op and checks each rule against the
reference on random inputs. docs/architecture.md says how to add an op.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # pragma: no cover
    import numpy as np

    from ..graph import Node


@dataclass(frozen=True)
class KerasLayer:
    """How one Keras layer class is read into the op.

    `normalise(layer, input shapes, weights by role, dialect) -> Lowered`; `roles(layer)` the
    (trainable, non-trainable) weight roles in the order Keras saves them; `expected(layer,
    input shapes, dialect)` the {role: shape or size} its config implies, checked before a
    stored weight is read; `keras2_only` refuses the name in Keras 3 files.
    """

    normalise: Callable[..., Any]
    roles: Callable[..., tuple[list[str], list[str]]] = lambda layer: ([], [])
    expected: Callable[..., dict] = lambda layer, shapes, dialect: {}
    keras2_only: bool = False
    n_inputs: int | None = 1          # None: two or more


def _no_macs(node: Node) -> int:
    return 0


@dataclass(frozen=True)
class OpSpec:
    """Everything refdecomp knows about one graph op (see the table in the module docstring).

    `attrs` and `weights` document the normalised attributes and weights (graph.py's table);
    `n_inputs` is the number of inputs (None: two or more)."""

    name: str
    attrs: str
    shape: Callable[..., tuple]
    reference: Callable[[Node, list], np.ndarray]
    liveness: Callable[..., list] | None
    export: Callable[..., str] | None
    compaction: Any
    weights: str = "-"
    keras: dict[str, KerasLayer] = field(default_factory=dict)
    n_inputs: int | None = 1
    kept: Callable[..., np.ndarray | None] | None = None
    lowering: str | None = None
    macs: Callable[[Node], int] = _no_macs
    weighted: bool = False
    linear: Callable[[Node, np.ndarray], np.ndarray] | None = None
    channel_axis: Callable[[Node], int] | None = None
    scale_outputs: Callable[..., dict] | None = None
    used_weights: Callable[..., np.ndarray] | None = None
    units: Callable[..., tuple | None] | None = None

    def __post_init__(self) -> None:
        if self.weighted and None in (self.linear, self.channel_axis, self.scale_outputs,
                                      self.used_weights):
            raise TypeError(f"op {self.name!r}: a weighted op needs linear, channel_axis, "
                            f"scale_outputs and used_weights rules")


_REGISTRY: dict[str, OpSpec] = {}
_KERAS: dict[str, tuple[OpSpec, KerasLayer]] = {}
_DEFINITIONS = "refdecomp.ops.defs"


def register(*specs: OpSpec) -> None:
    """Add op specs (called by the modules of `refdecomp.ops.defs` when they are imported)."""
    for s in specs:
        if s.name in _REGISTRY:
            raise TypeError(f"op {s.name!r} is registered twice")
        for cls in s.keras:
            if cls in _KERAS:
                raise TypeError(f"Keras class {cls!r} is read by two ops")
        _REGISTRY[s.name] = s
        for cls, reader in s.keras.items():
            _KERAS[cls] = (s, reader)


def _catalog() -> dict[str, OpSpec]:
    """The registry, filled on first use (the definitions import the passes' helpers, which
    themselves look ops up here: loading them lazily keeps imports acyclic)."""
    if not _REGISTRY:
        importlib.import_module(_DEFINITIONS)
    return _REGISTRY


def spec(op: str) -> OpSpec:
    """The spec of a registered op (KeyError if there is none)."""
    return _catalog()[op]


def is_op(op: str) -> bool:
    return op in _catalog()


def ops() -> list[OpSpec]:
    """Every registered op, in registration order."""
    return list(_catalog().values())


def weighted_ops() -> frozenset[str]:
    """Ops that take masks and recording (conv2d, dense, depthwise_conv2d)."""
    return frozenset(s.name for s in _catalog().values() if s.weighted)


def keras_layer(class_name: str) -> tuple[OpSpec, KerasLayer] | None:
    """(op spec, reader) of a Keras layer class, None if no op reads it."""
    _catalog()
    return _KERAS.get(class_name)


def keras_classes() -> list[str]:
    """Every Keras class the reader accepts, sorted."""
    _catalog()
    return sorted(_KERAS)
