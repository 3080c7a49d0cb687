"""Checkpoint formats, one module each behind one small protocol (`base.CheckpointFormat`):
torchdeck's checkpoint directory, a Hugging Face model or Trainer folder, a
`torch.distributed.checkpoint` folder, a safetensors file, a torch file (zip or legacy; plain
state dicts, training dicts, Lightning, timm). `inspect` and `load_weights` pick the format from
the content (a directory's marker files, a file's first bytes), never the extension, and never
run code from the file unless `trust` is given."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchdeck import trust as gate
from torchdeck.errors import Corrupt, NotFound, from_os_error

from . import dcp, hf_folder, safetensors_file, torch_file, torchdeck_dir
from .base import CheckpointFormat, CheckpointInfo, TensorInfo

FORMATS: tuple[CheckpointFormat, ...] = (torchdeck_dir, hf_folder, dcp, safetensors_file, torch_file)  # type: ignore[assignment]

__all__ = ["CheckpointFormat", "CheckpointInfo", "TensorInfo", "FORMATS", "format_of", "inspect", "load_weights"]


def format_of(path: str | os.PathLike) -> CheckpointFormat:
    p = Path(path)
    try:
        os.stat(p)
    except FileNotFoundError:
        raise NotFound(f"no such file or directory: {p}", field="path") from None
    except OSError as e:
        raise from_os_error(e, str(p), field="path") from None
    if p.is_dir():
        if (p / torchdeck_dir.META).exists():
            return torchdeck_dir  # type: ignore[return-value]
        for f in (hf_folder, dcp):
            if f.claims(p):
                return f  # type: ignore[return-value]
        raise Corrupt(f"{p}: a directory, but not a torchdeck checkpoint (no meta.json), nor a Hugging Face "
                      "or torch.distributed checkpoint folder", field="path")
    st = gate.check_regular_file(p)
    head = gate.read_regular_bytes(p, limit=16)
    if safetensors_file.sniff(head, st.st_size):
        return safetensors_file  # type: ignore[return-value]
    if torch_file.sniff(head):
        return torch_file  # type: ignore[return-value]
    if p.suffix.lower() in safetensors_file.SUFFIXES and head:
        safetensors_file.header(p)  # names what is wrong with its header
        raise Corrupt(f"{p}: not a safetensors file", field="path")
    what = "an empty file" if not head else "neither safetensors, a zip archive nor a pickle"
    raise Corrupt(f"{p}: not a readable PyTorch file or safetensors file ({what})", field="path")


def inspect(path: str | os.PathLike, *, trust: bool = False) -> CheckpointInfo:
    """What a checkpoint file or directory holds. Never runs code from it unless trust is given."""
    p = Path(path)
    return format_of(p).inspect(p, trust=trust)


def load_weights(path: str | os.PathLike, *, trust: bool = False) -> dict[str, Any]:
    p = Path(path)
    return format_of(p).load_weights(p, trust=trust)
