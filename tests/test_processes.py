"""common/processes.py: nothing started in a session survives stop_session()."""

from __future__ import annotations

import os
import sys
import time

from common import processes

# The child starts a grandchild that leaves the process group, ignores SIGTERM, and is
# orphaned when the child exits - what Ray's helpers look like to us.
CHILD = r"""
import os, signal, subprocess, sys, time
gc = subprocess.Popen([sys.executable, "-c",
    "import os, signal, time; os.setpgrp(); signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
print(gc.pid, flush=True)
time.sleep(float(sys.argv[1]))
"""


def _alive(pid: int) -> bool:
    return processes._stat(pid) is not None


def _run(child_sleep: float) -> tuple[int, int]:
    import subprocess

    proc = processes.start_in_new_session([sys.executable, "-c", CHILD, str(child_sleep)], stdout=subprocess.PIPE)
    grandchild = int(proc.stdout.readline())
    time.sleep(0.3)
    return proc, grandchild


def test_stop_session_kills_orphaned_grandchild_that_ignores_sigterm():
    processes.become_subreaper()
    proc, grandchild = _run(0.0)
    proc.wait(timeout=10)  # the child exited: the grandchild is an orphan now
    assert _alive(grandchild)
    signalled = processes.stop_session(proc, grace=0.5)
    processes.reap_children()
    assert grandchild in signalled
    assert not _alive(grandchild)


def test_stop_session_while_child_runs():
    proc, grandchild = _run(60.0)
    processes.stop_session(proc, grace=0.5)
    processes.reap_children()
    assert proc.poll() is not None
    assert not _alive(proc.pid) and not _alive(grandchild)


def test_session_members_excludes_other_sessions():
    assert os.getpid() not in processes.session_members(os.getsid(0) + 10**7)
