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


def _fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else fields  # a zombie is already dead, waiting to be reaped


def _stat(pid: int) -> tuple[int, int] | None:
    """(session id, start time) of a process, or None if it is gone."""
    fields = _fields(pid)
    return (int(fields[3]), int(fields[19])) if fields else None  # session, starttime


def _live(field: int, value: int) -> dict[int, int]:
    """{pid: start time} of the live processes whose stat field `field` equals `value`."""
    members = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _fields(int(entry.name))) and int(fields[field]) == value:
            members[int(entry.name)] = int(fields[19])
    return members


def session_members(sid: int) -> dict[int, int]:
    """{pid: start time} of the live processes in session `sid`."""
    return _live(3, sid)


def children_of(pid: int) -> dict[int, int]:
    """{pid: start time} of the live children of `pid` (with `become_subreaper`, also the orphans
    of its descendants, such as a server a child started detached before it exited)."""
    return _live(1, pid)


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
    signalled = stop_processes(members, grace, also=lambda: session_members(sid), poll=proc.poll)
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        pass
    return signalled


def stop_processes(members: dict[int, int], grace: float = 5.0, *, also=dict, poll=lambda: None) -> list[int]:
    """Terminate the processes `members` ({pid: start time}) and those `also()` adds meanwhile:
    SIGTERM, then SIGKILL after `grace` seconds; `poll()` reaps a direct child while waiting.
    Returns the PIDs signalled; a PID whose start time changed (reused) is never hit."""
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
            poll()
            if not any(_same(pid, st) for pid, st in alive.items()):
                break
            time.sleep(0.1)
        members = {**alive, **also()}
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
