"""The `fedseal` command line: one module per command group, each with `register(subparsers)`.

This package may import every library package of `common/` and `common.launch`; it is the one
place (with `common.launch`) that prints, and `main` maps FedSeal's exceptions to exit codes.
"""

from __future__ import annotations

import argparse
import sys

from common.errors import FedSealError


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit 2), not the whole usage;
    every subcommand's parser is one too (argparse makes subparsers of the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="fedseal",
        description="Secure end-to-end federated training: simulate a federation, "
        "watermark and verify models, run benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from common.cli import bench, certs, data, keys, report, watermark
    from common.launch import simulate  # starts Flower's engine in a child process

    for group in (watermark, bench, keys, data, report, certs, simulate):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except FedSealError as exc:
        print(f"fedseal: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fedseal: interrupted", file=sys.stderr)
        return 130

