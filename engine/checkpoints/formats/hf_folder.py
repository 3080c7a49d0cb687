"""Hugging Face folders: a model folder (`model.safetensors`, a sharded
`model.safetensors.index.json` whose `weight_map` names the shards, `pytorch_model.bin` and its
index; `config.json` as metadata) and a Trainer `checkpoint-N/` folder (`trainer_state.json`:
global step, epoch, best metric, `log_history` losses; `optimizer.pt`, `scheduler.pt`,
`rng_state*.pth` and `training_args.bin` listed, never unpickled)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torchdeck import trust as gate
from torchdeck.errors import Corrupt, NotFound

from . import safetensors_file, torch_file
from .base import CheckpointInfo, TensorInfo, plain

NAME = "hf-folder"
MARKERS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
           "trainer_state.json")
LISTED = ("optimizer.pt", "scheduler.pt", "training_args.bin", "scaler.pt")
MAX_JSON = 64 << 20


def claims(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in MARKERS)


def _json(path: Path) -> Any:
    raw = gate.read_regular_bytes(path, limit=MAX_JSON)
    try:
        return json.loads(raw)
    except RecursionError:
        raise Corrupt(f"{path}: nested too deeply", field="path") from None
    except ValueError:
        raise Corrupt(f"{path}: not valid JSON", field="path") from None


def _shards(path: Path, index_name: str) -> list[Path]:
    index = _json(path / index_name)
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise Corrupt(f"{path / index_name}: no weight_map of tensor names to shard files", field="path")
    out: list[Path] = []
    for shard in sorted(set(wm.values())):
        if "/" in shard or shard in ("", ".", ".."):
            raise Corrupt(f"{path / index_name}: shard name {shard!r} is not a file in the folder", field="path")
        p = path / shard
        if not p.exists():
            raise Corrupt(f"{path}: shard {shard} named in {index_name} is missing", field="path")
        out.append(p)
    return out


def _weight_files(path: Path) -> tuple[str, list[Path]]:
    if (path / "model.safetensors").exists():
        return "safetensors", [path / "model.safetensors"]
    if (path / "model.safetensors.index.json").exists():
        return "safetensors", _shards(path, "model.safetensors.index.json")
    if (path / "pytorch_model.bin").exists():
        return "torch", [path / "pytorch_model.bin"]
    if (path / "pytorch_model.bin.index.json").exists():
        return "torch", _shards(path, "pytorch_model.bin.index.json")
    raise NotFound(f"{path}: no model weights (model.safetensors, its index, or pytorch_model.bin)", field="path")


def _trainer_meta(path: Path) -> dict[str, Any]:
    st = _json(path / "trainer_state.json")
    if not isinstance(st, dict):
        raise Corrupt(f"{path / 'trainer_state.json'}: not a JSON object", field="path")
    meta: dict[str, Any] = {k: plain(st.get(k)) for k in ("global_step", "epoch", "best_metric",
                                                             "best_model_checkpoint", "max_steps") if k in st}
    hist = st.get("log_history") if isinstance(st.get("log_history"), list) else []
    meta["loss_curve"] = [[h.get("step"), h.get("loss")] for h in hist
                          if isinstance(h, dict) and isinstance(h.get("loss"), (int, float))]
    return meta


def inspect(path: Path, *, trust: bool = False) -> CheckpointInfo:
    meta: dict[str, Any] = {}
    fmt = "hf-model"
    if (path / "trainer_state.json").exists():
        fmt = "hf-trainer-checkpoint"
        meta.update(_trainer_meta(path))
        meta["files"] = sorted(n for n in (list(LISTED) + [p.name for p in path.glob("rng_state*.pth")])
                               if (path / n).exists())
    if (path / "config.json").exists():
        cfg = _json(path / "config.json")
        meta["config"] = plain(cfg)
    kind, files = _weight_files(path)
    tensors: list[TensorInfo] = []
    size = 0
    for f in files:
        size += gate.check_regular_file(f).st_size
        if kind == "safetensors":
            tensors += safetensors_file.header(f)
        else:
            tensors += torch_file.inspect(f, trust=trust).tensors
    if len(files) > 1:
        meta["shards"] = [f.name for f in files]
    info = CheckpointInfo(path=path, format=fmt, size=size, tensors=tensors, meta=meta)
    info.step = meta.get("global_step") if isinstance(meta.get("global_step"), int) else None
    ep = meta.get("epoch")
    info.epoch = ep if isinstance(ep, (int, float)) and not isinstance(ep, bool) else None
    if isinstance(meta.get("best_metric"), (int, float)):
        info.metrics = {"best_metric": meta["best_metric"]}
    return info


def load_weights(path: Path, *, trust: bool = False) -> dict[str, Any]:
    kind, files = _weight_files(path)
    out: dict[str, Any] = {}
    for f in files:
        out.update(safetensors_file.load_weights(f) if kind == "safetensors" else torch_file.load_weights(f, trust=trust))
    return out
