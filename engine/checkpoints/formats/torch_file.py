"""Other people's PyTorch files: `.pt/.pth/.bin/.tar` state dicts, training dicts, Lightning
`.ckpt`. Loaded through the trust gate (weights_only, the checkpoint allowlist)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchdeck import trust as gate
from torchdeck.errors import Corrupt

from .base import CheckpointInfo, TensorInfo

NAME = "torch"
SUFFIXES = (".pt", ".pth", ".bin", ".tar", ".ckpt")
# Where training dicts keep the model's weights (Lightning: state_dict; many scripts: model...).
STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


def claims(path: Path) -> bool:
    return not path.is_dir()  # any other file is tried as a torch file (many carry odd suffixes)


def _state_dict(path: Path, obj: Any) -> tuple[dict[str, Any], str]:
    import torch

    def is_sd(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())

    if is_sd(obj):
        return dict(obj), "torch-state-dict"
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if is_sd(obj.get(key)):
                return dict(obj[key]), "torch-training-dict"
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict(), "torch-module"
    raise Corrupt(f"{path}: holds no state dict (a {type(obj).__name__})", field="path")


def read(path: Path, *, trust: bool = False) -> tuple[dict[str, Any], str]:
    """(state dict, format label) of a torch file."""
    return _state_dict(path, gate.torch_load(path, kind="checkpoint", trust=trust))


def inspect(path: Path, *, trust: bool = False) -> CheckpointInfo:
    st = gate.check_regular_file(path)
    state, fmt = read(path, trust=trust)
    tensors = [TensorInfo(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    return CheckpointInfo(path=path, format=fmt, size=st.st_size, tensors=tensors)


def load_weights(path: Path, *, trust: bool = False) -> dict[str, Any]:
    return read(path, trust=trust)[0]
