"""Write the hand-made model, three modules and data the audit tests use, for trying
`refdecomp audit-modules` (README, "Auditing modules made by other tools").

    python tools/audit_example.py out/audit-example
    refdecomp audit-modules out/audit-example/model.h5 --modules out/audit-example/module*.h5 \
        --data out/audit-example/hand.npz --scale 0.01

The model: 2x2 grey images flattened to pixels p0..p3, a hidden ReLU layer of three units
(unit k detects pixel k: weight 1, bias -0.5; pixel p3 adds 0.25 to every unit) and a softmax
head 2*I - 0.5 over three classes. The modules are full Keras files with N = 3 outputs, as the
FSE'20 artifacts ship them, each made by zeroing known weights (see `hand_modules`). Every
figure the audit reports on them is worked out by hand in tests/test_audit_modules.py.
The files are written with h5py alone (refdecomp.export), Keras is not needed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refdecomp.graph import Graph, Node  # noqa: E402

HAND_W1 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.25, 0.25, 0.25]], np.float32)
HAND_B1 = np.full(3, -0.5, np.float32)
HAND_W2 = (2 * np.eye(3) - 0.5).astype(np.float32)
HAND_B2 = np.zeros(3, np.float32)
# Pre-activations (unit 0, 1, 2):   img0 .5 -.5 -.5 | img1 .7 -.3 -.3 | img2 .5 -.4 -.4
# img3 -.5 .5 -.5 | img4 -.4 .6 -.4 | img5 -.5 -.5 .5 | img6 -.5 .5 .7   (active = > 0)
HAND_X = np.array([[1, 0, 0, 0], [1, 0, 0, .8], [.9, 0, 0, .4], [0, 1, 0, 0], [0, 1, 0, .4],
                   [0, 0, 1, 0], [0, 1, 1.2, 0]], np.float32).reshape(7, 2, 2, 1)
HAND_Y = np.array([0, 0, 0, 1, 1, 2, 2])


def hand_graph(w1=HAND_W1, b1=HAND_B1, w2=HAND_W2, b2=HAND_B2, name="hand") -> Graph:
    """The hand-made model (or a module of it, given other weights)."""
    nodes = [
        Node("image", "input", [], (2, 2, 1), {"dtype": "float32"}),
        Node("flatten", "flatten", ["image"], (4,), {"data_format": "channels_last"}),
        Node("hidden", "dense", ["flatten"], (3,), {"activation": {"name": "relu"}},
             {"kernel": np.array(w1, np.float32), "bias": np.array(b1, np.float32)}),
        Node("out", "dense", ["hidden"], (3,), {"activation": {"name": "softmax", "axis": -1}},
             {"kernel": np.array(w2, np.float32), "bias": np.array(b2, np.float32)}),
    ]
    return Graph(nodes, ["image"], ["out"], name=name)


def hand_modules() -> dict[int, tuple[np.ndarray, ...]]:
    """{class: (W1, b1, W2, b2)} of three modules (N outputs kept).

    module 0: hidden units 1 and 2 cut in (columns and biases zeroed), unit 2 also cut out
              (its row of the head zeroed): unit 1 "cut in", unit 2 "removed";
    module 1: its own class's unit 1 cut in (flagged: active on both class-1 images), and one
              head weight rewritten (W2[0, 0] = 3);
    module 2: head column 0 zeroed (no hidden unit touched).
    """
    w1, b1, w2 = HAND_W1.copy(), HAND_B1.copy(), HAND_W2.copy()
    w1[:, 1:] = 0
    b1[1:] = 0
    w2[2, :] = 0
    m0 = (w1, b1, w2, HAND_B2)
    w1, b1, w2 = HAND_W1.copy(), HAND_B1.copy(), HAND_W2.copy()
    w1[:, 1] = 0
    b1[1] = 0
    w2[0, 0] = 3.0
    m1 = (w1, b1, w2, HAND_B2)
    w2 = HAND_W2.copy()
    w2[:, 0] = 0
    m2 = (HAND_W1, HAND_B1, w2, HAND_B2)
    return {0: m0, 1: m1, 2: m2}


def write_example(folder: str | Path) -> list[Path]:
    """model.h5, module0-2.h5 and hand.npz (pixels x 100 as uint8: use --scale 0.01)."""
    from refdecomp.datasets import Dataset, save_npz
    from refdecomp.export import export_keras

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [export_keras(hand_graph(), folder / "model.h5")]
    paths += [export_keras(hand_graph(*w, name=f"module{c}"), folder / f"module{c}.h5")
              for c, w in hand_modules().items()]
    pixels = np.round(HAND_X * 100).astype(np.uint8)
    paths.append(save_npz(Dataset("hand", pixels, HAND_Y, pixels, HAND_Y, ("0", "1", "2")),
                          folder / "hand.npz"))
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="folder to write the model, modules and data into")
    for path in write_example(p.parse_args(argv).folder):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
