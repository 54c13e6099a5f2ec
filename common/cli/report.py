"""`fedseal report RUN_DIR`: write a run's report.html (common/run/report.py)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `report` subcommand."""
    p = subparsers.add_parser(
        "report",
        help="write a run folder's report.html (plots, rejected sites, tamper map, cost per stage)",
        description="Write RUN_DIR/report.html: one self-contained page (images embedded, no network) with "
        "accuracy and loss per round against the centralized reference, sites used / rejected / recovered per "
        "round, a tamper map of the blocks that failed the fragile check, seconds and bytes per round by stage, "
        "every audit event and the run's settings. A run still going is reported from rounds.jsonl.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a FedSeal run folder (fedseal simulate --out, or flwr run)")
    p.add_argument("--out", default=None, metavar="FILE", help="write the page here instead of RUN_DIR/report.html")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from common.run.report import write_report

    print(f"Report: {write_report(args.run_dir, args.out)}")
    return 0
