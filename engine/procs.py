"""Processes by pid and start time: a pid is trusted only together with its start time, so a
reused pid is never mistaken for a worker (and never signalled)."""

from __future__ import annotations

import os


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of a process (clock ticks since boot); None when it is gone."""
    rest = _stat_fields(pid)
    try:
        return int(rest[19]) if rest else None
    except (IndexError, ValueError):
        return None


def process_state(pid: int | None, start: int | None) -> str | None:
    """The kernel's one-letter state of the process (R, S, D, T for stopped, t for traced, Z...);
    None when it is gone or the pid now belongs to another process."""
    if not pid:
        return None
    rest = _stat_fields(pid)
    if not rest or len(rest) < 20:
        return None
    try:
        if start is not None and int(rest[19]) != start:
            return None  # the pid was reused by another process
    except ValueError:
        return None
    return rest[0].decode("ascii", "replace")


def pid_alive(pid: int | None, start: int | None) -> bool:
    return process_state(pid, start) not in (None, "Z", "X", "x")


def is_suspended(pid: int | None, start: int | None) -> bool:
    """True when the process is stopped by a signal (SIGSTOP, SIGTSTP) or a debugger."""
    return process_state(pid, start) in ("T", "t")


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads (a worker starts its own session), or the process
    alone when it leads none: never a group it merely belongs to, which may be the caller's."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


