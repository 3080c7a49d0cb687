"""torchdeck's own checkpoint: a directory.

    <name>/model.safetensors   weights, no pickle
    <name>/training_state.pt   optimizer, RNG states, loop position; torch.load(weights_only=True)
    <name>/meta.json           format version, step, epoch, metrics, model spec, run config,
                               torch version, sha256 and size of each file

Reading one needs no run store; writing one is `torchdeck.checkpoints.store.save`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from torchdeck import trust as gate
from torchdeck.errors import Corrupt, TorchdeckError, Unreadable, from_os_error

from . import safetensors_file
from .base import CheckpointInfo

NAME = FORMAT = "torchdeck-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
TRAINING_STATE = "training_state.pt"
META = "meta.json"
MAX_META_BYTES = 64 << 20


def claims(path: Path) -> bool:
    return path.is_dir()


def read_meta(path: Path, *, field: str | None = "path") -> dict[str, Any]:
    """meta.json of a checkpoint directory; Unreadable for a permission problem or a meta.json
    that is not a regular file (a FIFO would block), Corrupt for one that is not ours."""
    try:
        os.listdir(path)
    except PermissionError as e:
        raise from_os_error(e, f"cannot read checkpoint directory {path}", field=field) from None
    except OSError as e:
        raise from_os_error(e, str(path), field=field) from None
    if not (path / META).exists():
        raise Corrupt(f"{path}: a directory, but not a torchdeck checkpoint (no {META})", field=field)
    raw = gate.read_regular_bytes(path / META, field=field, limit=MAX_META_BYTES)
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        raise Corrupt(f"{path}: {META} is corrupt or not a torchdeck checkpoint", field=field)
    return meta


def complete_meta(path: Path) -> dict[str, Any] | None:
    """meta.json when it is valid and every file it lists has its recorded size; else None.
    Never blocks and never raises (a listing skips what it cannot use)."""
    try:
        meta = read_meta(path)
    except TorchdeckError:
        return None
    for fname, rec in meta["files"].items():
        try:
            if not isinstance(rec, dict) or (path / fname).stat().st_size != rec.get("size"):
                return None
        except OSError:
            return None
    return meta


def info_from_meta(path: Path, meta: dict[str, Any], *, with_tensors: bool) -> CheckpointInfo:
    info = CheckpointInfo(
        path=path,
        format=FORMAT,
        step=meta.get("step"),
        epoch=meta.get("epoch"),
        metrics=meta.get("metrics") or {},
        model_spec=meta.get("model_spec"),
        size=sum(int(r.get("size", 0)) for r in meta["files"].values() if isinstance(r, dict)),
        meta=meta,
    )
    if with_tensors:
        info.tensors = safetensors_file.header(path / WEIGHTS)
    return info


def inspect(path: Path, *, trust: bool = False) -> CheckpointInfo:
    meta = read_meta(path)
    if complete_meta(path) is None:
        for fname in meta["files"]:
            try:
                gate.check_regular_file(path / fname)
            except Unreadable:
                raise
            except TorchdeckError:
                break
        raise Corrupt(f"{path}: incomplete checkpoint (a file is missing or has the wrong size)", field="path")
    return info_from_meta(path, meta, with_tensors=True)


def load_weights(path: Path, *, trust: bool = False) -> dict[str, Any]:
    """The weights, as CPU tensors."""
    inspect(path)
    return safetensors_file.load_weights(path / WEIGHTS)


def load_training_state(path: Path) -> dict[str, Any]:
    """training_state.pt through the trust gate (tensors, numbers and containers only)."""
    inspect(path)
    return gate.torch_load(path / TRAINING_STATE, kind="training_state")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path) -> list[str]:
    """Full hash check; returns the problems found (empty when the checkpoint is intact)."""
    try:
        meta = read_meta(path)
    except Unreadable as e:
        return [str(e)]
    except TorchdeckError:
        return [f"{META} is missing or corrupt"]
    problems = []
    for fname, rec in meta["files"].items():
        f = path / fname
        rec = rec if isinstance(rec, dict) else {}
        try:
            gate.check_regular_file(f)
        except TorchdeckError as e:
            problems.append(f"{fname} is missing" if not f.exists() else str(e))
            continue
        if f.stat().st_size != rec.get("size"):
            problems.append(f"{fname} has size {f.stat().st_size}, expected {rec.get('size')}")
        elif sha256(f) != rec.get("sha256"):
            problems.append(f"{fname} does not match its sha256")
    return problems
