"""The `refdecomp` command line and the scenario runners, end to end on the shipped digits CNN.

Oracles: the Python API computed independently in the test (composition by brute force over the
module set's scores), and invariants (replacing a module by itself changes nothing; an update
never removes a node).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import refdecomp
from refdecomp import metrics
from refdecomp.cli import main
from refdecomp.datasets import load_dataset
from refdecomp.scenarios.reuse import Pick, evaluate_replace, evaluate_reuse, scenario_data

ROOT = Path(__file__).resolve().parent.parent
DIGITS_MODEL = ROOT / "weights" / "digits_cnn.h5"

pytestmark = pytest.mark.skipif(not DIGITS_MODEL.exists(), reason="weights/digits_cnn.h5 missing")


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return load_dataset("digits")


@pytest.fixture(scope="module")
def module_set(digits):
    model = refdecomp.load_model(DIGITS_MODEL)
    return refdecomp.decompose(model, digits.x_train.astype(np.float32), digits.y_train,
                               backtrack="input", seed=0)


def test_demo_writes_modules_and_reports(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for name in ("modules.h5", "report.json", "report.md"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert report["command"].startswith("refdecomp demo")
    assert len(report["modules"]) == 10
    assert 0.0 <= data["composed"]["top1"] <= data["composed"]["top5"] <= 1.0
    # the saved modules give the composed accuracy the report states
    ms = refdecomp.load_modules(out / "modules.h5")
    ds = load_dataset("digits")
    scores = ms.predict(ds.x_test.astype(np.float32))
    assert metrics.top_k_accuracy(scores, ds.y_test, 1, ms.classes) == pytest.approx(
        report["composed"]["top1"])
    assert "| model" in (out / "report.md").read_text()


def test_inspect_json_counts_parameters(capsys):
    assert main(["inspect", str(DIGITS_MODEL), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    model = refdecomp.load_model(DIGITS_MODEL)
    assert data["parameters"] == sum(n.n_params() for n in model.source_graph)
    assert data["macs"] == model.macs()


def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope.h5"
    assert main(["inspect", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "nope.h5" in err and "Traceback" not in err
    assert main(["reuse", "--pick", "no-class-here", "--pick", "x:1@digits"]) == 2
    assert "MODULES_FILE:CLASS@DATASET" in capsys.readouterr().err


def test_missing_class_is_one_clear_line_and_exit_2(tmp_path, capsys, module_set):
    path = str(module_set.save(tmp_path / "m.h5"))
    for argv in (["export", path, "--class", "99", "--out", str(tmp_path / "x.h5")],
                 ["update", path, "--class", "99", "--unconcerned", "1@digits",
                  "--out", str(tmp_path / "u.h5")],
                 ["reuse", "--pick", f"{path}:0@digits", "--pick", f"{path}:99@digits"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "no module of class 99" in err and "Traceback" not in err, argv
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "u.h5").exists()


def test_console_script_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "refdecomp", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    for sub in ("inspect", "predict", "audit", "decompose", "evaluate", "reuse", "replace",
                "update", "export", "demo"):
        assert sub in proc.stdout


def test_reuse_matches_brute_force_composition(module_set, digits):
    picks = [Pick(module_set[3], digits, "3"), Pick(module_set[8], digits, "8")]
    res = evaluate_reuse(picks)
    x, y = scenario_data(picks)
    assert set(np.unique(y)) == {0, 1} and len(y) == int(np.isin(digits.y_test, [3, 8]).sum())
    full = module_set.predict(x.astype(np.float32))
    cols = full[:, [3, 8]]
    expected = float(np.mean(np.argmax(cols, axis=1) == y))
    assert res["MA"] == pytest.approx(expected)


def test_replacing_a_module_by_itself_changes_nothing(module_set, digits):
    res = evaluate_replace(module_set, module_set, [0, 5], digits.x_test, digits.y_test)
    for row in res["replaced"]:
        assert row["top1"] == pytest.approx(res["composed"]["top1"])
        assert row["top5"] == pytest.approx(res["composed"]["top5"])


def test_update_only_adds_nodes(module_set, digits):
    from refdecomp.decompose.update import update_module

    m = module_set[2]
    extra = digits.x_train[digits.y_train != 2][:50].astype(np.float32)
    u = update_module(m, extra)
    for name, mask in m.active.items():
        assert np.all(u.active[name] >= mask), name
    assert u.size()["nodes_kept"] >= m.size()["nodes_kept"]
    assert u.info["updated_with_images"] == 50


@pytest.mark.parametrize("argv, expected", [
    (["predict", str(DIGITS_MODEL), "--data", "digits", "--limit", "-5"], "--limit -5"),
    (["audit", str(DIGITS_MODEL), "--images", "0"], "--images 0"),
    (["replace", "--target", "t.h5", "--donor", "d.h5", "--data", "digits", "--classes", "a,b"],
     None),
])
def test_bad_numbers_are_refused_with_the_argument_named(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err
    if expected:
        assert expected in err


def test_replace_refuses_classes_missing_from_a_module_set(module_set, digits):
    from refdecomp import DataError

    with pytest.raises(DataError, match=r"classes \[42\]"):
        evaluate_replace(module_set, module_set, [42], digits.x_test, digits.y_test)


def test_reproduce_tool_names_missing_and_bad_arguments():
    tool = [sys.executable, str(ROOT / "tools" / "reproduce.py")]
    missing = subprocess.run([*tool, "table2", "--modules", "m.h5"], capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and "--data, --classes" in missing.stderr
    bad = subprocess.run([*tool, "table5", "--modules", "m.h5", "--data", "digits", "--modules2",
                          "m.h5", "--data2", "digits", "--pairs", "1-2"], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "--pairs" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("against", ["reference", pytest.param("keras", marks=pytest.mark.keras)])
def test_audit_compares_every_layer(against, capsys):
    if against == "keras":
        pytest.importorskip("keras")
    assert main(["audit", str(DIGITS_MODEL), "--against", against, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    model = refdecomp.load_model(DIGITS_MODEL)
    layers = [n.name for n in model.source_graph if n.op != "input"]
    assert [r["layer"] for r in result["layers"]] == layers
    assert result["ok"] and all(r["rel_error"] <= result["tolerance"] for r in result["layers"])
    assert result["folded_output_errors"] and max(result["folded_output_errors"]) <= 1e-5


def test_evaluate_command_reports_the_saved_modules(module_set, digits, tmp_path, capsys):
    path = module_set.save(tmp_path / "modules.h5")
    assert main(["evaluate", str(path), "--data", "digits", "--report-dir", str(tmp_path / "r"),
                 "--json", "--no-progress"]) == 0
    data = json.loads(capsys.readouterr().out)
    scores = module_set.predict(digits.x_test.astype(np.float32))
    assert data["composed"]["top1"] == pytest.approx(
        metrics.top_k_accuracy(scores, digits.y_test, 1, module_set.classes))
    assert data["model_file"].endswith("digits_cnn.h5")
    assert (tmp_path / "r" / "report.md").read_text().startswith("# Decomposition of ")


@pytest.mark.parametrize("error, status, traceback", [
    (refdecomp.InternalError("graph: node 'x' reads 'y' before it is produced"), 70, True),
    (refdecomp.DataError("labels: 3 labels for 4 images"), 2, False)])
def test_cli_reports_bugs_with_a_traceback_and_bad_input_in_one_line(monkeypatch, capsys, error,
                                                                     status, traceback):
    """A broken invariant (`InternalError`) is a bug: traceback, a request to report it, exit
    status 70. Bad input (`RefdecompError`) is one line naming what is wrong, exit status 2."""
    from refdecomp import cli

    def failing(args):
        raise error
    monkeypatch.setattr(cli, "cmd_inspect", failing)
    assert cli.main(["inspect", str(DIGITS_MODEL)]) == status
    err = capsys.readouterr().err
    assert ("Traceback" in err) is traceback
    assert ("bug in refdecomp" in err and "report" in err) is traceback
    if not traceback:
        assert err.strip() == f"refdecomp inspect: error: {error}"


def test_internal_error_is_not_a_user_error():
    """Code that catches bad input (`except RefdecompError`) never takes a bug for it."""
    assert not issubclass(refdecomp.InternalError, refdecomp.RefdecompError)
