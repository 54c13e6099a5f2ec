#!/usr/bin/env python3
"""Seconds and bytes per round of a model of over 1M parameters, in each mode.

Runs tests/anymodel_apps.py once per mode (FedSeal's own ServerApp and ClientApp, Flower's
simulation engine, every check): breast-cancer with tests/anymodels.py `wide_model` (1,085,443
parameters; BatchNorm with its int64 0-dim counter, a 0-dim scale, a bool buffer), 3 sites, the
same seed. Prints per mode and round: accuracy, seconds (round 1 includes Ray starting its
workers), bytes up and down (all sites), and the load average, since the machine is shared.

Usage: .venv/bin/python scripts/bench_any_model.py [--modes none,he,masked] [--clients 3] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_mode(mode: str, args: argparse.Namespace, folder: Path) -> dict:
    out = folder / mode
    cmd = [sys.executable, "-m", "tests.anymodel_apps", "--secure-mode", mode, "--clients", str(args.clients),
           "--rounds", str(args.rounds), "--out", str(out)]
    env = dict(os.environ, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_any_model: {mode} run failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"final_accuracy": summary["final_accuracy"],
            "rounds": [{k: r[k] for k in ("round", "accuracy", "seconds", "bytes_up", "bytes_down", "clients_used")}
                       for r in summary["rounds"]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="none,he,masked")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.anymodels import wide_model

    params = sum(p.numel() for p in wide_model().parameters())
    results = {}
    with tempfile.TemporaryDirectory(prefix="fedseal-any-model-") as tmp:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            results[mode] = run_mode(mode, args, Path(tmp))
            results[mode]["load_average"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"parameters": params, "clients": args.clients, "modes": results}))
        return 0
    print(f"wide_model: {params:,} parameters, {args.clients} sites, {args.rounds} rounds")
    print(f"{'mode':<7} {'round':>5} {'accuracy':>8} {'seconds':>8} {'MB up':>8} {'MB down':>8} {'load':>5}")
    for mode, res in results.items():
        for r in res["rounds"]:
            print(f"{mode:<7} {r['round']:>5} {r['accuracy']:>8.4f} {r['seconds']:>8.2f} {r['bytes_up'] / 1e6:>8.2f} "
                  f"{r['bytes_down'] / 1e6:>8.2f} {res['load_average']:>5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
