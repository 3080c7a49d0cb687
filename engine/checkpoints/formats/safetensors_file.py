"""A `.safetensors` file: its header read without torch, its tensors through safetensors."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from torchdeck import trust as gate
from torchdeck.errors import Corrupt, from_os_error

from .base import CheckpointInfo, TensorInfo

NAME = "safetensors"
SUFFIXES = (".safetensors",)
MAX_HEADER = 100 << 20

_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
           "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def claims(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def header(path: Path, *, field: str | None = "path") -> list[TensorInfo]:
    """Tensor names, shapes and dtypes from a .safetensors header, without torch or reading the data."""
    gate.check_regular_file(path, field=field)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise Corrupt(f"{path}: too short to be a safetensors file", field=field)
            (n,) = struct.unpack("<Q", raw)
            size = os.fstat(f.fileno()).st_size
            if n > min(size - 8, MAX_HEADER):
                raise Corrupt(f"{path}: not a safetensors file (header length {n} is impossible)", field=field)
            parsed = json.loads(f.read(n))
    except OSError as e:
        raise from_os_error(e, f"cannot read {path}", field=field) from None
    except ValueError:
        raise Corrupt(f"{path}: not a safetensors file (its header is not JSON)", field=field) from None
    if not isinstance(parsed, dict):
        raise Corrupt(f"{path}: not a safetensors file", field=field)
    out = []
    for name, rec in parsed.items():
        if name == "__metadata__" or not isinstance(rec, dict):
            continue
        out.append(TensorInfo(name, list(rec.get("shape", [])), _DTYPES.get(rec.get("dtype"), str(rec.get("dtype")))))
    return out


def inspect(path: Path, *, trust: bool = False) -> CheckpointInfo:
    st = gate.check_regular_file(path)
    return CheckpointInfo(path=path, format=NAME, size=st.st_size, tensors=header(path))


def load_weights(path: Path, *, trust: bool = False, field: str | None = "path") -> dict[str, Any]:
    from safetensors.torch import load_file

    header(path, field=field)  # a FIFO, a permission problem or a damaged header, told clearly first
    try:
        return load_file(str(path))
    except OSError as e:
        raise from_os_error(e, f"cannot read {path}", field=field) from None
    except Exception as e:
        raise Corrupt(f"{path}: cannot be read: {e}", field=field) from None
