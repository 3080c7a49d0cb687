"""The model catalogue (models registered in the workspace, then the built-ins) and
registering a user's own model: `package.module:callable` with JSON keyword arguments."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from torchdeck.errors import InvalidRequest, TorchdeckError
from torchdeck.models import specs
from torchdeck.workspace import RegisteredModel, Workspace

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


@dataclass
class ModelEntry:
    name: str
    spec: str
    description: str = ""
    num_params: int | None = None  # None until built (needs torch)
    error: str = ""  # why it did not build
    registered: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: list[int] | None = None

    @property
    def fp32_bytes(self) -> int | None:
        return None if self.num_params is None else self.num_params * 4

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "fp32_bytes": self.fp32_bytes}


def catalogue(ws: Workspace, *, count_params: bool = False) -> list[ModelEntry]:
    """Registered models first, then built-ins. count_params builds each model on the meta
    device (imports torch, and a registered spec's module: the user registered it)."""
    entries = [ModelEntry(m.name, m.spec, m.description, kwargs=dict(m.kwargs), input_shape=m.input_shape)
               for m in ws.models()]
    entries += [ModelEntry(f"builtin:{b.name}", f"builtin:{b.name}", b.description, registered=False,
                           kwargs=dict(b.default_kwargs), input_shape=list(b.input_shape))
                for b in specs.BUILTINS.values()]
    if count_params:
        for e in entries:
            count(ws, e)
    return entries


def count(ws: Workspace, entry: ModelEntry) -> ModelEntry:
    try:
        model = build_cheaply(specs.resolve(entry.name, ws), import_root=os.getcwd())
        entry.num_params = specs.num_params(model)
    except TorchdeckError as e:
        entry.error = str(e)
    return entry


def build_cheaply(spec: specs.ModelSpec, *, import_root=None):
    """Build on the meta device (no memory for weights); on CPU if the model cannot be built there."""
    import torch

    if spec.builtin is None:
        # Import the user's module outside meta first: module-level tensors made under meta
        # would stay meta and break every later real build in this process.
        specs._import_callable(spec.spec, import_root)
    try:
        with torch.device("meta"):
            return specs.build(spec, import_root=import_root)
    except InvalidRequest as e:
        if "meta" not in str(e).lower():
            raise
    return specs.build(spec, import_root=import_root)


# -- registering ---------------------------------------------------------------------------------
def parse_kwargs(text: str | None) -> dict[str, Any]:
    text = (text or "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InvalidRequest(f"keyword arguments are not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"keyword arguments must be a JSON object like {{\"hidden\": 64}}, not {text}")
    return value


def parse_input_shape(text: str | None) -> list[int] | None:
    """`1,10` (batch first, as the user writes an example input) -> [10], one sample's shape."""
    text = (text or "").strip().strip("()[]")
    if not text:
        return None
    parts = [p.strip() for p in re.split(r"[,x ]+", text) if p.strip()]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise InvalidRequest(f"input shape must be whole numbers separated by commas, like 1,10; not {text!r}") from None
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise InvalidRequest(f"input shape needs a batch size and at least one more dimension, each >= 1, like 1,10; not {text!r}")
    return dims[1:]


@dataclass
class CheckResult:
    num_params: int
    output_shape: list[int] | None = None
    device: str = "meta"

    def describe(self) -> str:
        text = f"builds: {self.num_params:,} parameters"
        if self.output_shape is not None:
            text += f"; output shape {tuple(self.output_shape)}"
        return text


def check(spec: specs.ModelSpec, *, import_root=None) -> CheckResult:
    """Build the model and, when an input shape is known, run one forward pass (on meta where
    the model allows): InvalidRequest naming the cause if either fails."""
    import torch

    model = build_cheaply(spec, import_root=import_root)
    device = next((p.device.type for p in model.parameters()), "cpu")
    result = CheckResult(specs.num_params(model), device=device)
    if spec.input_shape:
        x = specs.example_input(spec, 1, device=device if device == "meta" else None)
        try:
            with torch.no_grad():
                out = model.eval()(x)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InvalidRequest(
                f"the model rejects input shape {tuple(x.shape)}: {type(e).__name__}: {first}") from None
        if isinstance(out, torch.Tensor):
            result.output_shape = list(out.shape)
    return result


def register(ws: Workspace, name: str, spec_text: str, *, kwargs: dict[str, Any] | None = None,
             input_shape: list[int] | None = None, description: str = "", import_root=None) -> tuple[RegisteredModel, CheckResult]:
    """Check everything, then register: nothing is written unless the model builds (and takes
    its example input)."""
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise InvalidRequest(
            f"model name {name!r} must start with a letter or _ and hold only letters, digits, _ . - (64 at most)")
    if ws.model(name) is not None:
        raise InvalidRequest(f"a model named {name!r} is already registered (remove it first)")
    spec_text = (spec_text or "").strip()
    if not spec_text.startswith("builtin:") and ":" not in spec_text:
        raise InvalidRequest(f"import path must look like package.module:callable (or builtin:NAME), not {spec_text!r}")
    spec = specs.resolve(spec_text, None, kwargs or {})
    if input_shape:
        spec = specs.replace(spec, input_shape=tuple(input_shape))
    result = check(spec, import_root=import_root)
    entry = RegisteredModel(name=name, spec=spec.spec, kwargs=dict(kwargs or {}), description=description,
                            input_shape=list(spec.input_shape) if spec.input_shape else None)
    ws.add_model(entry)
    return entry, result
