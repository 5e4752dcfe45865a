"""Auditing: compare every layer's output of refdecomp's interpreter with an independent
computation on the same random inputs.

`against="keras"` loads the same file in Keras (Keras 3 for Keras 3 files, tf_keras for the
Keras 2 dialect) -- the only place outside the tests where Keras is imported, and only when the
user asks for it. `against="reference"` compares the Numba kernels with the NumPy reference
ops (`refdecomp.ops.reference`), which needs nothing but refdecomp. "auto" picks Keras when it
is installed.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np

from .errors import RefdecompError
from .interpreter import Model

TOLERANCE = 1e-5


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref| (0 when both are zero)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return float("inf")
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-30)
    return float(np.max(np.abs(ours - ref))) / scale if ref.size else 0.0


def random_inputs(graph, n: int, seed: int) -> list[np.ndarray]:
    """Uniform [0, 255) images for each graph input (models take raw pixel values)."""
    rng = np.random.default_rng(seed)
    return [(rng.random((n, *graph[name].shape)) * 255).astype(np.float32)
            for name in graph.inputs]


def _keras_layer_outputs(path: str, xs: list[np.ndarray], names: list[str],
                         architecture: str | None, dialect: int) -> dict[str, np.ndarray]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out
    if architecture:
        raise RefdecompError(f"audit of {path!r}: comparing a weights-only file with Keras is not "
                             "supported; use --against reference")
    if dialect == 2 and importlib.util.find_spec("tf_keras"):
        import tf_keras as keras  # noqa: F401  (Keras 2 dialect oracle)
    else:
        import keras  # noqa: F401
    model = keras.models.load_model(path, compile=False)
    layers = {layer.name: layer for layer in model.layers}
    wanted = [n for n in names if n in layers]
    probe = keras.Model(model.inputs, [layers[n].output for n in wanted])
    outs = probe.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    outs = outs if isinstance(outs, list) else [outs]
    return dict(zip(wanted, [np.asarray(o) for o in outs]))


def audit_model(model, path: str, *, against: str = "auto", n_images: int = 4, seed: int = 0,
                architecture: str | None = None) -> dict[str, Any]:
    """Per-layer relative errors of `model` (a refdecomp Model read from `path`)."""
    if n_images < 1:
        raise RefdecompError(f"argument --images {n_images}: give a number of images >= 1")
    if against == "auto" and architecture:
        against = "reference"  # Keras cannot load a weights-only file by itself
    if against == "auto":
        against = "keras" if importlib.util.find_spec("keras") else "reference"
    if against not in ("keras", "reference"):
        raise RefdecompError(f"argument against={against!r}: expected auto, keras or reference")
    graph = model.source_graph
    xs = random_inputs(graph, n_images, seed)
    names = [n.name for n in graph if n.op != "input"]
    ours = model.layer_outputs(xs if len(xs) > 1 else xs[0], names)
    if against == "keras":
        theirs = _keras_layer_outputs(path, xs, names, architecture,
                                      graph.meta.get("keras_major", 3))
    else:
        ref = Model(graph, fold=False, engine="reference")
        theirs = ref.layer_outputs(xs if len(xs) > 1 else xs[0], names)
    rows = []
    for node in graph:
        if node.name not in theirs:
            continue
        err = relative_error(ours[node.name], theirs[node.name])
        rows.append({"layer": node.name, "class": node.keras_class or node.op,
                     "shape": str((None, *node.shape)), "rel_error": err,
                     "ok": bool(err <= TOLERANCE)})
    final = [relative_error(o, theirs[name])
             for name, o in zip(graph.outputs, model.run(xs if len(xs) > 1 else xs[0]))
             if name in theirs]
    return {"model": path, "against": against, "images": n_images, "seed": seed,
            "tolerance": TOLERANCE, "layers": rows, "folded_output_errors": final,
            "ok": all(r["ok"] for r in rows) and all(e <= TOLERANCE for e in final)}
