"""The `fedseal` command line. Each command group registers its subcommands here."""

from __future__ import annotations

import argparse
import sys

from common.errors import FedSealError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedseal",
        description="Secure end-to-end federated training: simulate a federation, "
        "watermark and verify models, run benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from common import cli_watermark

    cli_watermark.register(sub)
    from common import cli_keys; cli_keys.register(sub)  # noqa: E702
    try:  # the simulation commands need Flower; they live outside common/
        from server import cli_simulate
    except ImportError:  # pragma: no cover - only while server/ is absent
        pass
    else:
        cli_simulate.register(sub)
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


if __name__ == "__main__":
    sys.exit(main())
