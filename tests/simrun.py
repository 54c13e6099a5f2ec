"""Running `fedseal simulate` from tests: as a subprocess, checking that no process it started survives;
several at once (`Runs`) where a test file makes more than one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from common.run import records

ROOT = Path(__file__).resolve().parents[1]


def processes_with_marker(marker: str) -> list[int]:
    """PIDs (not zombies) whose environment carries `marker` (inherited by everything a run started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes() and (entry / "stat").read_text().split()[2] != "Z":
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def _env() -> tuple[dict, str]:
    marker = uuid.uuid4().hex
    return dict(os.environ, FEDSEAL_TEST_RUN=marker), f"FEDSEAL_TEST_RUN={marker}"


def _log(out: Path | None) -> str:
    path = out / "simulation.log" if out else None
    return path.read_text(errors="replace")[-3000:] if path and path.exists() else ""


def assert_no_leftovers(marker: str) -> None:
    deadline = time.monotonic() + 5
    while (left := processes_with_marker(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], "a process of the run survived the command"


def simulate(*args: str, out: Path | None = None, returncode: int = 0) -> subprocess.CompletedProcess:
    """Run `fedseal simulate ARGS [--out OUT]`; assert it exited with `returncode` (0: succeeded)
    and left no process behind."""
    env, marker = _env()
    cmd = [sys.executable, "-m", "common.cli", "simulate", *args]
    if out is not None:
        cmd += ["--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == returncode, proc.stdout + proc.stderr + _log(out)
    assert_no_leftovers(marker)
    return proc


def simulate_model(*args: str, out: Path) -> subprocess.CompletedProcess:
    """Run tests/anymodel_apps.py (a model of over 1M parameters with BatchNorm, FedSeal's apps)
    with ARGS --out OUT; assert it succeeded and left no process behind."""
    env, marker = _env()
    cmd = [sys.executable, "-m", "tests.anymodel_apps", *args, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr + _log(out)
    assert_no_leftovers(marker)
    return proc


def simulate_interrupted(*args: str, out: Path, after_round: int) -> int:
    """Start a run and send it SIGINT (Ctrl-C) as soon as `after_round` is in rounds.jsonl;
    return its exit status."""
    env, marker = _env()
    proc = subprocess.Popen([sys.executable, "-m", "common.cli", "simulate", *args, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    deadline = time.monotonic() + 300
    try:
        while len(records.read_jsonl(out / records.ROUNDS)) < after_round and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never reached round %d" % after_round
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_no_leftovers(marker)
    assert proc.returncode in (0, 130), output + _log(out)
    return proc.returncode


_HOSTILE_RUN = """
import io, json, sys
from pathlib import Path
from common.launch.simulate import run_child
from common.run.settings import RunSettings
from server.engine import SERVER_APP
settings = RunSettings.from_run_config(json.loads(sys.argv[1]))
sys.exit(run_child(settings, int(sys.argv[2]), Path(settings.out_dir), verbose=False, out=io.StringIO(),
                   quiet=True, apps=(SERVER_APP, sys.argv[3])))
"""


def simulate_hostile(client_app: str, clients: int, out: Path, **settings) -> None:
    """Run a simulation whose sites run the ClientApp component `client_app` (e.g.
    `tests.e2e.hostile:bad_adverts`) with RunSettings(**settings) into `out`; assert it finished
    (exit 0, summary written) and left no process behind."""
    from common.run.settings import RunSettings

    out.mkdir(parents=True, exist_ok=True)
    config = RunSettings(out_dir=str(out), **settings).to_run_config()
    env, marker = _env()
    proc = subprocess.run([sys.executable, "-c", _HOSTILE_RUN, json.dumps(config), str(clients), client_app],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr + _log(out)
    assert (out / records.SUMMARY).exists(), _log(out)
    assert_no_leftovers(marker)


PARALLEL_RUNS = 2  # runs of one test file at a time: one run alone leaves about a third of the 2-core machine idle


class Runs:
    """Independent runs of one test file, started at once and made `PARALLEL_RUNS` at a time, each in
    its own processes (a run's results do not depend on what else runs). `start(name, fn, *args)`;
    `get(name)` waits for that run and returns its result or raises its failure (in the test that
    asked for it); `close()` waits for every run, so no process outlives the fixture. Start the
    longest runs first."""

    def __init__(self, parallel: int = PARALLEL_RUNS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="simrun")
        self._runs: dict[str, Future] = {}

    def start(self, name: str, fn: Callable, *args, **kwargs) -> None:
        self._runs[name] = self._pool.submit(fn, *args, **kwargs)

    def get(self, name: str):
        return self._runs[name].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
