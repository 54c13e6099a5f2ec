"""`fedseal check-data`: validate a site's CSV before it joins a federation."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from common.errors import InputError
from common.learning.data import DATASETS, DatasetInfo, dataset_info, feature_names, load_csv
from common.learning.tasks import MIN_SITE_ROWS, csv_problems, parse_names


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `check-data` subcommand."""
    p = subparsers.add_parser(
        "check-data",
        help="check a site's CSV (its columns by name, numeric features, integer labels, enough rows)",
        description="Load a site's CSV the way a deployed site does (node config data-path; run config "
        "features, label-column, classes for the csv task) and report its size and class counts, or the "
        f"first problem: a missing, unexpected or repeated column, a bad value, fewer than {MIN_SITE_ROWS} "
        "rows (exit 2). A site whose rows are all of one class gets a warning (exit 0).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("csv", help="path of the CSV file (first row: column names)")
    p.add_argument("--label-column", default="label", help="column holding the class label (0..classes-1)")
    p.add_argument("--task", default=None, choices=(*DATASETS, "csv"),
                   help="the federation's task: a bundled dataset (its feature names) or csv (--features)")
    p.add_argument("--dataset", default="breast-cancer", choices=DATASETS,
                   help="the federation's dataset when --task is not given: fixes the feature names and classes")
    p.add_argument("--features", default="", help="csv task: the feature column names, comma-separated (any order "
                   "in the file)")
    p.add_argument("--classes", type=int, default=2, help="csv task: number of classes")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `fedseal check-data`."""
    task = args.task or args.dataset
    if task == "csv":
        features = parse_names(args.features)
        if not features:
            raise InputError("--task csv needs --features: the feature column names, comma-separated")
        if args.classes < 2:
            raise InputError(f"--classes must be >= 2, got {args.classes}")
        info = DatasetInfo("csv", len(features), args.classes)
    else:
        info, features = dataset_info(task), feature_names(task)
    x, y = load_csv(args.csv, args.label_column, info, features)
    refusal, warn = csv_problems(y, info.n_classes)
    if refusal:
        raise InputError(f"{args.csv}: {refusal}")
    for problem in warn:
        print(f"fedseal: warning: {args.csv}: {problem}", file=sys.stderr)
    counts = np.bincount(y, minlength=info.n_classes).tolist()
    print(f"{args.csv}: ok: {len(y)} rows, {x.shape[1]} features, class counts {counts}")
    return 0
