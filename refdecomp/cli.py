"""The `refdecomp` command line: a thin layer over the Python API.

Every subcommand prints a readable table (or JSON with `--json`), writes its reports atomically,
and turns bad input into one clear line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib.resources
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import cli_options as opts
from ._version import __version__
from .audit import audit_model
from .audit_modules import add_arguments as audit_modules_arguments
from .audit_modules import run_command
from .decompose import decompose
from .distributed import start_client
from .errors import InternalError, RefdecompError
from .experiments import as_input as _x
from .experiments import describe, evaluation_report, run_decomposition_experiment
from .fileio import atomic_path
from .interpreter import node_macs
from .loading import load_model
from .metrics import top_k_accuracy
from .modules import load_modules
from .report import markdown_table, print_json, set_command
from .scenarios.commands import add_scenario_parsers, run_scenario

#: the demo's default model: weights/digits_cnn.h5 of the repository, installed with the package
#: as data of `refdecomp.weights`, so the demo runs from a wheel, offline
DEFAULT_DEMO_MODEL = ("refdecomp.weights", "digits_cnn.h5")


# -- shared argument helpers -----------------------------------------------------------------
def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Keras model file (.h5, .keras) or weights-only file")
    p.add_argument("--architecture", help="JSON config or full model file, for weights-only files")


def _add_data(p: argparse.ArgumentParser, required: bool = True, recorded: bool = False) -> None:
    opts.add_data_options(p, required=required)
    opts.add_preprocessing_options(p, recorded=recorded)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_cluster(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on a running dask cluster (e.g. tcp://host:8786); needs "
                        "refdecomp[distributed]")
    g.add_argument("--workers", type=int, metavar="N",
                   help="start a local dask cluster of N worker processes (1 thread each)")


class _Cluster:
    """`with _Cluster(args) as client:` a dask client for --scheduler / --workers, else None."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.client = args, None

    def __enter__(self):
        a = self.args
        if getattr(a, "scheduler", None) or getattr(a, "workers", None):
            self.client = start_client(a.scheduler, a.workers)
        return self.client

    def __exit__(self, *exc):
        if self.client is not None:
            cluster = self.client.cluster if self.args.workers else None
            self.client.close()
            if cluster is not None:
                cluster.close()
        return False


def _load_data(args: argparse.Namespace):
    """(dataset as the options limit it, fitted preprocessing or None)."""
    return opts.load_data(args)


def _load_model(args: argparse.Namespace):
    return load_model(args.model, architecture=getattr(args, "architecture", None))


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.json:
        print_json(data)
    else:
        print(text, end="" if text.endswith("\n") else "\n")


# -- subcommands ------------------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace) -> int:
    model = _load_model(args)
    g = model.source_graph
    rows = [{"layer": n.name, "class": n.keras_class or n.op, "op": n.op,
             "output_shape": [None, *n.shape], "inputs": n.inputs,
             "parameters": n.n_params(), "macs": node_macs(g, n)} for n in g]
    data = {"model": args.model, "layers": rows,
            "parameters": int(sum(r["parameters"] for r in rows)),
            "macs": int(sum(r["macs"] for r in rows))}
    _emit(args, data, model.summary())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    model = _load_model(args)
    ds, pre = _load_data(args)
    x, y = ds.split(args.split)
    t0 = time.perf_counter()
    probs = model.predict(_x(x, pre), batch_size=args.batch_size, progress=not args.no_progress)
    seconds = time.perf_counter() - t0

    data = {"model": args.model, "data": describe(ds, args.split), "images": int(len(x)),
            "preprocessing": pre.to_dict() if pre is not None else None,
            "seconds": seconds, "images_per_second": len(x) / seconds,
            "top1": top_k_accuracy(probs, y, 1), "top5": top_k_accuracy(probs, y, 5)}
    if args.out:
        with atomic_path(args.out, suffix=".npz") as tmp:
            np.savez_compressed(tmp, probabilities=probs, labels=y)
        data["out"] = args.out
    text = markdown_table(["images", "top-1", "top-5", "images/s"],
                          [[data["images"], data["top1"], data["top5"], data["images_per_second"]]])
    _emit(args, data, text)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    model = _load_model(args)
    result = audit_model(model, args.model, against=args.against, n_images=args.images,
                         seed=args.seed, architecture=args.architecture)
    rows = [[r["layer"], r["class"], r["shape"], f"{r['rel_error']:.2e}",
             "ok" if r["ok"] else "DIFF"] for r in result["layers"]]
    text = (f"audit of {args.model} against {result['against']} on {result['images']} random "
            f"inputs (tolerance {result['tolerance']:.0e})\n"
            + markdown_table(["layer", "class", "output shape", "relative error", ""], rows))
    _emit(args, result, text)
    return 0 if result["ok"] else 1


def cmd_decompose(args: argparse.Namespace) -> int:
    model = _load_model(args)
    ds, pre = _load_data(args)
    t0 = time.perf_counter()
    with _Cluster(args) as client:
        ms = decompose(args.model if client is not None else model, _x(ds.x_train, pre),
                       ds.y_train, **opts.decomposition_kwargs(args),
                       batch_size=args.batch_size, progress=not args.no_progress,
                       class_names=list(ds.class_names), data=describe(ds, "train"),
                       client=client, activity_threshold=args.activity_threshold,
                       granularity=args.granularity, max_per_class=args.max_per_class)
    seconds = time.perf_counter() - t0
    ms.preprocessing = pre
    ms.save(args.out)
    data = {"model": args.model, "modules": args.out, "classes": len(ms),
            "options": ms.options, "preprocessing": pre.to_dict() if pre is not None else None,
            "seconds": seconds, "size": [m.size() for m in ms]}
    _emit(args, data, f"wrote {len(ms)} modules to {args.out} in {seconds:.1f} s")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    ms = load_modules(args.modules, model=args.model)
    ds, given = _load_data(args)
    ms.preprocessing = opts.module_preprocessing(ms.preprocessing, given, args.modules)
    with _Cluster(args) as client:
        result = evaluation_report(ms, ds, batch_size=args.batch_size,
                                   progress=not args.no_progress, out_dir=args.report_dir,
                                   extra={"model_file": ms.model.source_graph.source or
                                          "the model", "modules_file": args.modules},
                                   client=client)
    _emit(args, result["data"], result["markdown"])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    ms = load_modules(args.modules, model=args.model)
    module = ms[args.cls]
    path = module.export_keras(args.out, compact=args.compact)
    size = Path(path).stat().st_size
    _emit(args, {"out": str(path), "class": args.cls, "compact": args.compact, "bytes": size},
          f"wrote {path} ({size} bytes)")
    return 0


def cmd_audit_modules(args: argparse.Namespace) -> int:
    data, text, status = run_command(args, *_load_data(args))
    _emit(args, data, text)
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    package, name = DEFAULT_DEMO_MODEL
    kw = opts.decomposition_kwargs(args)
    with importlib.resources.as_file(importlib.resources.files(package) / name) as default, \
            opts.subset_warnings(args):
        model_path = args.model or str(default)
        result = run_decomposition_experiment(
            model_path, args.data, data_dir=args.data_dir, limit=args.limit,
            limit_seed=args.limit_seed, backtrack=kw.pop("backtrack"), delta=kw.pop("delta"),
            seed=kw.pop("seed"), preprocessing=opts.preprocessing_from_args(args),
            out_dir=args.out, batch_size=args.batch_size, progress=not args.no_progress, **kw)
    _emit(args, result["data"], result["markdown"])
    return 0


def cmd_scenario(args: argparse.Namespace) -> int:
    result = run_scenario(args)
    _emit(args, result["data"], result["markdown"])
    return 0


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refdecomp",
        description="Decompose trained Keras CNNs into reusable, replaceable per-class modules "
                    "(Pan & Rajan, ICSE 2022) on a TensorFlow-free interpreter.")

    parser.add_argument("--version", action="version", version=f"refdecomp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int],
            help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=opts.HelpFormatter)
        p.set_defaults(func=fn)
        return p

    p = add("inspect", cmd_inspect, "layer table: output shapes, parameters, multiply-accumulates")
    _add_model(p)
    _add_common(p)

    p = add("predict", cmd_predict, "predict a dataset split and report top-1 / top-5")
    _add_model(p)
    _add_data(p)
    _add_common(p)
    p.add_argument("--split", default="test", choices=["train", "test"], help="split to predict")
    p.add_argument("--out", help="write probabilities and labels to this .npz")

    p = add("audit", cmd_audit, "compare every layer's output with Keras (when installed) or with "
                                "the NumPy reference interpreter")
    _add_model(p)
    _add_common(p)
    p.add_argument("--against", choices=["auto", "keras", "reference"], default="auto",
                   help="auto: Keras when installed, else the NumPy reference interpreter")
    p.add_argument("--images", type=int, default=4, help="random inputs to compare on")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")

    decomposition_options = opts.add_decomposition_options

    p = add("audit-modules", cmd_audit_modules, "audit module files made by any tool (Keras "
            "files of the model's architecture) against the model's forward pass on a dataset")
    _add_model(p)
    _add_data(p)
    _add_common(p)

    audit_modules_arguments(p)

    p = add("decompose", cmd_decompose, "decompose a model into one module per class")
    _add_model(p)
    _add_data(p)
    _add_common(p)
    decomposition_options(p)
    _add_cluster(p)
    p.add_argument("--activity-threshold", type=float, default=0.0, metavar="T",
                   help="keep a node (or channel) only when active on at least this fraction "
                        "of the images a module observes; 0 (default) is the paper's rule")
    p.add_argument("--granularity", choices=["node", "channel"], default="node",
                   help="keep or remove single nodes (default) or whole filters / units")
    p.add_argument("--max-per-class", type=int, default=None, metavar="E",
                   help="each module observes at most E seeded images of its own class")
    p.add_argument("--out", required=True, help="module set file to write (.h5)")

    p = add("evaluate", cmd_evaluate, "compose modules and report accuracy, size and Jaccard")
    p.add_argument("modules", help="module set file written by `refdecomp decompose`")
    p.add_argument("--model", help="source model file, if the module file does not embed it")
    _add_data(p, recorded=True)
    _add_common(p)
    _add_cluster(p)
    p.add_argument("--report-dir", help="write JSON, Markdown and plots here")

    p = add("export", cmd_export, "write one module as a Keras file")
    p.add_argument("modules", help="module set file")
    p.add_argument("--model", help="source model file, if the module file does not embed it")
    p.add_argument("--class", dest="cls", type=int, required=True, help="class of the module")
    p.add_argument("--out", required=True, help="Keras file to write (.h5 or .keras)")
    p.add_argument("--compact", action="store_true", help="also drop removed filters and units")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = add("demo", cmd_demo, "the main job: decompose a model, compose its modules, report "
                              "(default: the shipped digits CNN on scikit-learn's digits, offline)")
    p.add_argument("--model", help=f"model file (default: the shipped {DEFAULT_DEMO_MODEL[1]})")
    opts.add_data_options(p, required=False, default="digits")
    opts.add_preprocessing_options(p)
    p.add_argument("--out", default="out/demo", help="folder for modules and reports")
    _add_common(p)
    decomposition_options(p)

    add_scenario_parsers(sub, cmd_scenario, _add_common, opts)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    set_command(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except InternalError as exc:
        return _report_bug(args.command, exc)
    except RefdecompError as exc:
        print(f"refdecomp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        hint = _missing_dependency(exc)
        if hint is None:
            return _report_bug(args.command, exc)
        print(f"refdecomp {args.command}: error: {hint}", file=sys.stderr)
        return 2
    except OSError as exc:  # missing file, permission, a folder where a file was expected, ...
        where = f": {exc.filename}" if exc.filename else ""
        print(f"refdecomp {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- anything else is a bug in refdecomp
        return _report_bug(args.command, exc)


#: Optional packages by import name: what to install to get them.
OPTIONAL_PACKAGES = {
    "keras": "pip install tensorflow-cpu (Keras, only for `audit --against keras`)",
    "tensorflow": "pip install tensorflow-cpu (only for `audit --against keras`)",
    "tf_keras": "pip install tf_keras (the Keras 2 dialect, only for `audit --against keras`)",
    "PIL": "pip install 'refdecomp[cli]' (or pillow)",
    "sklearn": "pip install 'refdecomp[cli]' (or scikit-learn)",
    "matplotlib": "pip install 'refdecomp[cli]' (or matplotlib)",
    "tqdm": "pip install 'refdecomp[cli]' (or tqdm)",
    "dask": "pip install 'refdecomp[distributed]' (for --scheduler / --workers)",
    "distributed": "pip install 'refdecomp[distributed]' (for --scheduler / --workers)",
}

#: Exit status of a bug report (EX_SOFTWARE of sysexits.h): neither success (0), a failed
#: check (1) nor bad input (2).
EXIT_BUG = 70


def _missing_dependency(exc: ModuleNotFoundError) -> str | None:
    """One line naming the missing optional package and how to install it; None when the
    missing module is part of refdecomp itself or required (a broken installation or a bug)."""
    root = (exc.name or "").split(".")[0]
    if root in OPTIONAL_PACKAGES:
        return f"this needs the optional package {root!r}, which is not installed: " \
               f"{OPTIONAL_PACKAGES[root]}"
    if root in ("numpy", "numba", "h5py"):
        return f"the required package {root!r} is not installed: pip install refdecomp " \
               f"(or {root})"
    return None


def _report_bug(command: str, exc: BaseException) -> int:
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"refdecomp {command}: internal error: {type(exc).__name__}: {exc}\n"
          f"This is a bug in refdecomp, not a problem with your input. Please report it with "
          f"the command line, the traceback above and, if you can, the input files.",
          file=sys.stderr)
    return EXIT_BUG
