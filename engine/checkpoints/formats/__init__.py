"""Checkpoint formats, one module each behind one small protocol (`base.CheckpointFormat`):
torchdeck's checkpoint directory, a safetensors file, a torch file. `inspect` and
`load_weights` pick the format from the path (its kind and suffix), read nothing else first, and
never run code from the file unless `trust` is given."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchdeck.errors import NotFound, from_os_error

from . import safetensors_file, torch_file, torchdeck_dir
from .base import CheckpointFormat, CheckpointInfo, TensorInfo

FORMATS: tuple[CheckpointFormat, ...] = (torchdeck_dir, safetensors_file, torch_file)  # type: ignore[assignment]

__all__ = ["CheckpointFormat", "CheckpointInfo", "TensorInfo", "FORMATS", "format_of", "inspect", "load_weights"]


def format_of(path: str | os.PathLike) -> CheckpointFormat:
    p = Path(path)
    try:
        os.stat(p)
    except FileNotFoundError:
        raise NotFound(f"no such file or directory: {p}", field="path") from None
    except OSError as e:
        raise from_os_error(e, str(p), field="path") from None
    return next(f for f in FORMATS if f.claims(p))


def inspect(path: str | os.PathLike, *, trust: bool = False) -> CheckpointInfo:
    """What a checkpoint file or directory holds. Never runs code from it unless trust is given."""
    p = Path(path)
    return format_of(p).inspect(p, trust=trust)


def load_weights(path: str | os.PathLike, *, trust: bool = False) -> dict[str, Any]:
    p = Path(path)
    return format_of(p).load_weights(p, trust=trust)
