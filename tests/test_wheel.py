"""The built wheel: one import name, and `refdecomp demo` from it outside any checkout.

The wheel is built from a copy of the project's packaged folders (so the checkout gets no
build/ or egg-info), installed into a fresh virtual environment that sees this interpreter's
dependencies (numpy, numba, h5py, scikit-learn) through a .pth file but not this checkout, and
the demo runs there from an empty folder on a subset of the digits.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: what the wheel is built from (pyproject.toml's packages and their package-dir mapping)
SOURCES = ("pyproject.toml", "README.md", "refdecomp", "kernels", "weights")


def _top_level_names(wheel: Path) -> set[str]:
    """Import names a wheel installs: its top-level folders and modules, metadata aside."""
    names = set()
    for entry in zipfile.ZipFile(wheel).namelist():
        top = entry.split("/")[0]
        if not top.endswith((".dist-info", ".data")):
            names.add(top.removesuffix(".py"))
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        else:
            shutil.copy(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "--disable-pip-version-check", str(src),
                        "-w", str(dist)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (built,) = dist.glob("refdecomp-*.whl")
    return built


def test_wheel_installs_only_the_refdecomp_import_name(wheel):
    assert _top_level_names(wheel) == {"refdecomp"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "refdecomp/kernels/conv.py" in names and "refdecomp/windows.py" in names
    # the demo's default model ships; the other trained models do not
    assert [n for n in names if n.endswith(".h5")] == ["refdecomp/weights/digits_cnn.h5"]


def test_the_oracle_sees_stray_top_level_names(tmp_path):
    """The check above would notice a second import name (so it cannot pass vacuously)."""
    fake = tmp_path / "x-1-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as z:
        for entry in ("refdecomp/__init__.py", "kernels/conv.py", "six.py", "x-1.dist-info/RECORD"):
            z.writestr(entry, "")
    assert _top_level_names(fake) == {"refdecomp", "kernels", "six"}


@pytest.mark.slow
def test_demo_runs_from_the_installed_wheel_outside_a_checkout(wheel, tmp_path):
    pytest.importorskip("sklearn")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    (site,) = venv.glob("lib/python3*/site-packages")
    # this interpreter's dependencies, never this checkout (not on that path: it is installed
    # editable here, through a finder that a plain path entry does not activate)
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "zz-test-deps.pth").write_text("\n".join(deps) + "\n")
    python = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                        "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "NUMBA_CACHE_DIR")}
    where = subprocess.run([str(python), "-c", "import refdecomp, refdecomp.kernels as k; "
                            "print(refdecomp.__file__); print(k.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-3000:]
    for line in where.stdout.split():
        assert Path(line).is_relative_to(site), f"imported from {line}, not from the wheel"

    r = subprocess.run([str(venv / "bin" / "refdecomp"), "demo", "--limit", "200", "--no-progress",
                        "--json", "--out", "out"], cwd=work, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    data = json.loads(r.stdout)
    assert 0.0 <= data["composed"]["top1"] <= data["composed"]["top5"] <= 1.0
    report = json.loads((work / "out" / "report.json").read_text())
    assert len(report["modules"]) == 10
    # the default model came from the installed package data
    title = (work / "out" / "report.md").read_text().splitlines()[0]
    assert title == f"# Decomposition of {site / 'refdecomp' / 'weights' / 'digits_cnn.h5'}", title
