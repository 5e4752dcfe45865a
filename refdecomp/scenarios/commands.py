"""Command-line glue for the reuse, replace and update scenarios (see `reuse.py`)."""
from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from ..cli_options import limited, module_preprocessing, preprocessing_from_args
from ..datasets import load_dataset
from ..decompose.update import update_module
from ..errors import RefdecompError
from ..experiments import as_input, parse_classes
from ..modules import ModuleSet, load_modules
from ..report import markdown_table, write_report
from .reuse import Pick, class_images, evaluate_replace, evaluate_reuse, replace_table

PICK = re.compile(r"^(?P<file>.+):(?P<cls>\d+)@(?P<data>[^@]+)$")


def parse_pick(text: str) -> tuple[str, int, str]:
    """`MODULES_FILE:CLASS@DATASET` -> (file, class, dataset)."""
    m = PICK.match(text)
    if not m:
        raise RefdecompError(f"argument --pick {text!r}: expected MODULES_FILE:CLASS@DATASET, "
                             "e.g. out/cifar10.h5:3@cifar10")
    return m["file"], int(m["cls"]), m["data"]


_loaded: dict[tuple, Any] = {}   # module sets and datasets read during one command


def _modules(path: str, args: argparse.Namespace | None = None, ds=None):
    """The module set in `path`, its preprocessing settled once: the one the file records, or
    (for a file that records none) the one the options state, fitted on `ds`'s training
    split."""
    key = ("modules", path)
    if key not in _loaded:
        ms = load_modules(path)
        given = preprocessing_from_args(args) if args is not None else None
        ms.preprocessing = module_preprocessing(ms.preprocessing, given, path,
                                                None if ds is None else ds.x_train)
        _loaded[key] = ms
    return _loaded[key]


def _dataset(name: str, data_dir: str | None):
    key = ("dataset", name, data_dir)
    if key not in _loaded:
        _loaded[key] = load_dataset(name, data_dir=data_dir)
    return _loaded[key]


def _picks(args: argparse.Namespace):
    picks = []
    for text in args.pick:
        file, cls, data = parse_pick(text)
        ds = _dataset(data, args.data_dir)
        name = ds.class_names[cls] if cls < len(ds.class_names) else str(cls)
        picks.append(Pick(_modules(file, args, ds)[cls], ds, f"{ds.name}:{name}"))
    if len(picks) < 2:
        raise RefdecompError("argument --pick: give at least two modules to compose")
    return picks


def run_reuse(args: argparse.Namespace) -> dict[str, Any]:
    picks = _picks(args)
    res = evaluate_reuse(picks, update=args.update, update_limit=args.update_limit,
                         batch_size=args.batch_size, progress=not args.no_progress)
    res["preprocessing"] = [_described(p.module.preprocessing) for p in picks]
    rows = [[" + ".join(res["picks"]), res["n_images"], f"{100 * res['MA']:.2f}%",
             f"{100 * res['MMA']:.2f}%" if "MMA" in res else "-"]]
    md = "# Reuse\n\n" + markdown_table(["modules", "test images", "MA (composed)",
                                         "MMA (updated)"], rows)
    return _finish(args, "reuse", res, md)


def run_replace(args: argparse.Namespace) -> dict[str, Any]:
    ds = _dataset(args.data, args.data_dir)
    target, donor = _modules(args.target, args, ds), _modules(args.donor, args, ds)

    x, y = limited(args, ds).split("test")
    classes = (parse_classes(args.classes, "--classes") if args.classes
               else [int(c) for c in target.classes])
    res = evaluate_replace(target, donor, classes, x, y, batch_size=args.batch_size,
                           progress=not args.no_progress)
    res["preprocessing"] = {"target": _described(target.preprocessing),
                            "donor": _described(donor.preprocessing)}
    md = (f"# Replace modules of {args.target} with those of {args.donor}\n\n"
          + replace_table(res))
    return _finish(args, "replace", res, md)


def run_update(args: argparse.Namespace) -> dict[str, Any]:
    images, datasets = [], []
    for text in args.unconcerned:
        cls, _, data = text.partition("@")
        if not cls.isdigit() or not data:
            raise RefdecompError(f"argument --unconcerned {text!r}: expected CLASS@DATASET")
        datasets.append(_dataset(data, args.data_dir))
        images.append(class_images(datasets[-1], int(cls), "train", args.update_limit))
    # A file that records no preprocessing gets the options', fitted on --data (the dataset
    # the modules were made from), else on the first unconcerned dataset.
    own = _dataset(args.data, args.data_dir) if args.data else datasets[0]
    ms = _modules(args.modules, args, own)
    module = ms[args.cls]
    updated = update_module(module, as_input(np.concatenate(images), ms.preprocessing),
                            batch_size=args.batch_size, progress=not args.no_progress)
    ModuleSet([updated], ms.model, options=ms.options, data=ms.data,
              class_names=ms.class_names, preprocessing=ms.preprocessing).save(args.out)
    before, after = module.size(), updated.size()
    res = {"module": args.cls, "out": args.out, "unconcerned_images": int(sum(map(len, images))),
           "preprocessing": _described(ms.preprocessing),
           "size_before": before, "size_after": after}
    md = markdown_table(["", "nodes kept", "weights kept"],
                        [["before update", before["nodes_fraction"], before["weights_fraction"]],
                         ["after update", after["nodes_fraction"], after["weights_fraction"]]])
    return _finish(args, "update", res, f"# Update of module {args.cls}\n\n{md}")


def _described(pre) -> dict | None:
    """A module set's preprocessing as reports state it (None: raw pixel values)."""
    return pre.to_dict() if pre is not None else None


def _finish(args: argparse.Namespace, name: str, data: dict, md: str) -> dict[str, Any]:
    if getattr(args, "report_dir", None):
        written = write_report(args.report_dir, name, data, md)
        data["reports"] = {k: str(v) for k, v in written.items()}
    return {"data": data, "markdown": md}


RUNNERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "reuse": run_reuse, "replace": run_replace, "update": run_update}


def run_scenario(args: argparse.Namespace) -> dict[str, Any]:
    _loaded.clear()
    try:
        return RUNNERS[args.command](args)
    finally:
        _loaded.clear()


def add_scenario_parsers(sub, handler, add_common, opts) -> None:
    """Add `reuse`, `replace` and `update` to the `refdecomp` subcommand parser (`opts`:
    `refdecomp.cli_options`, the shared dataset and preprocessing options)."""
    report = "write JSON and Markdown reports here"
    p = sub.add_parser("reuse", help="compose modules of chosen classes (same or different "
                                     "datasets) into a new classifier",
                       description="Compose modules of chosen classes into a new classifier and "
                                   "report its accuracy (MA) and, with --update, the accuracy "
                                   "of the updated modules (MMA). Each module's images go "
                                   "through the preprocessing its module file records.",
                       formatter_class=opts.HelpFormatter)
    p.add_argument("--pick", action="append", required=True, metavar="FILE:CLASS@DATASET",
                   help="a module: module set file, class index, and the dataset it belongs to")
    p.add_argument("--update", action="store_true", help="also update the modules (Section 3.5)")
    p.add_argument("--update-limit", type=int, help="unconcerned images per class for updating "
                                                    "(default: floor(E/(k-1)), as tangling)")
    opts.add_data_options(p, data=False, limit=False)
    p.add_argument("--report-dir", help=report)
    opts.add_preprocessing_options(p, recorded=True)
    add_common(p)
    p.set_defaults(func=handler)

    p = sub.add_parser("replace", help="replace modules with the same class's modules from "
                                       "another model, and evaluate",
                       formatter_class=opts.HelpFormatter)
    p.add_argument("--target", required=True, help="module set file whose modules are replaced")
    p.add_argument("--donor", required=True, help="module set file providing the replacements")
    p.add_argument("--classes", help="comma-separated classes to replace (default: each in turn)")
    opts.add_data_options(p, data_help="dataset of both module sets (its test split is "
                                       "evaluated)")
    p.add_argument("--report-dir", help=report)
    opts.add_preprocessing_options(p, recorded=True)
    add_common(p)
    p.set_defaults(func=handler)

    p = sub.add_parser("update", help="update one module with another dataset's classes as "
                                      "unconcerned inputs (Section 3.5)",
                       formatter_class=opts.HelpFormatter)
    p.add_argument("modules", help="module set file")
    p.add_argument("--class", dest="cls", type=int, required=True, help="class of the module")
    p.add_argument("--unconcerned", action="append", required=True, metavar="CLASS@DATASET",
                   help="training images of this class of this dataset are observed as "
                        "unconcerned inputs (repeatable)")
    p.add_argument("--update-limit", type=int, help="images per unconcerned class (default: all)")
    p.add_argument("--out", required=True, help="module file to write")
    opts.add_data_options(p, required=False, limit=False,
                          data_help="the dataset the modules were made from: its training split "
                                    "gives the statistics of --subtract / --divide for a module "
                                    "file that records no preprocessing (default: the first "
                                    "--unconcerned dataset)")
    p.add_argument("--report-dir", help=report)
    opts.add_preprocessing_options(p, recorded=True)
    add_common(p)
    p.set_defaults(func=handler)
