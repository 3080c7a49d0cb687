"""Paths as the screen shows them: short, and the same wherever the workspace lives."""

from __future__ import annotations

import os
from pathlib import Path


def home_short(path: str | os.PathLike) -> str:
    """/home/ana/proj/.torchdeck -> ~/proj/.torchdeck; other paths unchanged."""
    p = str(path)
    try:
        home = str(Path.home())
    except (KeyError, RuntimeError):  # no HOME and no passwd entry
        return p
    if home not in ("", "/") and (p == home or p.startswith(home.rstrip("/") + "/")):
        return "~" + p[len(home.rstrip("/")):]
    return p


def in_workspace(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """A path inside the workspace relative to it (runs/ID/checkpoints/step-...), else ~-shortened."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return home_short(path)
