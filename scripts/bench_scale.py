#!/usr/bin/env python3
"""Cost with the size of the federation: N registered sites, K sampled per round, every mode.

Runs `fedseal simulate --dataset digits --clients N --clients-per-round K` (Flower's simulation
engine, real training and every check) for each (N, K <= N, mode) of the grid and prints, per run:
median seconds per round (rounds 2 and later: round 1 includes Ray starting its workers and every
node saying which site it is), the server's peak RSS (summary.json `server_peak_rss_mb`: the
ServerApp's process, which in simulation also hosts Flower's SuperLink), bytes per round (up +
down, median) and the sites used per round. Then, unless --no-secure, `fedseal bench secure
--clients C` with Flower's SecAgg+ in the same run.

Usage: .venv/bin/python scripts/bench_scale.py [--sites 10,100,1000] [--per-round 10,100]
           [--modes none,he,masked] [--rounds 3] [--secure-params 1000000] [--secure-clients 100]
           [--no-secure] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def run_one(n: int, k: int, mode: str, rounds: int, folder: Path) -> dict:
    """One simulated federation; its figures from summary.json."""
    out = folder / f"{mode}-{n}-{k}"
    cmd = [sys.executable, "-m", "common.cli", "simulate", "--dataset", "digits", "--clients", str(n),
           "--clients-per-round", str(k if k < n else 0), "--rounds", str(rounds), "--local-epochs", "1",
           "--secure-mode", mode, "--quiet", "--no-report", "--out", str(out)]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        return {"sites": n, "per_round": k, "mode": mode, "error": (proc.stderr.strip() or proc.stdout)[-300:]}
    summary = json.loads((out / "summary.json").read_text())
    later = summary["rounds"][1:]
    return {"sites": n, "per_round": min(k, n), "mode": mode,
            "round_s": statistics.median(r["seconds"] for r in later),
            "first_round_s": summary["rounds"][0]["seconds"],
            "server_peak_rss_mb": summary["server_peak_rss_mb"],
            "bytes_per_round": statistics.median(r["bytes_up"] + r["bytes_down"] for r in later),
            "used": [r["clients_used"] for r in summary["rounds"]],
            "rejected": sum(len(r["rejected"]) for r in summary["rounds"]),
            "wall_s": round(wall, 1), "load_avg_1min": round(os.getloadavg()[0], 2)}


def run_secure(params: int, clients: int) -> dict:
    """`fedseal bench secure` (none, he, masked and Flower's SecAgg+ on the same updates)."""
    cmd = [sys.executable, "-m", "common.cli", "bench", "secure", "--params", str(params), "--clients", str(clients),
           "--modes", "none,he,masked,secaggplus_flwr", "--repeat", "1", "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip() or proc.stdout)[-300:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="10,100,1000", help="registered sites N (comma-separated)")
    parser.add_argument("--per-round", default="10,100", help="cohort sizes K (comma-separated; K > N is skipped)")
    parser.add_argument("--modes", default="none,he,masked")
    parser.add_argument("--rounds", type=int, default=3, help="at least 2 (round 1 is not timed)")
    parser.add_argument("--secure-params", type=int, default=1_000_000)
    parser.add_argument("--secure-clients", type=int, default=100)
    parser.add_argument("--no-secure", action="store_true", help="skip `fedseal bench secure`")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    grid = [(n, k, m) for n in _ints(args.sites) for k in _ints(args.per_round) if k <= n for m in modes]
    with tempfile.TemporaryDirectory(prefix="fedseal-bench-scale-") as tmp:
        runs = []
        for n, k, mode in grid:
            runs.append(run_one(n, k, mode, args.rounds, Path(tmp)))
            if not args.json:
                print(format_run(runs[-1]), flush=True)
    secure = None if args.no_secure else run_secure(args.secure_params, args.secure_clients)
    if args.json:
        print(json.dumps({"runs": runs, "secure": secure, "cpus": os.cpu_count()}))
        return 0
    if secure is not None:
        print(format_secure(secure))
    return 0


def format_run(r: dict) -> str:
    head = f"N {r['sites']:>5}  K {r['per_round']:>4}  {r['mode']:<7}"
    if "error" in r:
        return f"{head}  FAILED: {r['error']}"
    return (f"{head}  {r['round_s']:7.2f} s/round (round 1 {r['first_round_s']:.1f} s)  peak RSS "
            f"{r['server_peak_rss_mb']:7.1f} MB  {r['bytes_per_round'] / 1e6:8.2f} MB/round  used {r['used']}  "
            f"rejected {r['rejected']}  (load average {r['load_avg_1min']})")


def format_secure(result: dict) -> str:
    if "error" in result:
        return f"fedseal bench secure: FAILED: {result['error']}"
    rows = result["modes"]
    lines = [f"fedseal bench secure: {result['params']:,} parameters, {result['clients']} sites "
             f"(load average {result['load_avg_1min']})"]
    for name, r in rows.items():
        lines.append(f"  {name:<16} round {r['round_s']:8.3f} s" +
                     (f"  decryption {r['final_s']:.3f} s" if "final_s" in r else ""))
    if "masked" in rows and "secaggplus_flwr" in rows:
        lines.append(f"  masked / Flower's SecAgg+: {rows['masked']['round_s'] / rows['secaggplus_flwr']['round_s']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
