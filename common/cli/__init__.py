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
    from common import cli_bench; cli_bench.register(sub)  # noqa: E702
    from common import cli_keys; cli_keys.register(sub)  # noqa: E702
    from common import cli_data

    cli_data.register(sub)
    from common import cli_report; cli_report.register(sub)  # noqa: E702
    from common import cli_certs; cli_certs.register(sub)  # noqa: E702
    from server import cli_simulate  # needs Flower, so it lives outside common/

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
