"""`torch.distributed.checkpoint` folders (`.metadata` + `*.distcp`): tensor names, shapes and
dtypes from `.metadata`, which torch reads with plain `pickle.load`; here with the trust gate's
restricted unpickler, allowing only `torch.distributed.checkpoint.metadata` classes and the few
torch types they hold. Reading the tensors themselves (torch's `dcp_to_torch_save`) runs torch's
own loader, so it needs trust."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from torchdeck import trust as gate
from torchdeck.errors import Corrupt, UnsafeFile

from .base import CheckpointInfo, TensorInfo, dtype_bytes, plain

NAME = "torch-dcp"
METADATA = ".metadata"


def claims(path: Path) -> bool:
    return path.is_dir() and (path / METADATA).exists()


def _allowed() -> dict[str, Any]:
    import torch
    import torch.distributed.checkpoint.metadata as m

    out: dict[str, Any] = {}
    for name in dir(m):
        obj = getattr(m, name)
        if isinstance(obj, type) and obj.__module__ == m.__name__:
            out[f"{m.__name__}.{name}"] = obj
    import pathlib

    out["pathlib.PosixPath"] = pathlib.PosixPath  # storage_meta.checkpoint_id: a path, nothing runs
    out["pathlib.PurePosixPath"] = pathlib.PurePosixPath
    out["torch.Size"] = torch.Size
    out["collections.OrderedDict"] = __import__("collections").OrderedDict
    for n in dir(torch):
        if isinstance(getattr(torch, n, None), torch.dtype):
            out[f"torch.{n}"] = getattr(torch, n)
    out["torch.strided"] = torch.strided
    out["torch.sparse_coo"] = torch.sparse_coo
    out["torch.serialization._get_layout"] = torch.serialization._get_layout
    out["torch.contiguous_format"] = torch.contiguous_format
    out["torch.channels_last"] = torch.channels_last
    out["torch.preserve_format"] = torch.preserve_format
    return out


def read_metadata(path: Path) -> Any:
    seen: list[str] = []
    raw = gate.read_regular_bytes(path / METADATA)
    module = gate.restricted_pickle_module("data", seen=seen, extra=_allowed())
    try:
        md = module.Unpickler(io.BytesIO(raw)).load()
    except gate.RefusedGlobal as e:
        raise gate.refused_error(path / METADATA, [e.name]) from None
    except RecursionError:
        raise Corrupt(f"{path / METADATA}: nested too deeply", field="path") from None
    except Exception as e:
        raise Corrupt(f"{path / METADATA}: not a readable checkpoint metadata file: {type(e).__name__}",
                      field="path") from None
    if type(md).__name__ != "Metadata" or isinstance(md, gate.Placeholder):
        raise Corrupt(f"{path / METADATA}: not torch.distributed.checkpoint metadata", field="path")
    return md


def inspect(path: Path, *, trust: bool = False) -> CheckpointInfo:
    md = read_metadata(path)
    tensors: list[TensorInfo] = []
    meta: dict[str, Any] = {}
    sdm = getattr(md, "state_dict_metadata", {}) or {}
    for name, item in sdm.items():
        size = getattr(item, "size", None)
        props = getattr(item, "properties", None)
        if size is not None and props is not None:
            dtype = str(getattr(props, "dtype", "")).removeprefix("torch.")
            shape = [int(d) for d in size]
            n = 1
            for d in shape:
                n *= d
            b = dtype_bytes(dtype)
            tensors.append(TensorInfo(str(name), shape, dtype, None if b is None else n * b))
        else:
            meta.setdefault("objects", []).append(str(name))
    shards = sorted(p.name for p in path.glob("*.distcp"))
    meta["shards"] = shards
    size = sum(gate.check_regular_file(path / s).st_size for s in shards)
    return CheckpointInfo(path=path, format=NAME, size=size, tensors=tensors, meta=plain(meta))


def load_weights(path: Path, *, trust: bool = False) -> dict[str, Any]:
    inspect(path)
    if not trust:
        raise UnsafeFile(f"{path}: reading a distributed checkpoint's tensors runs torch's own unpickler "
                         "on its files; pass --trust to allow", field="path")
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "state.pt"
        dcp_to_torch_save(str(path), str(out))
        obj = gate.torch_load(out, kind="training_state")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
