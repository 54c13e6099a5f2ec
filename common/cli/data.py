"""`fedseal check-data`: validate a site's CSV before it joins a federation."""

from __future__ import annotations

import argparse

import numpy as np

from common.learning.data import DATASETS, dataset_info, load_csv


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `check-data` subcommand."""
    p = subparsers.add_parser(
        "check-data",
        help="check a site's CSV (header row, numeric features, integer labels)",
        description="Load a site's CSV the way a deployed site does (node config data-path and "
        "label-column) and report its size and class counts, or the first bad file/line/column.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("csv", help="path of the CSV file (first row: column names)")
    p.add_argument("--label-column", default="label", help="column holding the class label (0..classes-1)")
    p.add_argument("--dataset", default="breast-cancer", choices=DATASETS,
                   help="the federation's dataset: fixes the number of features and classes")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `fedseal check-data`."""
    info = dataset_info(args.dataset)
    x, y = load_csv(args.csv, args.label_column, info)
    counts = np.bincount(y, minlength=info.n_classes).tolist()
    print(f"{args.csv}: ok: {len(y)} rows, {x.shape[1]} features, class counts {counts}")
    return 0
