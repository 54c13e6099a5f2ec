"""scripts/flwr-run.sh (common/launch/flwr_run.py): the same apps through `flwr run .`, and the
detached SuperLink it spawns is stopped by PID afterwards."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "flwr-run.sh"


def _superlinks() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"flower-superlink" in cmdline and b"39091" in cmdline:
                found.add(int(entry.name))
    return found


@pytest.mark.deploy
def test_flwr_run_writes_the_run_and_stops_its_superlink(tmp_path):
    before = _superlinks()
    out = tmp_path / "run"
    proc = subprocess.run(["bash", str(SCRIPT), "2", "--out", str(out), "--run-config", "num-rounds=1 local-epochs=1"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "final accuracy" in proc.stdout and f"Run folder: {out} (report: {out / 'report.html'})" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["clients"] == 2 and len(summary["rounds"]) == 1
    assert _superlinks() <= before, "the SuperLink that flwr run spawned is still running"


def test_flwr_run_refuses_bad_usage(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    for args, message in ((["1"], "SITES must be at least 2"), (["2", "--out", str(tmp_path / "full")], "not an empty")):
        proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert (tmp_path / "full" / "x").read_text() == "keep"
