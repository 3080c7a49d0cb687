"""Other people's PyTorch files (zip or legacy `torch.save`, pickle protocols 2-5): plain state
dicts, training dicts, Lightning `.ckpt`, timm checkpoints. Read through the trust gate's
restricted unpickler: unknown classes (hyper-parameters, `args`) come back as named
placeholders, a call to an unknown global is refused; zip files are memory-mapped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchdeck import trust as gate

from .base import CheckpointInfo, TensorInfo, plain, summarize_optimizer

NAME = "torch"
SUFFIXES = (".pt", ".pth", ".bin", ".tar", ".ckpt")
# Where training dicts keep the model's weights (Lightning and timm: state_dict; many scripts:
# model_state_dict, model...).
STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
OPTIMIZER_KEYS = ("optimizer_states", "optimizer_state_dict", "optimizer")
SCHEDULER_KEYS = ("lr_schedulers", "scheduler_state_dict", "scheduler", "lr_scheduler")


def claims(path: Path) -> bool:
    return not path.is_dir()  # any other file is tried as a torch file (many carry odd suffixes)


def sniff(head: bytes) -> bool:
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")


def _is_sd(d: Any) -> bool:
    import torch

    return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values()) \
        and all(isinstance(k, str) for k in d)


def _kind(obj: dict[str, Any]) -> str:
    if "pytorch-lightning_version" in obj or ("state_dict" in obj and "global_step" in obj and "loops" in obj):
        return "lightning"
    if "arch" in obj and "state_dict" in obj:
        return "timm"
    return "torch-training-dict"


def _state_dict(path: Path, obj: Any, seen: list[str], trust: bool) -> tuple[dict[str, Any], str, str | None]:
    """(state dict, format label, key it was found under)."""
    import torch

    if _is_sd(obj):
        return dict(obj), "torch-state-dict", None
    if isinstance(obj, dict) and not isinstance(obj, gate.Placeholder):
        for key in STATE_KEYS:
            if _is_sd(obj.get(key)):
                return dict(obj[key]), _kind(obj), key
    if trust and isinstance(obj, torch.nn.Module):
        return obj.state_dict(), "torch-module", None
    if seen:  # e.g. a whole nn.Module pickled: its classes would have to be imported
        raise gate.refused_error(path, seen, why="its weights are inside objects whose code would run on load")
    from torchdeck.errors import Corrupt

    raise Corrupt(f"{path}: holds no state dict (a {type(obj).__name__})", field="path")


def read(path: Path, *, trust: bool = False) -> tuple[dict[str, Any], str, Any, str | None]:
    """(state dict, format label, the whole loaded object, the key of the state dict)."""
    seen: list[str] = []
    if trust:
        obj = gate.torch_load(path, kind="checkpoint", trust=True)
    else:
        obj = gate.restricted_torch_load(path, kind="checkpoint", seen=seen)
    state, fmt, key = _state_dict(path, obj, seen, trust)
    return state, fmt, obj, key


def _metadata(obj: Any, key: str | None) -> dict[str, Any]:
    if not isinstance(obj, dict) or key is None:
        return {}
    meta: dict[str, Any] = {}
    for k, v in obj.items():
        if k == key or not isinstance(k, str):
            continue
        if k in OPTIMIZER_KEYS:
            meta["optimizer"] = summarize_optimizer(v)
        elif k in ("state_dict_ema", "model_ema", "ema"):
            meta[k] = _ema_summary(v, obj[key])
        else:
            meta[k] = plain(v)
    if "pytorch-lightning_version" in meta:
        meta["library"] = f"pytorch-lightning {meta['pytorch-lightning_version']}"
    return meta


def _ema_summary(ema: Any, state: dict[str, Any]) -> dict[str, Any]:
    """Size of an EMA copy of the weights (timm's state_dict_ema), and whether it has the same
    tensors and shapes as the state dict (an EMA of another architecture would not load)."""
    if not _is_sd(ema):
        return {"tensors": len(ema) if isinstance(ema, dict) else None}
    return {"tensors": len(ema), "params": sum(t.numel() for t in ema.values()),
            "same_shapes_as_state_dict": {n: tuple(t.shape) for n, t in ema.items()}
            == {n: tuple(t.shape) for n, t in state.items()}}


def inspect(path: Path, *, trust: bool = False) -> CheckpointInfo:
    st = gate.check_regular_file(path)
    state, fmt, obj, key = read(path, trust=trust)
    tensors = [TensorInfo(k, list(v.shape), str(v.dtype).removeprefix("torch."), v.element_size() * v.numel())
               for k, v in state.items()]
    meta = _metadata(obj, key)
    info = CheckpointInfo(path=path, format=fmt, size=st.st_size, tensors=tensors, meta=meta)
    info.epoch = _int(meta.get("epoch"))
    info.step = _int(meta.get("global_step", meta.get("step")))
    if isinstance(meta.get("metric"), (int, float)):
        info.metrics = {"metric": meta["metric"]}
    return info


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def load_weights(path: Path, *, trust: bool = False) -> dict[str, Any]:
    return read(path, trust=trust)[0]
