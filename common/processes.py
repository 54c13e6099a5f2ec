"""Start a helper process in its own session and make sure nothing it spawned survives.

Flower's simulation engine starts Ray (GCS server, raylet, workers); some of these move
to their own process group, and all are orphaned when their parent exits. They keep the
session id of the child we started in a new session, so the session is the handle:
`stop_session()` terminates exactly those processes, by PID. Linux (/proc) only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def _stat(pid: int) -> tuple[int, int] | None:
    """(session id, start time) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    if fields[0] == "Z":  # zombie: already dead, waiting to be reaped
        return None
    return int(fields[3]), int(fields[19])  # session, starttime


def session_members(sid: int) -> dict[int, int]:
    """{pid: start time} of the live processes in session `sid`."""
    members = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _stat(int(entry.name))
            if info and info[0] == sid:
                members[int(entry.name)] = info[1]
    return members


def start_in_new_session(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Popen `cmd` as the leader of a new session (so Ctrl-C reaches only us)."""
    return subprocess.Popen(cmd, start_new_session=True, **kwargs)


def stop_session(proc: subprocess.Popen, grace: float = 5.0) -> list[int]:
    """Terminate `proc` and every process left in its session; return the PIDs signalled.

    SIGTERM first, SIGKILL after `grace` seconds for whatever is still alive. A PID is only
    signalled while its start time still matches, so a reused PID is never hit.
    """
    sid = proc.pid
    members = session_members(sid)
    if proc.poll() is None:
        members.setdefault(proc.pid, _stat(proc.pid)[1] if _stat(proc.pid) else 0)
    signalled: list[int] = []
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        alive = {pid: st for pid, st in members.items() if _same(pid, st)}
        if not alive:
            break
        for pid in alive:
            try:
                os.kill(pid, sig)
                signalled.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap our direct child
            if not any(_same(pid, st) for pid, st in alive.items()):
                break
            time.sleep(0.1)
        members = {**alive, **session_members(sid)}
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        pass
    return sorted(set(signalled))


def _same(pid: int, starttime: int) -> bool:
    info = _stat(pid)
    return info is not None and (starttime == 0 or info[1] == starttime)


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux prctl), so their exit can be reaped by us."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_children() -> int:
    """Collect every exited child (zombie) of this process; return how many."""
    count = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return count
        if pid == 0:
            return count
        count += 1


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports ru_maxrss in KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
