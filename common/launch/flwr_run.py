"""`scripts/flwr-run.sh`: the same apps through `flwr run .` (Flower's local SuperLink and simulation
runtime), with the run folder under runs/ and nothing left running afterwards.

`flwr run .` spawns a detached `flower-superlink` on 127.0.0.1:39091 that outlives the run. This
launcher adopts orphaned descendants (a Linux subreaper), so that SuperLink becomes its child when
`flwr run` exits, and stops it by PID at the end, on failure and on Ctrl-C. A SuperLink that was
already running before is not ours and is left alone (`flwr run` then spawns none).

Usage: scripts/flwr-run.sh [SITES] [--out DIR] [more `flwr run` options, e.g. --run-config 'num-rounds=3']
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from common import processes

ROOT = Path(__file__).resolve().parents[2]
SUMMARY_WAIT_SECONDS = 60  # the ServerApp writes summary.json as the run ends


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/flwr-run.sh",
        description="Run FedSeal through `flwr run .` with SITES simulated SuperNodes, write the run folder "
        "runs/flwr-<time>/ and stop the SuperLink that `flwr run` started. Options after SITES go to "
        "`flwr run` (e.g. --run-config 'num-rounds=3 secure-mode=\"he\"').")
    parser.add_argument("sites", nargs="?", type=int, default=5, help="simulated sites (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="run folder, new or empty (default: runs/flwr-<time>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, flwr_args = build_parser().parse_known_args(argv)
    if args.sites < 2:
        print(f"flwr-run.sh: error: SITES must be at least 2, got {args.sites}", file=sys.stderr)
        return 2
    out = (args.out or ROOT / "runs" / f"flwr-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"flwr-run.sh: error: --out {out} exists and is not an empty folder", file=sys.stderr)
        return 2
    cmd = [str(Path(sys.executable).parent / "flwr"), "run", ".", "--stream",
           "--federation-config", f"num-supernodes={args.sites} client-resources-num-cpus=1",
           "--run-config", f'out-dir="{out}" min-clients={args.sites}', *flwr_args]
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    processes.become_subreaper()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    proc = None
    try:
        proc = processes.start_in_new_session(cmd, cwd=ROOT, env=env)
        status = proc.wait()
        summary = _wait_for(out / "summary.json", SUMMARY_WAIT_SECONDS if status == 0 else 0)
        if summary is None:
            print(f"flwr-run.sh: no summary.json in {out} (flwr run exited {status}); see the log above",
                  file=sys.stderr)
            return 1
        s = json.loads(summary.read_text())
        if s.get("status") == "stopped":
            print(f"flwr-run.sh: run stopped: {s.get('reason')}", file=sys.stderr)
            return 1
        print(f"final accuracy {s['final_accuracy']:.4f}   centralized {s['centralized_accuracy']:.4f}")
        report = out / "report.html"
        print(f"Run folder: {out}" + (f" (report: {report})" if report.is_file() else ""))
        return 0
    except KeyboardInterrupt:
        print("flwr-run.sh: interrupted", file=sys.stderr)
        return 130
    finally:
        if proc is not None and proc.poll() is None:
            processes.stop_session(proc)
        processes.stop_processes(processes.children_of(os.getpid()),
                                 also=lambda: processes.children_of(os.getpid()))


def _wait_for(path: Path, seconds: float) -> Path | None:
    deadline = time.monotonic() + seconds
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(1)
    return path if path.is_file() else None


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
