#!/usr/bin/env python3
"""Round time of each secure mode in a real simulated federation, against `none` in the same run.

Runs `fedseal simulate` once per mode with the same settings and seed (Flower's simulation
engine, real training, every check) and prints each mode's median round seconds - round 1 is
left out: it includes Ray starting its workers - its ratio to `none`, and the final accuracy.

Usage: .venv/bin/python scripts/bench_rounds.py [--modes none,he] [--clients 10] [--rounds 4]
                                                [--dataset breast-cancer] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_mode(mode: str, args: argparse.Namespace, folder: Path) -> dict:
    out = folder / mode
    cmd = [sys.executable, "-m", "common.cli", "simulate", "--secure-mode", mode, "--clients", str(args.clients),
           "--rounds", str(args.rounds), "--dataset", args.dataset, "--quiet", "--no-report", "--out", str(out)]
    env = dict(os.environ, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_rounds: {mode} run failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    seconds = [r["seconds"] for r in summary["rounds"][1:]]
    return {"round_s": statistics.median(seconds), "final_accuracy": summary["final_accuracy"],
            "rounds_s": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="none,he", help="comma-separated; the first is the baseline")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4, help="at least 2 (round 1 is not timed)")
    parser.add_argument("--dataset", default="breast-cancer")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    with tempfile.TemporaryDirectory(prefix="fedseal-bench-rounds-") as tmp:
        results = {mode: run_mode(mode, args, Path(tmp)) for mode in modes}
    base = results[modes[0]]["round_s"]
    for r in results.values():
        r["ratio"] = r["round_s"] / base
    if args.json:
        print(json.dumps({"clients": args.clients, "rounds": args.rounds, "dataset": args.dataset,
                          "load_avg_1min": round(os.getloadavg()[0], 2), "modes": results}))
        return 0
    print(f"{args.dataset}, {args.clients} sites, median of rounds 2-{args.rounds} "
          f"(load average {os.getloadavg()[0]:.2f})")
    for mode, r in results.items():
        print(f"  {mode:<8} {r['round_s']:7.3f} s per round  {r['ratio']:5.2f}x {modes[0]}   "
              f"final accuracy {r['final_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
