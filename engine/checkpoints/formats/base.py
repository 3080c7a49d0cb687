"""What every checkpoint format shares: the description of a checkpoint and the protocol a
format module follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


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


class CheckpointFormat(Protocol):
    """One module per format: `claims` says whether a path is of this format (by its kind and
    name, reading nothing), `inspect` describes it, `load_weights` gives its tensors on the CPU.
    Neither runs code from the file unless `trust` is given (and only the torch format uses it)."""

    NAME: str

    def claims(self, path: Path) -> bool: ...
    def inspect(self, path: Path, *, trust: bool = False) -> CheckpointInfo: ...
    def load_weights(self, path: Path, *, trust: bool = False) -> dict[str, Any]: ...
