"""Forward-pass throughput: refdecomp (with and without recording) vs Keras/TensorFlow `predict`.

Builds CIFAR-10 ResNet-20 v1 in Keras with random weights (the paper's variant without batch
norm, and the variant with batch norm and random moving statistics), or with `--model
mobilenet_v2` a depthwise-heavy MobileNetV2 for 32x32 images (`tools/architectures.py`, batch
norm with random moving statistics), saves it to .h5, loads that file with refdecomp, checks
both compute the same function, then times, in the same run:

* Keras `model.predict(x, batch_size)`;
* refdecomp `Model.predict(x, batch_size)`;
* refdecomp `Model.run` with a `Recorder` (n_classes * 2 groups, random group ids), recording
  bits and recording counts (`Recorder(..., counts=True)`); the counting overhead is printed as
  a ratio to bit recording measured in the same run.

With `--isa avx2 avx512 native` each instruction set runs in its own subprocess, with Numba
and TensorFlow's oneDNN held to it (`refdecomp.kernels.isa.ENVIRONMENTS`), on all cores and (unless
`--no-single-thread`) on one, and one table prints the ratios to TensorFlow per ISA, with the
fraction of the FMA peak refdecomp's predict reaches. The peak is nominal: clock x FMA pipes x
2 flops x float32 lanes of the ISA x threads (`fma_peak_gflops_per_thread`).

Usage: python tools/bench_forward.py [--model resnet20|mobilenet_v2] [--images 2048]
                                     [--batch-size 256] [--repeats 3] [--threads N]
                                     [--isa avx2 avx512 native]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from refdecomp import load_model  # noqa: E402
from refdecomp.interpreter import Recorder  # noqa: E402


def _best_interleaved(fns, repeats: int) -> list[float]:
    """Best wall time of each function over `repeats` rounds, the functions taking turns in
    every round so that a change in machine load affects all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


#: per model: (label, layer whose output is compared as the classifier's input features)
MODELS = {"resnet20": ("ResNet-20 v1", "flatten"), "mobilenet_v2": ("MobileNetV2", "avg_pool")}


def build_keras(model_name: str, batch_norm: bool, seed: int):
    import keras
    from architectures import mobilenet_v2, resnet_v1

    if model_name == "mobilenet_v2":
        model = mobilenet_v2((32, 32, 3), 10, seed=seed)
    else:
        model = resnet_v1(20, (32, 32, 3), 10, batch_norm=batch_norm, seed=seed)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = (w.numpy() for w in layer.weights)
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape),
                               rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 1.5, v.shape)])
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            k, b = layer.get_weights()
            layer.set_weights([k, rng.normal(0, 0.05, b.shape).astype(np.float32)])
    return model


def bench(batch_norm: bool, n_images: int, batch_size: int, repeats: int, seed: int,
          model_name: str = "resnet20") -> dict:
    kmodel = build_keras(model_name, batch_norm, seed)
    features = MODELS[model_name][1]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{model_name}.h5")
        kmodel.save(path)
        model = load_model(path)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n_images, 32, 32, 3)).astype(np.float32)
    groups = rng.integers(0, 20, n_images)

    # same function?
    ours = model.predict(x[:batch_size], batch_size)
    theirs = kmodel.predict(x[:batch_size], batch_size=batch_size, verbose=0)
    diff = float(np.abs(ours - theirs).max())
    agree = float(np.mean(ours.argmax(1) == theirs.argmax(1)))
    # softmax can saturate: also compare the features entering the classifier
    import keras
    feats = keras.Model(kmodel.inputs, kmodel.get_layer(features).output)
    f_theirs = feats.predict(x[:batch_size], batch_size=batch_size, verbose=0)
    f_ours = model.layer_outputs(x[:batch_size], [features])[features]
    feat_rel = float(np.abs(f_ours - f_theirs).max() / max(np.abs(f_theirs).max(), 1e-30))

    def keras_predict():
        kmodel.predict(x, batch_size=batch_size, verbose=0)

    def ref_predict():
        model.predict(x, batch_size)

    def ref_record():
        model.run(x, batch_size, recorder=Recorder(model, 20), groups=groups)

    def ref_count():
        model.run(x, batch_size, recorder=Recorder(model, 20, counts=True), groups=groups)

    fns = [keras_predict, ref_predict, ref_record, ref_count]
    for fn in fns:
        fn()                                    # warm-up: JIT compile, TF graph tracing
    t_keras, t_pred, t_rec, t_count = _best_interleaved(fns, repeats)
    macs = model.macs()
    return dict(variant=("with batch norm" if batch_norm else "no batch norm (paper)")
                if model_name == "resnet20" else "with batch norm",
                macs=macs, max_abs_diff=diff, argmax_agree=agree, feature_rel_diff=feat_rel,
                keras=n_images / t_keras, predict=n_images / t_pred, record=n_images / t_rec,
                count=n_images / t_count)


def fma_peak_gflops_per_thread(isa: str) -> tuple[float, str]:
    """Nominal single-thread float32 FMA peak of this CPU for `isa`, with how it was derived:
    clock (/proc/cpuinfo) x 2 FMA pipes x 2 flops x lanes; AMD Zen 4 (family 25) runs a
    512-bit FMA on both of its 256-bit pipes, so AVX-512 doubles lanes but not throughput."""
    from refdecomp.kernels.isa import ISAS

    mhz, family, vendor = 0.0, "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "cpu MHz":
                mhz = max(mhz, float(value))
            elif key == "cpu family" and not family:
                family = value
            elif key == "vendor_id" and not vendor:
                vendor = value
    except OSError:
        return float("nan"), "clock unknown"
    lanes = ISAS[isa].vector_floats
    pipes = 2
    if isa == "avx512" and vendor == "AuthenticAMD" and family == "25":
        pipes = 1
    return mhz / 1e3 * pipes * 2 * lanes, f"{mhz / 1e3:.2f} GHz x {pipes} x 2 x {lanes}"


def _set_threads(threads: int | None) -> None:
    if threads:
        # read when TensorFlow starts (it is imported below, in build_keras) and per call
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = "1"
        os.environ["REFDECOMP_THREADS"] = str(threads)


def child(args) -> int:
    """One ISA and thread count, in this process: results as one JSON line."""
    from refdecomp.kernels.isa import ISA, TARGET

    _set_threads(args.threads)
    if args.isa[0] != "native" and args.isa[0] != ISA:
        print(json.dumps({"error": f"Numba targets {TARGET[0]} here, which gives the {ISA} "
                                   f"variant, not {args.isa[0]}"}))
        return 0
    rows = [bench(bn, args.images, args.batch_size, args.repeats, args.seed, args.model)
            for bn in _variants(args)]
    peak, how = fma_peak_gflops_per_thread(ISA)
    print(json.dumps({"isa": ISA, "cpu": TARGET[0], "peak_1t": peak, "peak_how": how,
                      "threads": args.threads or len(os.sched_getaffinity(0)), "rows": rows}))
    return 0


def across_isas(args) -> int:
    """Every ISA in `args.isa`, each in a subprocess, all cores and one; one table."""
    from refdecomp.kernels.isa import ENVIRONMENTS

    print(f"{MODELS[args.model][0]}, CIFAR-10 shape, {args.images} images, batch "
          f"{args.batch_size}, best of {args.repeats}, {os.cpu_count()} CPU cores; each ISA in "
          f"its own process")
    runs = [(isa, args.threads) for isa in args.isa]
    if not args.no_single_thread:
        runs += [(isa, 1) for isa in args.isa]
    table = []
    for isa, threads in runs:
        env = {k: v for k, v in os.environ.items()
               if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "ONEDNN_MAX_CPU_ISA")}
        env.update(ENVIRONMENTS[isa])
        cmd = [sys.executable, __file__, "--child", "--isa", isa, "--images", str(args.images),
               "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
               "--seed", str(args.seed), "--variant", args.variant, "--model", args.model]
        if threads:
            cmd += ["--threads", str(threads)]
        print(f"  running --isa {isa} with {threads or 'all'} thread(s) ...", flush=True)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode or not lines:
            print(f"  --isa {isa} failed:\n{out.stderr[-3000:]}")
            continue
        res = json.loads(lines[-1])
        if "error" in res:
            print(f"  --isa {isa}: skipped: {res['error']}")
            continue
        table.append((isa, res))
    print(f"\n{'ISA':8s} {'Numba CPU':15s} {'thr':>3s}  {'variant':22s} {'TF img/s':>9s} "
          f"{'predict':>8s} {'record':>8s}  {'FMA peak':>8s} {'predict':>8s}")
    for isa, res in table:
        peak = res["peak_1t"] * res["threads"]
        for r in res["rows"]:
            gf = 2 * r["macs"] / 1e9
            print(f"{isa:8s} {res['cpu']:15s} {res['threads']:3d}  {r['variant']:22s} "
                  f"{r['keras']:9.1f} {r['predict'] / r['keras']:7.2f}x "
                  f"{r['record'] / r['keras']:7.2f}x  {peak:6.0f}GF "
                  f"{r['predict'] * gf / peak:7.0%}")
        print(f"{'':8s} FMA peak per thread {res['peak_how']} GFLOP/s; outputs vs Keras: max "
              f"feature rel. diff {max(r['feature_rel_diff'] for r in res['rows']):.1e}, "
              f"argmax agreement {min(r['argmax_agree'] for r in res['rows']):.3f}")
    print("\npredict, record: refdecomp images/s over TensorFlow's in the same process; FMA "
          "peak: nominal, per thread x threads; last column: the share of it refdecomp's "
          "predict reaches")
    return 0


def _variants(args) -> list[bool]:
    """Batch norm off / on per run (MobileNetV2 has batch norm only)."""
    if args.model == "mobilenet_v2":
        return [True]
    return {"plain": [False], "bn": [True], "both": [False, True]}[args.variant]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", choices=tuple(MODELS), default="resnet20",
                    help="resnet20 (the paper's network) or mobilenet_v2 (depthwise-heavy)")
    ap.add_argument("--variant", choices=("plain", "bn", "both"), default="both",
                    help="resnet20 without / with batch norm (mobilenet_v2 always has it)")
    ap.add_argument("--threads", type=int,
                    help="threads for both engines (TF intra-op pool and REFDECOMP_THREADS); "
                         "default: each engine's own choice (all cores)")
    ap.add_argument("--isa", nargs="+", choices=("avx2", "avx512", "native"),
                    help="run each in its own process with Numba (and oneDNN) held to it and "
                         "print one table of ratios per ISA")
    ap.add_argument("--no-single-thread", action="store_true",
                    help="with --isa: skip the single-thread runs")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    if args.isa:
        return across_isas(args)
    _set_threads(args.threads)
    variants = _variants(args)
    print(f"{MODELS[args.model][0]}, CIFAR-10 shape, {args.images} images, batch "
          f"{args.batch_size}, best of {args.repeats}, {os.cpu_count()} CPU cores, "
          f"{args.threads or 'default'} thread(s) per engine")
    for bn in variants:
        r = bench(bn, args.images, args.batch_size, args.repeats, args.seed, args.model)
        gf = 2 * r["macs"] / 1e9
        print(f"\n[{r['variant']}] {r['macs'] / 1e6:.1f} M MACs/image; outputs vs Keras: "
              f"max |diff| {r['max_abs_diff']:.2e}, argmax agreement {r['argmax_agree']:.3f}, "
              f"features max rel. diff {r['feature_rel_diff']:.2e}")
        for key, label in (("keras", "Keras/TF predict"), ("predict", "refdecomp predict"),
                           ("record", "refdecomp predict + recording (20 groups)"),
                           ("count", "refdecomp predict + counting (20 groups)")):
            print(f"  {label:44s} {r[key]:8.1f} images/s  {r[key] * gf:6.1f} GFLOP/s  "
                  f"{r[key] / r['keras']:.2f}x TF")
        print(f"  counting costs {r['record'] / r['count'] - 1:+.1%} time over bit recording")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
