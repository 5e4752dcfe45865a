"""refdecomp runs without TensorFlow or Keras: nothing under refdecomp/ or kernels/ (installed as
refdecomp.kernels) imports them.

The run-time check loads and runs models in a fresh interpreter that records every import
attempt: TensorFlow, Keras and tf_keras must neither be attempted (not even inside a
try/except) nor appear in sys.modules. The model files are written by Keras in this (parent)
process, which is why that part needs the Keras oracle; the static check does not.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = ("tensorflow", "keras", "tf_keras")

# Runs in the child: record import attempts, import every refdecomp module (kernels included),
# load each model given on the command line, predict, and report what was imported.
CHILD = rf"""
import importlib, importlib.abc, json, pkgutil, sys
FORBIDDEN = {set(FORBIDDEN)!r}
attempted = []

class Recorder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            attempted.append(name)
        return None  # never interferes: the normal finders do the import

sys.meta_path.insert(0, Recorder())

import numpy as np
import refdecomp, refdecomp.kernels
failed = {{}}
# refdecomp.kernels lives in its own folder (kernels/ of the checkout), so it is walked apart
for pkg in (refdecomp, refdecomp.kernels):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # reported, but another test's business
            failed[info.name] = repr(exc)

jobs = json.loads(sys.argv[1])
for job in jobs:
    model = refdecomp.load_model(job["path"], architecture=job["architecture"])
    np.save(job["out"], model.predict(np.load(job["x"])))

loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
print(json.dumps({{"attempted": attempted, "loaded": loaded, "failed": failed}}))
"""


def _python_files():
    for folder in ("refdecomp", "kernels"):
        yield from sorted((REPO / folder).rglob("*.py"))


#: The only library modules allowed to import Keras, and only inside functions that a user
#: calls explicitly: `refdecomp audit --against keras` and `refdecomp.keras_objects()` (for
#: Keras users loading exported modules).
OPT_IN = {"refdecomp/audit.py", "refdecomp/keras_objects.py"}


def _framework_imports(tree: ast.AST):
    """(line, name, at module level?) of every import of a forbidden framework, including
    `importlib.import_module("<framework>")` calls."""
    top_level = {id(n) for n in getattr(tree, "body", [])}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names = [str(node.args[0].value)]
        else:
            continue
        for name in names:
            if name.split(".")[0] in FORBIDDEN:
                yield node.lineno, name, id(node) in top_level


def test_no_tensorflow_import_statement_in_library():
    """No import of tensorflow / keras / tf_keras anywhere in the library, except lazily inside
    functions of the two opt-in modules (`OPT_IN`): those frameworks are oracles for tests/ and
    trainers in tools/ only."""
    offenders = []
    for path in _python_files():
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, name, top in _framework_imports(tree):
            if rel not in OPT_IN or top:
                offenders.append(f"{rel}:{line}: import {name}")
    assert not offenders, "library imports a forbidden framework:\n" + "\n".join(offenders)


def test_the_import_check_sees_lazy_and_importlib_imports():
    """The check above would catch both spellings (so it cannot pass vacuously)."""
    tree = ast.parse("import os\ndef f():\n    import keras\n"
                     "    importlib.import_module('tensorflow.keras')\n")
    assert [(n, top) for _, n, top in _framework_imports(tree)] == [
        ("keras", False), ("tensorflow.keras", False)]


def _tiny_cnn(K):
    """Conv / batch norm / pooling / dense: the ops a real run touches."""
    model = K.Sequential([
        K.Input(shape=(8, 8, 2)),
        K.layers.Conv2D(3, 3, padding="same", activation="relu"),
        K.layers.BatchNormalization(),
        K.layers.MaxPooling2D(2),
        K.layers.Conv2D(4, 3, strides=2, padding="same"),
        K.layers.GlobalAveragePooling2D(),
        K.layers.Dense(3, activation="softmax"),
    ])
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.uniform(0.2, 1.0, tuple(int(d) for d in v.shape)).astype(np.float32))
    return model


@pytest.mark.keras
def test_load_and_predict_in_fresh_interpreter_never_imports_tensorflow(keras3, tmp_path):
    model = _tiny_cnn(keras3)
    x = np.random.default_rng(1).standard_normal((4, 8, 8, 2)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    np.save(tmp_path / "x.npy", x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp_path / "model.h5")
        model.save(tmp_path / "model.keras")
        model.save_weights(tmp_path / "model.weights.h5")
    (tmp_path / "architecture.json").write_text(model.to_json())
    jobs = [
        dict(path=str(tmp_path / "model.h5"), architecture=None),
        dict(path=str(tmp_path / "model.keras"), architecture=None),
        dict(path=str(tmp_path / "model.weights.h5"),
             architecture=str(tmp_path / "architecture.json")),
    ]
    for i, job in enumerate(jobs):
        job.update(x=str(tmp_path / "x.npy"), out=str(tmp_path / f"y{i}.npy"))

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(jobs)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"child failed:\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["attempted"] == [], (
        f"refdecomp tried to import {report['attempted']} (modules that failed to import for "
        f"other reasons: {report['failed']})")
    assert report["loaded"] == [], f"forbidden modules in sys.modules: {report['loaded']}"
    # The child really ran the models: its predictions are Keras's.
    for job in jobs:
        got = np.load(job["out"])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6,
                                   err_msg=f"child prediction from {Path(job['path']).name}")
