"""scripts/bench_seal_parts.py: prints a positive figure for each SEAL step; bad options exit 2."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_seal_parts.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_prints_each_step_in_ns_per_parameter():
    proc = run("--chunks", "2", "--repeat", "1")
    assert proc.returncode == 0, proc.stderr
    figures = dict(re.findall(r"^  (\S.*?)\s+([0-9.]+)$", proc.stdout, re.M))
    assert set(figures) == {"CKKS encode", "encrypt_zero_symmetric", "encrypt_symmetric", "encrypt_symmetric + save"}
    assert all(float(v) > 0 for v in figures.values())
    assert "56-bit prime" in proc.stdout


def test_bad_option_exits_2():
    proc = run("--chunks", "0")
    assert proc.returncode == 2
    assert "--chunks and --repeat must be >= 1" in proc.stderr
