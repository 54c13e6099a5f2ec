"""`fedseal bench watermark | secure`: benchmarks that print figures (ratios against baselines
measured in the same run)."""

from __future__ import annotations

import argparse
import json
import os

from common.errors import InputError

TARGETS = {"wire_ratio": "<= 2.0x (he), <= 1.0x (masked)", "client_ns_per_param": "<= 80 (he)",
           "server_ns_per_param": "<= 40 (he)", "max_abs_error": "<= 1e-6 (he), <= 1e-5 (masked)"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bench watermark` and `bench secure` to the `fedseal` command line."""
    bench = subparsers.add_parser("bench", help="benchmarks that print figures")
    sub = bench.add_subparsers(dest="bench", metavar="WHAT", required=True)
    p = sub.add_parser(
        "watermark",
        help="watermark speed and recovery curve on a ResNet-18-like model",
        description="Time embed, verify and recover-at-10%% next to a numpy copy and a BLAKE2b hash of the "
        "same bytes, and measure the fraction of runs restored bit-exactly at 5-30%% of blocks tampered.",
    )
    p.add_argument("--params", type=int, default=11_700_000, help="model size (default: %(default)s)")
    p.add_argument("--runs", type=int, default=3, help="tampering runs per curve point (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=bench_watermark)

    p = sub.add_parser(
        "secure",
        help="cost of each secure mode per round against the TenSEAL default",
        description="Run each mode's round computations in process on the same random updates and print, per "
        "mode: wire_ratio (upload / float32 bytes), client_ns_per_param, server_ns_per_param (ingest per site), "
        "round_s (one site's work + the server's ingest of all sites + decryption/unmasking) and max_abs_error "
        "(aggregate vs plaintext FedAvg). Baselines (tenseal_default, and Flower's SecAgg+ when the masked mode "
        "is installed) are measured in the same run.",
    )
    p.add_argument("--params", type=int, default=1_000_000, help="model size (default: %(default)s)")
    p.add_argument("--clients", type=int, default=5, help="sites per round (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=2, help="timings are the best of this many (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2,
                   help="processes a site encrypts with (he; default: %(default)s, this machine's cores)")
    p.add_argument("--modes", default="", metavar="LIST",
                   help="comma-separated subset of the rows (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=bench_secure)


def bench_secure(args: argparse.Namespace) -> int:
    """`fedseal bench secure`."""
    from common.bench import secure as bench

    if args.params < 1000:
        raise InputError(f"--params must be at least 1000, got {args.params}")
    if not 1 <= args.clients <= he_max_sites():
        raise InputError(f"--clients must be in 1..{he_max_sites()}, got {args.clients}")
    if args.repeat < 1 or args.workers < 1:
        raise InputError("--repeat and --workers must be at least 1")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in bench.ROWS]
    if unknown:
        raise InputError(f"unknown mode(s) {', '.join(unknown)}; rows: {', '.join(bench.ROWS)}")
    result = bench.run(args.params, args.clients, repeat=args.repeat, workers=args.workers, modes=modes or None)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"secure aggregation benchmark: {args.params:,} parameters, {args.clients} sites, {args.workers} "
          f"worker(s) per site, load average {result['load_avg_1min']:.2f} on {result['cpus']} CPUs")
    print(f"  {'mode':<16} {'wire_ratio':>10} {'client ns/p':>12} {'server ns/p':>12} {'round s':>9} "
          f"{'max_abs_error':>14}")
    for name, r in result["modes"].items():
        print(f"  {name:<16} {r['wire_ratio']:>9.2f}x {r['client_ns_per_param']:>12.1f} "
              f"{r['server_ns_per_param']:>12.1f} {r['round_s']:>9.3f} {r['max_abs_error']:>14.2e}")
    rows = result["modes"]
    if "none" in rows:
        ratios = ", ".join(f"{m} {r['round_s'] / rows['none']['round_s']:.2f}x" for m, r in rows.items() if m != "none")
        print(f"  round time against none: {ratios}")
    print("  targets: " + "; ".join(f"{k} {v}" for k, v in TARGETS.items()))
    return 0


def he_max_sites() -> int:
    from common.secure import he

    return he.MAX_SITES


def bench_watermark(args) -> int:
    """`fedseal bench watermark`."""
    from common.bench import watermark as bench

    if args.params < 10_000:
        raise InputError("--params must be at least 10000")
    if args.runs < 1:
        raise InputError("--runs must be at least 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = bench.run(args.params, runs_per_point=args.runs)
    if args.json:
        print(json.dumps(result))
        return 0
    base = result["copy_s"]
    print(f"watermark benchmark: {result['params']:,} parameters ({result['bytes'] / 1e6:.1f} MB), k=8")
    for label, key in (("embed", "embed_s"), ("verify", "verify_s"), ("recover at 10%", "recover_10pct_s"),
                       ("numpy copy", "copy_s"), ("BLAKE2b hash", "hash_s")):
        print(f"  {label:<16} {result[key]:8.3f} s   ({result[key] / base:6.1f}x copy, "
              f"{result[key] / result['hash_s']:5.1f}x hash)")
    print(f"  recovery curve (fraction of {args.runs} runs restored bit-exactly):")
    for fraction, exact in result["recovery_curve"]:
        print(f"    {fraction:4.0%} of blocks tampered: {exact:.2f}")
    return 0
