"""tools/bootstrap.sh and tools/fetch_pip.py, the parts that can be checked in a second.

Installing the project takes minutes, so a full run is not a test here (README, Quick start,
says how idempotence was checked); what is tested: the interpreter checks refuse before
anything is created, and fetch_pip against a local index written here (relative file
addresses, as mirrors give them; the sha256 check; one-line errors).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import fetch_pip  # noqa: E402


def _project_copy(tmp_path: Path) -> Path:
    (tmp_path / "proj" / "tools").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "bootstrap.sh", tmp_path / "proj" / "tools")
    return tmp_path / "proj"


def _run(proj: Path, env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    return subprocess.run(["bash", "tools/bootstrap.sh", "demo"], cwd=proj, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_old_or_missing_interpreter_is_refused_before_anything_is_made(tmp_path):
    proj = _project_copy(tmp_path)
    old = tmp_path / "python-old"
    old.write_text("#!/bin/sh\n"
                   "case \"$*\" in *version_info*\\<*) exit 1;; *) echo 3.9.2;; esac\n")
    old.chmod(0o755)
    r = _run(proj, {"PYTHON": str(old)})
    assert r.returncode == 2 and "refdecomp needs 3.11 or newer" in r.stderr
    r = _run(proj, {"PYTHON": str(tmp_path / "no-such-python")})
    assert r.returncode == 2 and "set PYTHON=" in r.stderr
    assert not (proj / ".venv").exists()


def _index(tmp_path: Path, payload: bytes, digest: str | None = None) -> str:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "pip-1.0-py3-none-any.whl").write_bytes(payload)
    (tmp_path / "pypi" / "pip").mkdir(parents=True)
    meta = {"urls": [
        {"packagetype": "sdist", "url": "../../files/pip-1.0.tar.gz", "filename": "pip-1.0.tar.gz",
         "digests": {"sha256": "0" * 64}},
        {"packagetype": "bdist_wheel", "url": "../../files/pip-1.0-py3-none-any.whl",
         "filename": "pip-1.0-py3-none-any.whl",
         "digests": {"sha256": digest or hashlib.sha256(payload).hexdigest()}}]}
    (tmp_path / "pypi" / "pip" / "json").write_text(json.dumps(meta))
    return (tmp_path / "pypi" / "pip" / "json").as_uri()


def test_fetch_pip_resolves_relative_addresses_and_keeps_the_wheel_name(tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setattr(fetch_pip, "INDEX", _index(tmp_path, b"wheel bytes"))
    out = tmp_path / "out"
    out.mkdir()
    assert fetch_pip.main(str(out)) == 0
    written = out / "pip-1.0-py3-none-any.whl"
    assert written.read_bytes() == b"wheel bytes"
    assert capsys.readouterr().out.strip() == str(written)


def test_fetch_pip_refuses_a_wrong_digest_and_reports_network_errors(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setattr(fetch_pip, "INDEX", _index(tmp_path, b"tampered", "1" * 64))
    assert fetch_pip.main(str(tmp_path)) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not (tmp_path / "pip-1.0-py3-none-any.whl").exists()
    monkeypatch.setattr(fetch_pip, "INDEX", (tmp_path / "nowhere" / "json").as_uri())
    assert fetch_pip.main(str(tmp_path)) == 1
    assert "cannot fetch pip" in capsys.readouterr().err
