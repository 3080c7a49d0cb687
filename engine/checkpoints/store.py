"""Checkpoints: a torchdeck checkpoint is a directory, written atomically.

    <name>/model.safetensors   weights, no pickle
    <name>/training_state.pt   optimizer, RNG states, loop position; torch.load(weights_only=True)
    <name>/meta.json           format version, step, epoch, metrics, model spec, run config,
                               torch version, sha256 and size of each file

Listing reads meta.json and compares sizes; full hash verification is `verify`.
Other people's files (.pt/.pth/.bin/.tar state dicts, training dicts, .safetensors) open too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchdeck.errors import InvalidRequest, OperationFailed, UnsafeFile
from torchdeck.fsutil import fsync_dir, read_json
from torchdeck.procs import pid_alive

FORMAT = "torchdeck-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
TRAINING_STATE = "training_state.pt"
META = "meta.json"
TMP_MARK = ".tmp-"


@dataclass
class TensorInfo:
    name: str
    shape: list[int]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class CheckpointInfo:
    path: Path
    format: str
    step: int | None = None
    epoch: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    model_spec: dict[str, Any] | None = None
    size: int = 0
    tensors: list[TensorInfo] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def name(self) -> str:
        return self.path.name

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "step": self.step,
            "epoch": self.epoch,
            "metrics": self.metrics,
            "model_spec": self.model_spec,
            "size": self.size,
            "num_params": self.num_params,
            "tensors": [{"name": t.name, "shape": t.shape, "dtype": t.dtype} for t in self.tensors],
        }


# -- writing -----------------------------------------------------------------------------------
def host_copy(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Copy weights to host memory at a step boundary: the only pause training sees."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(
    root: Path,
    name: str,
    *,
    weights: dict[str, Any],
    training_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int | None = None,
) -> Path:
    """Write a checkpoint directory atomically, then apply retention (new before old)."""
    import torch
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if final.exists():
        raise OperationFailed(f"checkpoint {final} already exists")
    need = sum(t.numel() * t.element_size() for t in weights.values()) * 2 + (1 << 20)
    free = shutil.disk_usage(root).free
    if free < need:
        raise OperationFailed(
            f"not enough free space for checkpoint {name}: {free / 1e6:.1f} MB free, about {need / 1e6:.1f} MB needed"
        )
    tmp = root / f".{name}{TMP_MARK}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        # Tied or shared tensors arrive as separate host copies (host_copy), so safetensors accepts them.
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        torch.save(training_state, tmp / TRAINING_STATE)
        files = {}
        for fname in (WEIGHTS, TRAINING_STATE):
            _fsync_file(tmp / fname)
            files[fname] = {"size": (tmp / fname).stat().st_size, "sha256": _sha256(tmp / fname)}
        full_meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "torch_version": torch.__version__,
            "created": time.time(),
            **meta,
            "files": files,
        }
        with open(tmp / META, "w") as f:
            json.dump(full_meta, f, indent=1, sort_keys=True, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        apply_retention(root, keep)
    return final


def apply_retention(root: Path, keep: int) -> list[Path]:
    """Keep the newest `keep` complete checkpoints; remove older ones (after the new one landed)."""
    complete = list_checkpoints(root)
    removed = []
    for info in complete[:-keep] if keep > 0 else complete:
        trash = info.path.with_name(f".{info.path.name}.removing-{os.getpid()}")
        os.rename(info.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(info.path)
    return removed


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Remove temporaries whose writer is dead (its pid is in the name)."""
    removed = []
    try:
        entries = list(Path(root).iterdir())
    except FileNotFoundError:
        return removed
    for p in entries:
        m = re.search(r"(?:\.tmp-|\.removing-)(\d+)$", p.name)
        if p.name.startswith(".") and m and not pid_alive(int(m.group(1)), None):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


# -- reading -----------------------------------------------------------------------------------
def _complete_meta(path: Path) -> dict[str, Any] | None:
    meta = read_json(path / META)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        return None
    for fname, rec in meta["files"].items():
        try:
            if (path / fname).stat().st_size != rec.get("size"):
                return None
        except OSError:
            return None
    return meta


def list_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Complete checkpoints under `root`, oldest first (by step). Needs no torch."""
    out = []
    try:
        entries = [p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")]
    except FileNotFoundError:
        return out
    for p in entries:
        meta = _complete_meta(p)
        if meta is not None:
            out.append(_info_from_meta(p, meta, with_tensors=False))
    out.sort(key=lambda c: (c.step or 0, c.meta.get("created", 0)))
    return out


def latest_complete(root: Path) -> CheckpointInfo | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def _info_from_meta(path: Path, meta: dict[str, Any], *, with_tensors: bool) -> CheckpointInfo:
    info = CheckpointInfo(
        path=path,
        format=FORMAT,
        step=meta.get("step"),
        epoch=meta.get("epoch"),
        metrics=meta.get("metrics") or {},
        model_spec=meta.get("model_spec"),
        size=sum(int(r.get("size", 0)) for r in meta["files"].values()),
        meta=meta,
    )
    if with_tensors:
        info.tensors = safetensors_header(path / WEIGHTS)
    return info


_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def safetensors_header(path: Path) -> list[TensorInfo]:
    """Tensor names, shapes and dtypes from a .safetensors header, without torch or reading the data."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise OperationFailed(f"{path}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", raw)
            size = os.fstat(f.fileno()).st_size
            if n > min(size - 8, 100 << 20):
                raise OperationFailed(f"{path}: not a safetensors file (header length {n} is impossible)")
            header = json.loads(f.read(n))
    except OSError as e:
        raise OperationFailed(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError:
        raise OperationFailed(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise OperationFailed(f"{path}: not a safetensors file")
    out = []
    for name, rec in header.items():
        if name == "__metadata__" or not isinstance(rec, dict):
            continue
        out.append(TensorInfo(name, list(rec.get("shape", [])), _ST_DTYPES.get(rec.get("dtype"), str(rec.get("dtype")))))
    return out


def inspect(path: str | os.PathLike, *, trust: bool = False) -> CheckpointInfo:
    """What a checkpoint file or directory holds. Never runs code from it unless trust is given."""
    p = Path(path)
    if not p.exists():
        raise InvalidRequest(f"no such file or directory: {p}")
    if p.is_dir():
        if (p / META).exists():
            meta = read_json(p / META)
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise OperationFailed(f"{p}: {META} is corrupt or not a torchdeck checkpoint")
            if _complete_meta(p) is None:
                raise OperationFailed(f"{p}: incomplete checkpoint (a file is missing or has the wrong size)")
            return _info_from_meta(p, meta, with_tensors=True)
        raise OperationFailed(f"{p}: a directory, but not a torchdeck checkpoint (no {META})")
    size = p.stat().st_size
    if p.suffix == ".safetensors":
        return CheckpointInfo(path=p, format="safetensors", size=size, tensors=safetensors_header(p))
    state, fmt = _torch_load_state_dict(p, trust=trust)
    tensors = [TensorInfo(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    return CheckpointInfo(path=p, format=fmt, size=size, tensors=tensors)


def _torch_load_state_dict(p: Path, *, trust: bool) -> tuple[dict[str, Any], str]:
    import pickle

    import torch

    try:
        obj = torch.load(p, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e)) or re.search(r"global[s]? ([\w.]+)", str(e))
        if m is None:
            # Not a refused global but a broken pickle (e.g. "Unsupported operand 177" for random
            # bytes): a corrupt file, which --trust would not make readable.
            detail = str(e).split("WeightsUnpickler error:", 1)[-1].strip()
            first = detail.splitlines()[0] if detail else type(e).__name__
            raise OperationFailed(f"{p}: not a readable PyTorch file: {first}") from None
        raise UnsafeFile(
            f"{p}: refused: loading it would run code from the file (it needs {m.group(1)}); pass --trust to allow"
        ) from None
    except Exception as e:  # RuntimeError, EOFError, ... and KeyError from a garbled pickle stream
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, LookupError):  # its message alone is a bare key, e.g. "101"
            first = f"{type(e).__name__}: {first}"
        raise OperationFailed(f"{p}: not a readable PyTorch file: {first}") from None
    return _find_state_dict(p, obj)


def _find_state_dict(p: Path, obj: Any) -> tuple[dict[str, Any], str]:
    import torch

    def is_sd(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())

    if is_sd(obj):
        return dict(obj), "torch-state-dict"
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "module", "net"):
            if is_sd(obj.get(key)):
                return dict(obj[key]), "torch-training-dict"
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict(), "torch-module"
    raise OperationFailed(f"{p}: holds no state dict (a {type(obj).__name__})")


def load_weights(path: Path) -> dict[str, Any]:
    """The weights of a torchdeck checkpoint directory, as CPU tensors."""
    from safetensors.torch import load_file

    p = Path(path)
    if _complete_meta(p) is None:
        raise OperationFailed(f"{p}: not a complete torchdeck checkpoint")
    try:
        return load_file(str(p / WEIGHTS))
    except Exception as e:
        raise OperationFailed(f"{p / WEIGHTS}: cannot be read: {e}") from None


def verify(path: Path) -> list[str]:
    """Full hash check; returns the problems found (empty when the checkpoint is intact)."""
    p = Path(path)
    meta = read_json(p / META)
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        return [f"{META} is missing or corrupt"]
    problems = []
    for fname, rec in meta["files"].items():
        f = p / fname
        if not f.exists():
            problems.append(f"{fname} is missing")
        elif f.stat().st_size != rec.get("size"):
            problems.append(f"{fname} has size {f.stat().st_size}, expected {rec.get('size')}")
        elif _sha256(f) != rec.get("sha256"):
            problems.append(f"{fname} does not match its sha256")
    return problems


def load_model(path: Path, workspace=None, *, trust: bool = False):
    """Rebuild the model a torchdeck checkpoint was saved from, with its weights, in eval mode.

    Returns (model, ModelSpec, CheckpointInfo). An untrusted spec is refused (UnsafeFile).
    """
    from torchdeck.models import specs

    info = inspect(path)
    if info.format != FORMAT:
        raise InvalidRequest(f"{path}: a {info.format} file holds weights but no model spec to rebuild from")
    spec = specs.ModelSpec.from_json(info.model_spec or {})
    import_root = (info.meta.get("run_config") or {}).get("import_root")
    model = specs.build_checked(spec, workspace, trust=trust, import_root=import_root)
    try:
        model.load_state_dict(load_weights(info.path))
    except RuntimeError as e:
        raise OperationFailed(f"{path}: weights do not fit {spec.describe()}: {str(e).splitlines()[0]}") from None
    return model.eval(), spec, info


def workspace_checkpoints(store) -> list[tuple[str, CheckpointInfo]]:
    """(run id, checkpoint) for every complete checkpoint of every run, newest run first."""
    out = []
    for run in store.runs():
        for info in reversed(list_checkpoints(run.checkpoints_dir)):
            out.append((run.id, info))
    return out
