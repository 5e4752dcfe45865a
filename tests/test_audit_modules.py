"""`refdecomp.audit_modules`: auditing module files made by other tools (and refdecomp's own
exports) against the model's real forward pass.

The oracle is a hand-made model whose every activation is worked out by hand below, with
modules made from it by zeroing known units (as the FSE'20 artifacts do: full Keras files, N
outputs). Every expected count in these tests follows from the numbers in `HAND_*`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import refdecomp
from refdecomp.audit_modules import (
    audit_modules,
    class_from_file_name,
    markdown_report,
    rank_by_margin,
    vote,
    write_audit_report,
)
from refdecomp.errors import DataError, RefdecompError
from refdecomp.export import export_keras
from refdecomp.graph import Graph, Node

REPO = Path(__file__).resolve().parent.parent

# -- the hand-made model (tools/audit_example.py, also the README's example) --------------------
sys.path.insert(0, str(REPO / "tools"))
from audit_example import (  # noqa: E402
    HAND_B1,
    HAND_B2,
    HAND_W1,
    HAND_W2,
    HAND_X,
    HAND_Y,
    hand_graph,
    hand_modules,
)


@pytest.fixture(scope="module")
def hand_files(tmp_path_factory):
    """The model and the three modules as plain Keras HDF5 files (written without Keras)."""
    d = tmp_path_factory.mktemp("hand")
    model = export_keras(hand_graph(), d / "model.h5")
    files = [export_keras(hand_graph(*w, name=f"module{c}"), d / f"module{c}.h5")
             for c, w in hand_modules().items()]
    return model, files


@pytest.fixture(scope="module")
def hand_audit(hand_files):
    model, files = hand_files
    return audit_modules(model, files, HAND_X, HAND_Y)


def by_class(result, set_index=0):
    return {m["class"]: m for m in result["sets"][set_index]["modules"]}


def layer(entry, name):
    return next(r for r in entry["layers"] if r["layer"] == name)


# -- weights and units ------------------------------------------------------------------------
def test_top_level_function(hand_files):
    model, files = hand_files
    r = refdecomp.audit_modules(model, files[:1], HAND_X, HAND_Y)
    assert r["sets"][0]["modules"][0]["class"] == 0


def test_model_reads_and_classes_come_from_file_names(hand_audit):
    assert hand_audit["model_top1"] == 1.0
    assert hand_audit["class_counts"] == [3, 2, 2]
    mods = by_class(hand_audit)
    assert sorted(mods) == [0, 1, 2]
    assert mods[1]["class_source"] == "file name 'module1.h5'"
    assert all(m["comparable"] and m["outputs"] == 3 for m in mods.values())


def test_weight_counts_by_hand(hand_audit):
    m = by_class(hand_audit)
    # module 0: W1 columns 1 and 2 hold 2 non-zeros each -> 4 zeroed, 8 unchanged (the
    # model's zeros stay zero); 2 biases zeroed; head row 2 (3 non-zeros) zeroed.
    assert layer(m[0], "hidden")["kernel"] == {"total": 12, "unchanged": 8, "zeroed": 4,
                                                "rewritten": 0, "nonzero": 2,
                                                "nonzero_model": 6}
    assert layer(m[0], "hidden")["bias"]["zeroed"] == 2
    assert layer(m[0], "out")["kernel"]["zeroed"] == 3
    assert layer(m[0], "out")["bias"] == {"total": 3, "unchanged": 3, "zeroed": 0,
                                           "rewritten": 0, "nonzero": 0, "nonzero_model": 0}
    # module 1: column 1 zeroed (2), bias 1 zeroed, W2[0, 0] 1.5 -> 3 rewritten.
    assert layer(m[1], "hidden")["kernel"]["zeroed"] == 2
    assert layer(m[1], "out")["kernel"] == {"total": 9, "unchanged": 8, "zeroed": 0,
                                             "rewritten": 1, "nonzero": 9, "nonzero_model": 9}
    # module 2: head column 0 (3 non-zeros) zeroed, hidden layer untouched.
    assert layer(m[2], "hidden")["kernel"]["unchanged"] == 12
    assert layer(m[2], "out")["kernel"]["zeroed"] == 3


def test_units_cut_off_by_hand(hand_audit):
    m = by_class(hand_audit)
    assert layer(m[0], "hidden")["units"] == {"total": 3, "cut_in": 2, "cut_out": 1,
                                               "removed": 1, "cut_off": 2}
    assert [(r["unit"], r["how"]) for r in m[0]["units"]["list"]] == [(1, "cut in"),
                                                                       (2, "removed")]
    assert layer(m[1], "hidden")["units"]["cut_in"] == 1
    assert m[2]["units"]["cut_off"] == 0


def test_removal_rule_checked_against_the_model(hand_audit):
    m = by_class(hand_audit)
    # Module 0 removed units 1 and 2, which no class-0 image activates: nothing flagged.
    assert m[0]["units"]["cut_off_although_active"] == 0
    unit1, unit2 = m[0]["units"]["list"]
    assert (unit1["active_own"], unit1["own_images"], unit1["active_other"],
            unit1["other_images"]) == (0, 3, 3, 4)  # images 3, 4 (class 1) and 6 (class 2)
    assert (unit2["active_own"], unit2["active_other"]) == (0, 2)  # images 5 and 6
    # Module 1 cut off its own class's detector: active on both class-1 images -> flagged,
    # listed first.
    assert m[1]["units"]["cut_off_although_active"] == 1
    first = m[1]["units"]["list"][0]
    assert (first["layer"], first["unit"], first["active_own"], first["own_images"],
            first["active_other"]) == ("hidden", 1, 2, 2, 1)


def test_flagged_units_come_first(tmp_path):
    """Cutting off an inactive unit and an active one: the active one is listed first."""
    w1, b1 = HAND_W1.copy(), HAND_B1.copy()
    w1[:, [0, 2]] = 0
    b1[[0, 2]] = 0  # unit 0 is class 0's detector (active on 3 images), unit 2 is not
    model = export_keras(hand_graph(), tmp_path / "model.h5")
    path = export_keras(hand_graph(w1, b1), tmp_path / "m.h5")
    r = audit_modules(model, [path], HAND_X, HAND_Y, classes=[0])
    listed = r["sets"][0]["modules"][0]["units"]["list"]
    assert [(u["unit"], u["active_own"]) for u in listed] == [(0, 3), (2, 0)]
    assert r["sets"][0]["modules"][0]["class_source"] == "given"
    assert r["sets"][0]["composition"] is None  # one module: nothing to compose


# -- forward pass and composition ---------------------------------------------------------------
def test_binary_accuracy_and_difference_from_the_model(hand_audit):
    m = by_class(hand_audit)
    # Module 0 outputs z = 0 on images 3-6 (no hidden unit left): argmax ties at class 0, so
    # it says "0" on all 7 images -> 3/7; module 1 never says 1 -> 5/7; module 2 says 2 on
    # images 5 and 6 only -> 7/7.
    assert m[0]["binary_accuracy"] == pytest.approx(3 / 7)
    assert m[0]["says_class"] == 7
    assert m[1]["binary_accuracy"] == pytest.approx(5 / 7)
    assert m[2]["binary_accuracy"] == 1.0
    assert m[0]["vs_model"]["images_differing"] == 4
    assert m[0]["vs_model"]["decisions_differing"] == 4
    assert m[2]["vs_model"]["images_differing"] == 7  # logit 0 is 0 everywhere now
    assert m[2]["vs_model"]["decisions_differing"] == 0
    assert m[2]["vs_model"]["identical"] is False


def test_an_unchanged_module_is_identical(tmp_path):
    model = export_keras(hand_graph(), tmp_path / "model.h5")
    copy = export_keras(hand_graph(), tmp_path / "copy2.h5")
    r = audit_modules(model, [copy], HAND_X, HAND_Y)
    m = r["sets"][0]["modules"][0]
    assert m["vs_model"]["identical"] and m["vs_model"]["max_abs_difference"] == 0
    assert m["jaccard_set"] == 1.0 and m["units"]["cut_off"] == 0
    assert m["nonzero_weights"]["fraction"] == 1.0


def test_composition_by_hand(hand_audit):
    comp = hand_audit["sets"][0]["composition"]
    v, r = comp["voting"], comp["margin"]
    # Images 0-4: only module 0 votes (right for 0-2, wrong for 3-4). Images 5, 6: modules 0
    # and 2 vote; module 2's own-class probability (0.543, 0.472) beats module 0's (1/3).
    assert (v["one_vote"], v["several_votes"], v["no_vote"], v["ties"]) == (5, 2, 0, 0)
    assert v["top1"] == pytest.approx(5 / 7)
    # The FSE'20 scripts return the winner's position among the voters (1), not its class (2).
    assert v["top1_fse20_script"] == pytest.approx(3 / 7)
    # Margins: images 3, 4 tie at 0 between modules 0 and 1 (class 0 wins, wrongly).
    assert r["top1"] == pytest.approx(5 / 7) and r["ties"] == 2
    assert comp["model_top1"] == 1.0


def test_vote_on_hand_made_scores():
    classes = [0, 1, 2]
    votes = np.array([[0, 1, 0],    # one vote decides, whatever the scores
                      [1, 0, 1],    # two voters: the higher own score (module 2)
                      [0, 0, 0],    # no vote: the highest score of all (module 1)
                      [1, 1, 0],    # two voters tied at 0.6: the first (class 0), a tie
                      [0, 0, 0],    # no vote, tie between modules 0 and 2
                      [1, 0, 1]], bool)
    own = np.array([[.9, .1, .8], [.7, .9, .8], [.2, .4, .3], [.6, .6, .9], [.5, .1, .5],
                    [.3, .99, .2]])
    out = vote(votes, own, classes)
    assert out["pred"].tolist() == [1, 2, 1, 0, 0, 0]
    assert out["tie"].tolist() == [False, False, False, True, True, False]
    assert out["one_vote"].tolist() == [True, False, False, False, False, False]
    assert out["no_vote"].tolist() == [False, False, True, False, True, False]
    # the scripts' indexing: row 1 -> position 1 among voters (0, 2); row 5 -> position 0
    assert out["pred_fse20_script"].tolist() == [1, 1, 1, 0, 0, 0]
    # the classes of the columns are used, not their positions
    assert vote(votes, own, [5, 7, 9])["pred"].tolist() == [7, 9, 7, 5, 5, 5]


def test_margin_ranking_ties():
    out = rank_by_margin(np.array([[1., 2., 2.], [3., -1., 0.]]), [4, 5, 6])
    assert out["pred"].tolist() == [5, 4]
    assert out["tie"].tolist() == [True, False]


# -- Jaccard indices and sizes ----------------------------------------------------------------
def test_jaccard_and_nonzero_sizes_by_hand(hand_audit):
    m = by_class(hand_audit)
    # set Jaccard over the hidden kernel (12 weights): module 0 keeps 8, module 1 keeps 10.
    assert m[0]["jaccard_set"] == pytest.approx(8 / 12)
    assert m[1]["jaccard_set"] == pytest.approx(10 / 12)
    assert m[2]["jaccard_set"] == 1.0
    # The value-based formula: 5 distinct values {1, 0, .25, 1.5, -.5} are common to each
    # module and the model, lists of 21 kernel entries each: 5 / (21 + 21 - 5).
    assert all(e["jaccard_values"] == pytest.approx(5 / 37) for e in m.values())
    # Non-zero kernels and biases: the model 6 + 3 + 9 + 0 = 18; module 0: 2 + 1 + 6 = 9, of
    # which the head row of cut-in unit 1 (3 weights) can never change an output.
    nz = m[0]["nonzero_weights"]
    assert (nz["module"], nz["module_live"], nz["model"]) == (9, 6, 18)
    assert nz["fraction"] == pytest.approx(0.5) and nz["fraction_live"] == pytest.approx(1 / 3)
    assert (m[1]["nonzero_weights"]["module"], m[1]["nonzero_weights"]["module_live"]) == (15, 12)
    between = hand_audit["sets"][0]["between_modules"]
    # modules 0 and 1: 8 hidden weights present in both with equal values, 10 in either.
    assert between["jaccard_set"][0][1] == pytest.approx(8 / 10)


# -- convolutions -----------------------------------------------------------------------------
def conv_graph(kernel, bias, dense_kernel):
    return Graph([
        Node("image", "input", [], (4, 4, 1), {"dtype": "float32"}),
        Node("conv", "conv2d", ["image"], (4, 4, 2),
             {"strides": (1, 1), "padding": "same", "dilation": (1, 1),
              "activation": {"name": "relu"}, "data_format": "channels_last"},
             {"kernel": kernel, "bias": bias}),
        Node("pool", "max_pool2d", ["conv"], (2, 2, 2),
             {"pool": (2, 2), "strides": (2, 2), "padding": "valid",
              "data_format": "channels_last"}),
        Node("flatten", "flatten", ["pool"], (8,), {"data_format": "channels_last"}),
        Node("out", "dense", ["flatten"], (3,), {"activation": {"name": "softmax", "axis": -1}},
             {"kernel": dense_kernel, "bias": np.zeros(3, np.float32)}),
    ], ["image"], ["out"])


def test_conv_channel_removed_with_its_dense_rows(tmp_path):
    rng = np.random.default_rng(0)
    k = rng.uniform(0.1, 1, (3, 3, 1, 2)).astype(np.float32)
    b = np.array([0.1, -0.2], np.float32)
    d = rng.uniform(-1, 1, (8, 3)).astype(np.float32)
    model = export_keras(conv_graph(k, b, d), tmp_path / "model.h5")
    k2, b2, d2 = k.copy(), b.copy(), d.copy()
    k2[..., 1] = 0
    b2[1] = 0
    d2[1::2] = 0  # flatten of (2, 2, 2): channel 1 is every odd row
    path = export_keras(conv_graph(k2, b2, d2), tmp_path / "module2.h5")
    x = rng.uniform(0, 1, (6, 4, 4, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 2, 1, 0])
    m = audit_modules(model, [path], x, y)["sets"][0]["modules"][0]
    conv = layer(m, "conv")
    assert conv["kernel"]["zeroed"] == 9 and conv["bias"]["zeroed"] == 1
    assert conv["units"] == {"total": 2, "cut_in": 1, "cut_out": 1, "removed": 1, "cut_off": 1}
    assert layer(m, "out")["kernel"]["zeroed"] == 12
    # positive kernels on positive images: channel 1 (bias -0.2) is active on every image
    unit = m["units"]["list"][0]
    assert (unit["unit"], unit["active_own"], unit["active_other"]) == (1, 2, 4)
    assert m["units"]["cut_off_although_active"] == 1


# -- refdecomp's own exports, side by side --------------------------------------------------------
def test_refdecomp_exports_audit_like_their_module_set(tmp_path, hand_files):
    model_path, foreign = hand_files
    rng = np.random.default_rng(9)  # a seed whose model predicts every class (8, 22, 30)
    k = rng.normal(size=(3, 3, 1, 2)).astype(np.float32)
    d = rng.normal(size=(8, 3)).astype(np.float32)
    conv_model = export_keras(conv_graph(k, np.array([0.2, -0.3], np.float32), d),
                              tmp_path / "conv.h5")
    model = refdecomp.load_model(conv_model)
    x = rng.uniform(-1, 1, (60, 4, 4, 1)).astype(np.float32)
    y = np.argmax(model.predict(x), axis=1)
    ms = refdecomp.decompose(model, x, y, backtrack="input", tangling=2)
    files = [ms[c].export_keras(tmp_path / f"exported{c}.h5") for c in ms.classes]
    r = audit_modules(model, {"refdecomp": files}, x, y)
    ev = ms.evaluate(x, y)
    for entry, want in zip(r["sets"][0]["modules"], ev["modules"]):
        assert entry["kind"] == "refdecomp-export" and entry["outputs"] == 2
        assert entry["jaccard_set"] == pytest.approx(want["jaccard_set"])
        assert entry["binary_accuracy"] == pytest.approx(want["binary_accuracy"])
        head = layer(entry, "out")
        assert head["head"] == "channeled" and head["kernel"]["rewritten"] == 0
        assert entry["masked_nodes"]["masked"] == sum(int((m == 0).sum())
                                                      for m in ms[entry["class"]].masks.values())
    comp = r["sets"][0]["composition"]
    scores = ms.predict(x)
    assert comp["voting"]["top1"] >= 0 and comp["model_top1"] == 1.0
    # the audit's own-class scores are the module set's concerned probabilities
    assert comp["margin"]["top1"] == pytest.approx(
        np.mean(ms.classes[np.argmax(np.log(scores) - np.log1p(-scores), axis=1)] == y),
        abs=1 / len(y))


def test_two_sets_side_by_side_in_one_table(tmp_path, hand_files):
    model_path, files = hand_files
    r = audit_modules(model_path, {"fse20-style": files, "again": files[:2]}, HAND_X, HAND_Y)
    assert [s["name"] for s in r["sets"]] == ["fse20-style", "again"]
    text = markdown_report(r)
    table = text.split("\n\n")[2]
    assert table.count("fse20-style") == 3 and table.count("again") == 2
    paths = write_audit_report(r, tmp_path / "report")
    data = json.loads(paths["json"].read_text())
    assert data["sets"][1]["modules"][1]["units"]["cut_off_although_active"] == 1
    assert "Produced by" in paths["markdown"].read_text()


# -- bad input ----------------------------------------------------------------------------------
def test_architecture_mismatch_is_reported_not_compared(tmp_path, hand_files):
    model_path, _ = hand_files
    other = export_keras(conv_graph(np.ones((3, 3, 1, 2), np.float32), np.zeros(2, np.float32),
                                    np.ones((8, 3), np.float32)), tmp_path / "module1.h5")
    with pytest.raises(DataError, match="not a module of this model"):
        # the conv model takes 4x4 images
        audit_modules(model_path, [other], HAND_X, HAND_Y)
    deeper = Graph([*hand_graph().nodes[:3],
                    Node("hidden2", "dense", ["hidden"], (3,), {"activation": {"name": "relu"}},
                         {"kernel": np.eye(3, dtype=np.float32),
                          "bias": np.zeros(3, np.float32)}),
                    Node("out", "dense", ["hidden2"], (3,),
                         {"activation": {"name": "softmax", "axis": -1}},
                         {"kernel": HAND_W2, "bias": HAND_B2})], ["image"], ["out"])
    path = export_keras(deeper, tmp_path / "deeper0.h5")
    m = audit_modules(model_path, [path], HAND_X, HAND_Y)["sets"][0]["modules"][0]
    assert not m["comparable"] and "3 layers with weights" in m["mismatch"]
    assert m["vs_model"] is None and m["jaccard_set"] is None
    assert m["units"]["cut_off_although_active"] is None
    assert m["binary_accuracy"] == 1.0  # it still runs on its own


def test_bad_arguments(hand_files):
    model_path, files = hand_files
    assert class_from_file_name("decomposeDNNintoModules__MNIST-4_module0.h5") == 0
    assert class_from_file_name("module.h5") is None
    with pytest.raises(RefdecompError, match="no number in its name"):
        audit_modules(model_path, [Path(files[0]).with_name("module.h5")], HAND_X, HAND_Y)
    with pytest.raises(RefdecompError, match="2 classes for 3 module files"):
        audit_modules(model_path, files, HAND_X, HAND_Y, classes=[0, 1])
    with pytest.raises(DataError, match="two files for the same class"):
        audit_modules(model_path, files[:2], HAND_X, HAND_Y, classes=[1, 1])
    with pytest.raises(DataError, match="not one of the model's 3 classes"):
        audit_modules(model_path, files[:1], HAND_X, HAND_Y, classes=[7])
    with pytest.raises(DataError, match="labels"):
        audit_modules(model_path, files, HAND_X, HAND_Y[:3])


def test_command_line(tmp_path, capsys):
    from audit_example import write_example

    from refdecomp.cli import main

    model_path, *files, data = write_example(tmp_path / "example")
    argv = ["audit-modules", str(model_path), "--modules", *map(str, files), "--data", str(data),
            "--scale", "0.01", "--no-progress", "--report-dir", str(tmp_path / "r"),
            "--labels", "hand"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "module1.h5 -> 1 (file name 'module1.h5')" in out
    assert "cut off though active" in out and "FSE'20 script indexing" in out
    saved = json.loads((tmp_path / "r" / "audit-modules.json").read_text())
    assert saved["model_top1"] == 1.0 and "pixels x 0.01" in saved["data"]
    m0 = saved["sets"][0]["modules"][0]
    assert m0["hidden_kernels"]["zeroed"] == 4 and m0["units"]["cut_off"] == 2
    assert (tmp_path / "r" / "audit-modules.json").exists()
    assert main([*argv[:-2], "--classes", "0,1", "--json"]) == 2
    assert "2 classes for 3 module files" in capsys.readouterr().err


# -- no TensorFlow ----------------------------------------------------------------------------
CHILD = r"""
import importlib.abc, json, sys
attempted = []
class Recorder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            attempted.append(name)
        return None
sys.meta_path.insert(0, Recorder())
import numpy as np
from refdecomp.audit_modules import audit_modules
model, files, x, y = sys.argv[1], sys.argv[2:-2], np.load(sys.argv[-2]), np.load(sys.argv[-1])
r = audit_modules(model, files, x, y)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print(json.dumps({"attempted": attempted, "loaded": loaded, "result": r}))
"""


@pytest.mark.keras
def test_keras_written_modules_audited_without_tensorflow(tf_keras, tmp_path):
    """The hand model and modules written by Keras itself (the Keras 2 dialect the FSE'20 files
    use, modules made with set_weights), audited in a fresh interpreter that never imports
    TensorFlow or Keras, give the hand counts."""
    K = tf_keras
    model = K.Sequential([K.layers.Flatten(input_shape=(2, 2, 1), name="Input"),
                          K.layers.Dense(3, activation="relu", name="H"),
                          K.layers.Dense(3, activation="softmax", name="output")])
    model.layers[1].set_weights([HAND_W1, HAND_B1])
    model.layers[2].set_weights([HAND_W2, HAND_B2])
    model.save(tmp_path / "model.h5")
    files = []
    for c, (w1, b1, w2, b2) in hand_modules().items():
        model.layers[1].set_weights([w1, b1])
        model.layers[2].set_weights([w2, b2])
        model.save(tmp_path / f"module{c}.h5")
        files.append(str(tmp_path / f"module{c}.h5"))
    np.save(tmp_path / "x.npy", HAND_X)
    np.save(tmp_path / "y.npy", HAND_Y)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "model.h5"), *files,
                           str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["attempted"] == [] and report["loaded"] == []
    m = by_class(report["result"])
    assert layer(m[0], "H")["units"] == {"total": 3, "cut_in": 2, "cut_out": 1, "removed": 1,
                                          "cut_off": 2}
    assert m[1]["units"]["cut_off_although_active"] == 1
    assert m[0]["jaccard_set"] == pytest.approx(8 / 12)
    assert report["result"]["sets"][0]["composition"]["voting"]["top1"] == pytest.approx(5 / 7)


# -- the FSE'20 artifact files (real-world check) -----------------------------------------------
@pytest.mark.shared
def test_fse20_artifact_files(shared_dir):
    corpus = shared_dir / "keras-corpus"
    model = corpus / "decomposeDNNintoModules__MNIST-1_mnist.h5"
    module = corpus / "decomposeDNNintoModules__MNIST-4_module0.h5"
    if not model.exists() or not module.exists():
        pytest.skip("FSE'20 artifact files not in the corpus")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1 / 255, (64, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    m = audit_modules(model, [module], x, y)["sets"][0]["modules"][0]
    assert m["class"] == 0 and m["outputs"] == 10
    assert not m["comparable"] and "(H1, H2, H3, H4, output)" in m["mismatch"]
    # units whose incoming weights and bias were zeroed; their outgoing weights were kept
    units = {r["layer"]: r["units"] for r in m["layers"] if "units" in r}
    assert [units[h]["cut_in"] for h in ("H1", "H2", "H3", "H4")] == [17, 6, 1, 3]
    assert all(units[h]["cut_out"] == 0 for h in units)
