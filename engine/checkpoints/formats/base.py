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
    nbytes: int | None = None

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
            "num_bytes": self.num_bytes,
            "tensors": [{"name": t.name, "shape": t.shape, "dtype": t.dtype, "bytes": t.nbytes} for t in self.tensors],
            "metadata": plain(self.meta),
        }

    @property
    def num_bytes(self) -> int:
        return sum(t.nbytes or 0 for t in self.tensors)


_DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
                "int8": 1, "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "complex64": 8,
                "complex128": 16, "uint16": 2, "uint32": 4, "uint64": 8}


def dtype_bytes(dtype: str) -> int | None:
    return _DTYPE_BYTES.get(dtype.removeprefix("torch."))


# Values one `plain` call renders at most: a pickle's memo lets a small file share one list a
# thousand times at every level (and omegaconf nodes point back at their parents), which rendered
# in full would never end.
MAX_NODES = 100_000


def plain(v: Any, depth: int = 0, budget: list[int] | None = None) -> Any:
    """A JSON-able rendering of metadata read from a file: containers, numbers and strings kept;
    tensors by shape and dtype; placeholders (classes not imported) by class name and content."""
    budget = [MAX_NODES] if budget is None else budget
    budget[0] -= 1
    if depth > 20 or budget[0] < 0:
        return "..."
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else str(v)
    from torchdeck import trust as gate

    if isinstance(v, gate.Placeholder):
        if v.class_name.startswith("omegaconf."):
            return {"__class__": v.class_name, "value": _omegaconf(v, depth + 1, budget)}
        return {"__class__": v.class_name, "value": plain(v.content(), depth + 1, budget)}
    if isinstance(v, dict):
        return {str(k): plain(x, depth + 1, budget) for k, x in list(v.items())[:1000]}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [plain(x, depth + 1, budget) for x in list(v)[:1000]]
    if type(v).__name__ == "Namespace":
        return plain(vars(v), depth + 1, budget)
    shape = getattr(v, "shape", None)
    if shape is not None and hasattr(v, "dtype"):
        if getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
            try:
                return plain(v.item(), depth + 1, budget)
            except Exception:
                pass
        return {"tensor": list(shape), "dtype": str(v.dtype).removeprefix("torch.")}
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    return str(v)[:200]


def _omegaconf(v: Any, depth: int, budget: list[int]) -> Any:
    """An omegaconf DictConfig, ListConfig or value node (read as placeholders) as the values it
    holds, like `OmegaConf.to_container` without resolving interpolations: its nodes' metadata and
    links back to their parents are left out."""
    from torchdeck import trust as gate

    if not (isinstance(v, gate.Placeholder) and v.class_name.startswith("omegaconf.")):
        return plain(v, depth, budget)
    budget[0] -= 1
    if depth > 20 or budget[0] < 0:
        return "..."
    state = v.content()
    if not isinstance(state, dict) or not ({"_content", "_val"} & set(state)):
        return plain(state, depth + 1, budget)  # some other omegaconf object: its state as it is
    inner = state["_content"] if "_content" in state else state["_val"]
    if isinstance(inner, dict):
        return {str(k): _omegaconf(x, depth + 1, budget) for k, x in list(inner.items())[:1000]}
    if isinstance(inner, (list, tuple)):
        return [_omegaconf(x, depth + 1, budget) for x in list(inner)[:1000]]
    return plain(inner, depth + 1, budget)  # None, "???" (missing), "${...}" (an interpolation)


def summarize_optimizer(v: Any) -> Any:
    """Type (guessed from its hyper-parameters) and size of an optimizer state dict (or a list
    of them, as Lightning keeps)."""
    if isinstance(v, (list, tuple)):
        return [summarize_optimizer(x) for x in v]
    if not isinstance(v, dict) or "param_groups" not in v:
        return plain(v)
    groups = v.get("param_groups") or []
    g = groups[0] if groups and isinstance(groups[0], dict) else {}
    if "betas" in g:
        kind = "AdamW" if g.get("decoupled_weight_decay") or (g.get("weight_decay", 0) >= 0.01) else "Adam"
    elif "momentum" in g and "nesterov" in g:
        kind = "SGD"
    elif "alpha" in g and "centered" in g:
        kind = "RMSprop"
    elif "lr_decay" in g:
        kind = "Adagrad"
    else:
        kind = "unknown"
    n_tensors = n_bytes = 0
    state = v.get("state") or {}
    for s in state.values() if isinstance(state, dict) else []:
        for t in (s.values() if isinstance(s, dict) else []):
            if hasattr(t, "element_size") and hasattr(t, "numel"):
                n_tensors += 1
                n_bytes += t.element_size() * t.numel()
    return {"type": kind, "param_groups": len(groups), "params": sum(len(x.get("params", [])) for x in groups
                                                                    if isinstance(x, dict)),
            "lr": plain(g.get("lr")), "state_tensors": n_tensors, "state_bytes": n_bytes}


def tensor_stats(t: Any) -> dict[str, Any]:
    """min, max, mean, std and NaN/inf counts of one tensor (float64 accumulation)."""
    import torch

    out: dict[str, Any] = {"nan": 0, "inf": 0, "min": None, "max": None, "mean": None, "std": None}
    if t.numel() == 0 or t.dtype == torch.bool or t.is_complex():
        return out
    x = t.detach().reshape(-1)
    if x.is_floating_point():
        out["nan"] = int(torch.isnan(x).sum())
        out["inf"] = int(torch.isinf(x).sum())
        x = x[torch.isfinite(x)]
    x = x.double()
    if x.numel():
        out.update(min=float(x.min()), max=float(x.max()), mean=float(x.mean()),
                   std=float(x.std()) if x.numel() > 1 else 0.0)
    return out


class CheckpointFormat(Protocol):
    """One module per format: `claims` says whether a path is of this format (by its kind and
    name, reading nothing), `inspect` describes it, `load_weights` gives its tensors on the CPU.
    Neither runs code from the file unless `trust` is given (and only the torch format uses it)."""

    NAME: str

    def claims(self, path: Path) -> bool: ...
    def inspect(self, path: Path, *, trust: bool = False) -> CheckpointInfo: ...
    def load_weights(self, path: Path, *, trust: bool = False) -> dict[str, Any]: ...
