"""Checkpoint files and folders the user opened from outside the workspace's runs, remembered in
the workspace (`recent_checkpoints.json`, newest first, at most MAX_RECENT), so that the
Checkpoints screen lists them again next time.

The file is written atomically; a damaged one (not JSON, the wrong shape, odd entries) is read
as an empty or partial list with a one-line problem, never an exception, and is replaced the
next time a path is remembered. Needs no torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from torchdeck.errors import from_os_error
from torchdeck.fsutil import atomic_write_bytes

FILE = "recent_checkpoints.json"
VERSION = 1
MAX_RECENT = 20
MAX_PATH = 4096


@dataclass
class RecentPaths:
    """The remembered paths (absolute, newest first) and, when the file was damaged, why."""

    paths: list[str] = field(default_factory=list)
    problem: str | None = None


def recent_file(workspace_root: str | os.PathLike) -> Path:
    return Path(workspace_root) / FILE


def absolute(path: str | os.PathLike, cwd: str | os.PathLike | None = None) -> str:
    """`~` expanded, relative to `cwd` (default: the process's), normalized; symlinks kept (the
    path the user typed is the one shown)."""
    p = os.path.expanduser(os.fspath(path))
    if not os.path.isabs(p):
        p = os.path.join(os.fspath(cwd) if cwd is not None else os.getcwd(), p)
    return os.path.normpath(p)


def load(workspace_root: str | os.PathLike) -> RecentPaths:
    f = recent_file(workspace_root)
    try:
        raw = f.read_bytes()
    except FileNotFoundError:
        return RecentPaths()
    except OSError as e:
        return RecentPaths(problem=f"cannot read {f}: {e.strerror or e}")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return RecentPaths(problem=f"{f} is damaged (not JSON); the list of opened paths starts afresh")
    items = doc.get("paths") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return RecentPaths(problem=f"{f} is damaged (no list of paths); the list of opened paths starts afresh")
    paths: list[str] = []
    skipped = 0
    for p in items:
        if not (isinstance(p, str) and p and os.path.isabs(p) and len(p) <= MAX_PATH and "\0" not in p):
            skipped += 1
        elif p not in paths:  # a repeat is no damage
            paths.append(p)
    problem = f"{f}: {skipped} damaged entr{'y' if skipped == 1 else 'ies'} skipped" if skipped else None
    return RecentPaths(paths[:MAX_RECENT], problem)


def save(workspace_root: str | os.PathLike, paths: list[str]) -> None:
    f = recent_file(workspace_root)
    doc = {"version": VERSION, "paths": list(dict.fromkeys(paths))[:MAX_RECENT]}
    try:
        atomic_write_bytes(f, (json.dumps(doc, indent=1) + "\n").encode("utf-8", "surrogateescape"))
    except OSError as e:
        raise from_os_error(e, f"cannot write {f}") from None


def remember(workspace_root: str | os.PathLike, path: str) -> list[str]:
    """Put `path` (absolute) first; the list as saved."""
    paths = [path] + [p for p in load(workspace_root).paths if p != path]
    save(workspace_root, paths)
    return paths[:MAX_RECENT]


def forget(workspace_root: str | os.PathLike, path: str) -> list[str]:
    """Drop `path` from the list (its files are not touched); the list as saved."""
    paths = [p for p in load(workspace_root).paths if p != path]
    save(workspace_root, paths)
    return paths
