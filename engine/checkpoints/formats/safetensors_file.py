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
           "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "U16": "uint16", "U32": "uint32",
           "U64": "uint64", "C64": "complex64"}
_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
          "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8, "C64": 8}


def claims(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def sniff(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length that fits the file, then a JSON object."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _corrupt(path: Path, why: str, field: str | None) -> Corrupt:
    return Corrupt(f"{path}: not a safetensors file, or a damaged one ({why})", field=field)


def read_header(path: Path, *, field: str | None = "path") -> tuple[dict[str, Any], int, int]:
    """(parsed header, header length, file size), reading only the header."""
    gate.check_regular_file(path, field=field)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise _corrupt(path, "too short to hold a header", field)
            (n,) = struct.unpack("<Q", raw)
            size = os.fstat(f.fileno()).st_size
            if n > size - 8:
                raise _corrupt(path, f"header length {n} runs past the end of the {size}-byte file", field)
            if n > MAX_HEADER:
                raise _corrupt(path, f"header length {n} is over the {MAX_HEADER}-byte limit", field)
            text = f.read(n)
    except OSError as e:
        raise from_os_error(e, f"cannot read {path}", field=field) from None
    try:
        parsed = json.loads(text)
    except RecursionError:
        raise _corrupt(path, "its header is nested too deeply", field) from None
    except ValueError:
        raise _corrupt(path, "its header is not JSON", field) from None
    if not isinstance(parsed, dict):
        raise _corrupt(path, "its header is not a JSON object", field)
    return parsed, n, size


def header(path: Path, *, field: str | None = "path") -> list[TensorInfo]:
    """Tensor names, shapes, dtypes and sizes from a .safetensors header, without torch or
    reading the data; Corrupt unless every tensor's offsets lie inside the file, match its shape
    and dtype, and do not overlap."""
    return _header(path, field)[0]


def _header(path: Path, field: str | None) -> tuple[list[TensorInfo], dict[str, Any]]:
    parsed, n, size = read_header(path, field=field)
    data_len = size - 8 - n
    out: list[tuple[int, int, TensorInfo]] = []
    for name, rec in parsed.items():
        if name == "__metadata__":
            continue
        if not isinstance(rec, dict):
            raise _corrupt(path, f"tensor {name!r} has no record", field)
        dtype, shape, offs = rec.get("dtype"), rec.get("shape"), rec.get("data_offsets")
        if dtype not in _SIZES:
            raise _corrupt(path, f"tensor {name!r} has unknown dtype {str(dtype)[:40]!r}", field)
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise _corrupt(path, f"tensor {name!r} has an invalid shape {str(shape)[:40]}", field)
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) and not isinstance(o, bool)
                                                                 for o in offs) and 0 <= offs[0] <= offs[1]):
            raise _corrupt(path, f"tensor {name!r} has invalid data offsets {str(offs)[:60]}", field)
        if offs[1] > data_len:
            raise _corrupt(path, f"tensor {name!r} ends at byte {offs[1]}, past the end of the data "
                                 f"({data_len} bytes; the file is truncated?)", field)
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * _SIZES[dtype]
        if nbytes != offs[1] - offs[0]:
            raise _corrupt(path, f"tensor {name!r} of shape {shape} {dtype} needs {nbytes} bytes, "
                                 f"its offsets hold {offs[1] - offs[0]}", field)
        out.append((offs[0], offs[1], TensorInfo(name, list(shape), _DTYPES[dtype], nbytes)))
    out.sort(key=lambda r: r[0])
    pos = 0
    for begin, end_, t in out:  # safetensors packs tensors back to back, covering the data exactly
        if begin < pos:
            raise _corrupt(path, f"tensor {t.name!r} overlaps the one before it", field)
        if begin > pos:
            raise _corrupt(path, f"a gap of {begin - pos} bytes before tensor {t.name!r}", field)
        pos = end_
    if pos != data_len:
        raise _corrupt(path, f"{data_len - pos} bytes after the last tensor", field)
    return [t for _, _, t in out], parsed


def inspect(path: Path, *, trust: bool = False) -> CheckpointInfo:
    st = gate.check_regular_file(path)
    tensors, parsed = _header(path, "path")
    meta = parsed.get("__metadata__")
    return CheckpointInfo(path=path, format=NAME, size=st.st_size, tensors=tensors,
                          meta=meta if isinstance(meta, dict) else {})


def load_weights(path: Path, *, trust: bool = False, field: str | None = "path") -> dict[str, Any]:
    from safetensors.torch import load_file

    header(path, field=field)  # a FIFO, a permission problem or a damaged header, told clearly first
    try:
        return load_file(str(path))
    except OSError as e:
        raise from_os_error(e, f"cannot read {path}", field=field) from None
    except Exception as e:
        raise Corrupt(f"{path}: cannot be read: {e}", field=field) from None
