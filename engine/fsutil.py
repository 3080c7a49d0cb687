"""Small durable-write helpers: write to a temporary sibling, fsync, rename, fsync the parent."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


fsync_dir = fsync_path


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), durable=durable)


def read_json(path: Path) -> Any:
    """Read a JSON file; None when it is missing or not valid JSON (a reader never crashes on it)."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def remove_dead_temporaries(out: Path) -> None:
    """What a killed writer of `out` left beside it (`.NAME.tmp-PID`, a file or a folder, its pid
    in the name and that process gone): exports, conversions."""
    import shutil

    from torchdeck.procs import pid_alive

    prefix = f".{out.name}.tmp-"
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return
    for p in entries:
        pid = p.name[len(prefix):]
        if p.name.startswith(prefix) and pid.isdigit() and not pid_alive(int(pid), None):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    p.unlink()
                except OSError:
                    pass


FULL_BELOW = 1 << 20  # free bytes under which a disk counts as full (a status file, a log line no longer fit)


def disk_full_note(path: Path) -> str:
    """"the disk holding it is full (/data (/dev/sdb1): 12 KiB free)" when the filesystem holding
    `path` (or its nearest existing parent) has under FULL_BELOW bytes free for this user; "" when
    it has more or cannot be asked. For an end that could not be written, or a command that died
    of its own write errors: the likely cause, named."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    from torchdeck.checkpoints.writer import describe_disk, free_bytes

    try:
        free = free_bytes(p)
    except OSError:
        return ""
    if free >= FULL_BELOW:
        return ""
    from torchdeck.fmt import fmt_bytes

    return f"the disk holding it is full ({describe_disk(p)}: {fmt_bytes(free)} free)"
