"""The model catalogue (models registered in the workspace, then the built-ins) and
registering a user's own model: `package.module:callable` with JSON keyword arguments."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torchdeck import trust
from torchdeck.errors import InvalidRequest, TorchdeckError
from torchdeck.models import specs
from torchdeck.workspace import RegisteredModel, Workspace, toml_entry
from torchdeck.workspace import check_toml_value as toml_value

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
# An example input is built for real when the meta device cannot run the model: keep it small.
MAX_INPUT_DIMS, MAX_INPUT_DIM, MAX_INPUT_ELEMENTS = 8, 1 << 20, 1 << 28


def _product(dims: list[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


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
        spec = specs.resolve(entry.name, ws)
        model, _, _ = specs.build_on_meta(spec, import_root=trust.import_root_for(spec, ws, os.getcwd()))
        entry.num_params = specs.num_params(model)
    except TorchdeckError as e:
        entry.error = str(e)
    return entry


# -- registering ---------------------------------------------------------------------------------
def parse_kwargs(text: str | None) -> dict[str, Any]:
    text = (text or "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InvalidRequest(f"keyword arguments are not valid JSON: {e}", field="args") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"keyword arguments must be a JSON object like {{\"hidden\": 64}}, not {text}",
                             field="args")
    for k, v in value.items():  # what models.toml could not hold is refused before anything is built
        toml_value(v, "args", k)
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
        raise InvalidRequest(f"input shape must be whole numbers separated by commas, like 1,10; not {text!r}",
                             field="input_shape") from None
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise InvalidRequest(f"input shape needs a batch size and at least one more dimension, each >= 1, like 1,10; "
                             f"not {text!r}", field="input_shape")
    if len(dims) > MAX_INPUT_DIMS or any(d > MAX_INPUT_DIM for d in dims) or _product(dims) > MAX_INPUT_ELEMENTS:
        raise InvalidRequest(f"input shape {text!r} is too large: at most {MAX_INPUT_DIMS} dimensions of at most "
                             f"{MAX_INPUT_DIM:,} and {MAX_INPUT_ELEMENTS:,} values in all", field="input_shape")
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
    the model allows): InvalidRequest naming the cause and the field if either fails. The one
    "does the model take its input" check is the summary's."""
    from torchdeck.models import summary

    s = summary.summarize(spec, batch_size=1, import_root=import_root, strict=bool(spec.input_shape))
    out = s.output_shape if isinstance(s.output_shape, list) and all(isinstance(d, int) for d in s.output_shape) else None
    return CheckResult(s.params_total, output_shape=out, device=s.device_used)


def register(ws: Workspace, name: str, spec_text: str, *, kwargs: dict[str, Any] | None = None,
             input_shape: list[int] | None = None, description: str = "", import_root=None) -> tuple[RegisteredModel, CheckResult]:
    """Check everything, then register: nothing is written unless the model builds (and takes
    its example input)."""
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise InvalidRequest(
            f"model name {name!r} must start with a letter or _ and hold only letters, digits, _ . - (64 at most)",
            field="name")
    if name in specs.BUILTINS or name.startswith("builtin"):
        raise InvalidRequest(f"model name {name!r} is taken by a built-in (builtin:{name}); choose another",
                             code="exists", field="name")
    if ws.model(name) is not None:
        raise InvalidRequest(f"a model named {name!r} is already registered (remove it first)", code="exists",
                             field="name")
    spec_text = (spec_text or "").strip()
    if not spec_text.startswith("builtin:") and ":" not in spec_text:
        raise InvalidRequest(f"import path must look like package.module:callable (or builtin:NAME), not {spec_text!r}",
                             field="spec")
    root = str(Path(import_root if import_root is not None else os.getcwd()).resolve())
    # Everything that will be written is checked before the model is built (which runs its code).
    toml_entry(RegisteredModel(name=name, spec=spec_text, kwargs=dict(kwargs or {}), description=description,
                               input_shape=input_shape, import_root=root))
    spec = specs.resolve(spec_text, None, kwargs or {}, field="spec")
    if input_shape:
        spec = specs.replace(spec, input_shape=tuple(input_shape))
    result = check(spec, import_root=root)
    entry = RegisteredModel(name=name, spec=spec.spec, kwargs=dict(kwargs or {}), description=description,
                            input_shape=list(spec.input_shape) if spec.input_shape else None,
                            import_root=None if spec.builtin else root)
    ws.add_model(entry)
    return entry, result
