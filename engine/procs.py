"""Processes by pid and start time: a pid is trusted only together with its start time, so a
reused pid is never mistaken for a worker (and never signalled)."""

from __future__ import annotations

import os


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of a process (clock ticks since boot); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    rest = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int | None, start: int | None) -> bool:
    if not pid:
        return False
    st = process_start_time(pid)
    if st is None:
        return False
    if start is not None and st != start:
        return False  # the pid was reused by another process
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except (ProcessLookupError, PermissionError):
        pass
