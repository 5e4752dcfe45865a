"""Shared test fixtures and the deterministic hypothesis profile.

Keras is only an oracle here: the `keras3` and `tf_keras` fixtures import it lazily and skip the
test (with the reason) where it is not installed. `shared_dir` is ../shared relative to the repo
root (real data and the Keras corpus); tests that need it skip when it is absent.

Real datasets are found where the library finds them, through ``$REFDECOMP_DATA`` (the
library searches no machine-specific folder): as `tools/bootstrap.sh test` does, it is set
to ../shared/data when that folder exists and the variable is unset. `SHARED_DATA` is that
folder, for the tests that read real data.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"
if not os.environ.get("REFDECOMP_DATA") and (SHARED_DIR / "data").is_dir():
    os.environ["REFDECOMP_DATA"] = str(SHARED_DIR / "data")
SHARED_DATA = Path(os.environ.get("REFDECOMP_DATA") or SHARED_DIR / "data")

# Deterministic by default so CI runs are reproducible; `HYPOTHESIS_PROFILE=explore` searches
# with fresh randomness (and more examples) when hunting for bugs locally.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "explore",
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: what TensorFlow says when its CPU kernels cannot run an op in this form on this CPU (NCHW
#: convolution and pooling run only through oneDNN, which it enables only on some CPUs)
_TF_CANNOT_RUN_HERE = re.compile(r"only supports (the )?NHWC")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test whose TensorFlow oracle cannot run on this CPU is skipped with TensorFlow's
    reason, never failed: the oracle is missing, not the code under test wrong."""
    try:
        return (yield)
    except Exception as exc:
        if type(exc).__module__.startswith("tensorflow") or "tensorflow" in repr(type(exc)):
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))      # drop terminal colours
            found = _TF_CANNOT_RUN_HERE.search(text)
            if found:
                line = next(ln for ln in text.splitlines() if found.group(0) in ln)
                pytest.skip(f"TensorFlow cannot run this oracle on this CPU: {line.strip()}")
        raise


def _quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter before it is first imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@pytest.fixture(scope="session")
def keras3():
    """The Keras 3 module (TensorFlow backend), or skip."""
    _quiet_tensorflow()
    keras = pytest.importorskip("keras", reason="Keras 3 oracle not installed")
    if not keras.__version__.startswith("3."):
        pytest.skip(f"the keras3 oracle needs Keras 3, found {keras.__version__}")
    return keras


@pytest.fixture(scope="session")
def tf_keras():
    """The tf_keras module (the Keras 2 dialect), or skip."""
    _quiet_tensorflow()
    return pytest.importorskip("tf_keras", reason="tf_keras (Keras 2 dialect oracle) not installed")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (real data, Keras corpus), or skip."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} is absent (real data and Keras corpus live there)")
    return SHARED_DIR
