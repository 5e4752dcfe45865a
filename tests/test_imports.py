"""How refdecomp imports: every module on its own (no import cycle, whatever comes first), a
light `import refdecomp`, and the public names of the package."""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import pkgutil
import subprocess
import sys

import refdecomp
import refdecomp.kernels


def _module_names() -> list[str]:
    names = []
    for pkg in (refdecomp, refdecomp.kernels):  # kernels/ lives in its own folder
        names.append(pkg.__name__)
        names += [i.name for i in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
                  if not i.name.endswith("__main__")]
    return sorted(set(names))


#: Runs in a child: import each module named on the command line first, with every refdecomp
#: module forgotten before it, so that an import cycle shows whichever module starts it.
_EACH_FIRST = """
import json, sys
failed = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "refdecomp" or m.startswith("refdecomp.")]:
        del sys.modules[loaded]
    try:
        __import__(name)
    except Exception as exc:
        failed[name] = repr(exc)
print(json.dumps(failed))
"""


def test_every_module_imports_first_without_a_cycle():
    names = _module_names()
    assert "refdecomp.kernels.conv" in names and "refdecomp.decompose.update" in names
    r = subprocess.run([sys.executable, "-c", _EACH_FIRST, *names], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {}


#: what `import refdecomp` must not load: the compilers, HDF5, the file readers, the interpreter
#: and the module files load when a function needs them
HEAVY = ("numba", "h5py", "refdecomp.kernels", "refdecomp.reader", "refdecomp.interpreter",
         "refdecomp.modules", "refdecomp.loading", "refdecomp.compose")


def test_import_refdecomp_stays_light():
    code = ("import json, sys, refdecomp; print(json.dumps(sorted(m for m in sys.modules "
            f"if m in {HEAVY!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout) == []


def test_public_names():
    assert refdecomp.__version__ == importlib.metadata.version("refdecomp")
    from refdecomp.loading import load_model
    from refdecomp.modules import load_modules

    assert refdecomp.load_model is load_model and refdecomp.load_modules is load_modules
    for name in refdecomp.__all__:
        assert getattr(refdecomp, name) is not None, name
        assert name in dir(refdecomp)
    # the functions keep their names although submodules of the same names are imported
    importlib.import_module("refdecomp.audit_modules")
    importlib.import_module("refdecomp.decompose.update")
    assert callable(refdecomp.decompose) and callable(refdecomp.audit_modules)
    try:
        refdecomp.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("unknown attribute did not raise")
