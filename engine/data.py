"""Data specs. `synthetic:regression`: a fixed random linear teacher R^10 -> R^20 plus noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest

SYNTHETIC = ("regression",)


@dataclass
class TensorData:
    """A dataset held as tensors, split deterministically into train and validation."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    target_kind: str  # "regression" (float targets) or "classes"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device) -> "TensorData":
        return TensorData(
            self.x_train.to(device), self.y_train.to(device), self.x_val.to(device), self.y_val.to(device),
            self.target_kind,
        )


def check_spec(text: str) -> str:
    text = (text or "").strip()
    kind, _, name = text.partition(":")
    if kind == "synthetic" and name in SYNTHETIC:
        return text
    raise InvalidRequest(f"unknown data spec {text!r} (available: {', '.join('synthetic:' + n for n in SYNTHETIC)})")


def load(text: str, *, size: int = 16384, val_fraction: float = 0.1, seed: int = 0) -> TensorData:
    import torch

    check_spec(text)
    g = torch.Generator().manual_seed(1234)  # the teacher is part of the dataset, not the run
    teacher_w = torch.randn(20, 10, generator=g) / 10**0.5
    teacher_b = torch.randn(20, generator=g) * 0.5
    gx = torch.Generator().manual_seed(5678 + seed)
    x = torch.randn(size, 10, generator=gx)
    y = x @ teacher_w.T + teacher_b + 0.1 * torch.randn(size, 20, generator=gx)
    n_val = max(1, int(size * val_fraction))
    return TensorData(x[n_val:], y[n_val:], x[:n_val], y[:n_val], "regression")
