"""Model specs: `builtin:NAME`, a name registered in the workspace, or `package.module:callable`.

A spec names code. Building one the user typed or registered is their choice; a spec found
inside someone's checkpoint is only built when it is a built-in or registered here, unless the
caller was told to trust it (see Trust in shared/DESIGN.md).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from torchdeck.errors import InvalidRequest, NotFound

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torchdeck.workspace import Workspace


@dataclass(frozen=True)
class Builtin:
    name: str
    description: str
    input_shape: tuple[int, ...]
    default_data: str
    loss: str
    factory: Callable[..., Any]
    default_kwargs: dict[str, Any] = field(default_factory=dict)
    input_dtype: str = "float32"  # "int64" for token ids
    input_high: int | None = None  # token ids are drawn from [0, input_high)
    # (kwargs) -> (input_shape, input_high) of the model those kwargs build; None: the fixed ones
    input_for: Callable[[dict[str, Any]], tuple[tuple[int, ...], int | None]] | None = None

    def input_of(self, kwargs: dict[str, Any]) -> tuple[tuple[int, ...], int | None]:
        if self.input_for is None:
            return self.input_shape, self.input_high
        return self.input_for(kwargs)


def _linear(in_features: int = 10, out_features: int = 20):
    import torch.nn as nn

    return nn.Linear(in_features, out_features)


def _mlp(in_features: int = 20, hidden: int = 64, num_classes: int = 5, depth: int = 2, dropout: float = 0.0):
    """A classifier: `depth` hidden Linear+ReLU layers of width `hidden`, then class scores."""
    import torch.nn as nn

    if depth < 1:
        raise ValueError(f"depth must be at least 1, not {depth}")
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _cnn(in_channels: int = 1, num_classes: int = 10, channels: int = 8, image_size: int = 28):
    """Two 3x3 conv blocks (conv, ReLU, 2x2 max-pool; `channels` then 2*`channels` maps), then a
    linear classifier over the flattened maps. Images are in_channels x image_size x image_size."""
    import torch.nn as nn

    if image_size < 4:
        raise ValueError(f"image_size must be at least 4, not {image_size}")
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * channels * side * side, num_classes),
    )


@functools.cache
def _tiny_transformer_class():
    """Defined on first use, so that importing this module does not import torch."""
    import torch
    import torch.nn as nn

    class TinyTransformer(nn.Module):
        """Token ids (batch, seq) -> embedding + learned positions -> TransformerEncoder
        (batch_first, pre-norm) -> mean over positions -> LayerNorm -> class scores."""

        def __init__(self, vocab_size: int, seq_len: int, d_model: int, nhead: int, num_layers: int,
                     dim_feedforward: int, num_classes: int, dropout: float):
            super().__init__()
            self.seq_len = seq_len
            self.embed = nn.Embedding(vocab_size, d_model)
            self.pos = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)
            layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True,
                                               norm_first=True)
            # No nested-tensor conversion: it only serves padding masks, and export cannot trace it.
            self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, num_classes)

        def forward(self, tokens):
            length = tokens.shape[1]
            if length > self.seq_len:
                raise ValueError(f"a sequence of {length} tokens is longer than seq_len={self.seq_len}")
            h = self.embed(tokens) + self.pos[:length]
            h = self.encoder(h)
            return self.head(self.norm(h.mean(dim=1)))

    TinyTransformer.__module__ = __name__
    return TinyTransformer


def _tiny_transformer(vocab_size: int = 64, seq_len: int = 32, d_model: int = 32, nhead: int = 2,
                      num_layers: int = 2, dim_feedforward: int = 64, num_classes: int = 2,
                      dropout: float = 0.0):
    if d_model % nhead:
        raise ValueError(f"d_model={d_model} must be divisible by nhead={nhead}")
    return _tiny_transformer_class()(vocab_size, seq_len, d_model, nhead, num_layers, dim_feedforward,
                                     num_classes, dropout)


def _positive(kwargs: dict[str, Any], name: str, default: int) -> int:
    v = kwargs.get(name, default)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else default


# What one sample looks like for a built-in built with these kwargs (shape, integer range):
# an mlp built with in_features=30 eats 30 features, not the default 20.
def _linear_input(kw):
    return (_positive(kw, "in_features", 10),), None


def _mlp_input(kw):
    return (_positive(kw, "in_features", 20),), None


def _cnn_input(kw):
    side = _positive(kw, "image_size", 28)
    return (_positive(kw, "in_channels", 1), side, side), None


def _tiny_transformer_input(kw):
    return (_positive(kw, "seq_len", 32),), _positive(kw, "vocab_size", 64)


BUILTINS: dict[str, Builtin] = {
    "linear": Builtin(
        name="linear",
        description="Linear(10, 20): the classic first model to train, save and export",
        input_shape=(10,),
        default_data="synthetic:regression",
        loss="mse",
        factory=_linear,
        input_for=_linear_input,
    ),
    "mlp": Builtin(
        name="mlp",
        description="MLP classifier: 20 features -> 2 hidden ReLU layers of 64 -> 5 classes",
        input_shape=(20,),
        default_data="synthetic:classification",
        loss="cross_entropy",
        factory=_mlp,
        input_for=_mlp_input,
        default_kwargs={"in_features": 20, "hidden": 64, "num_classes": 5},
    ),
    "cnn": Builtin(
        name="cnn",
        description="Small conv net: 1x28x28 images -> two conv/pool blocks (8, 16 maps) -> 10 classes",
        input_shape=(1, 28, 28),
        default_data="synthetic:image",
        loss="cross_entropy",
        factory=_cnn,
        input_for=_cnn_input,
        default_kwargs={"in_channels": 1, "num_classes": 10, "channels": 8},
    ),
    "tiny-transformer": Builtin(
        name="tiny-transformer",
        description="Sequence classifier: 32 token ids (vocab 64) -> 2-layer TransformerEncoder, d_model 32 -> 2 classes",
        input_shape=(32,),
        default_data="synthetic:sequence",
        loss="cross_entropy",
        factory=_tiny_transformer,
        input_for=_tiny_transformer_input,
        default_kwargs={"vocab_size": 64, "seq_len": 32, "d_model": 32, "num_layers": 2, "num_classes": 2},
        input_dtype="int64",
        input_high=64,
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """A resolved spec: what to import and call, with what, and what it eats."""

    spec: str  # builtin:NAME or package.module:callable
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None  # one sample, without the batch axis
    registered_as: str | None = None
    input_dtype: str = "float32"
    input_high: int | None = None  # for integer inputs: values are drawn from [0, input_high)

    @property
    def builtin(self) -> Builtin | None:
        if self.spec.startswith("builtin:"):
            return BUILTINS.get(self.spec.split(":", 1)[1])
        return None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ModelSpec":
        if not isinstance(d, dict) or not isinstance(d.get("spec"), str):
            raise InvalidRequest("model spec record has no 'spec'", code="corrupt")
        shape = d.get("input_shape")
        return cls(
            spec=d["spec"],
            kwargs=dict(d.get("kwargs") or {}),
            input_shape=tuple(int(x) for x in shape) if shape else None,
            registered_as=d.get("registered_as"),
            input_dtype=str(d.get("input_dtype") or "float32"),
            input_high=d.get("input_high"),
        )

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.spec}({args})" if args else self.spec


def resolve(text: str, workspace: "Workspace | None" = None, kwargs: dict[str, Any] | None = None,
            *, field: str | None = "model") -> ModelSpec:
    """Turn what the user typed into a ModelSpec, or say clearly why it is not one."""
    text = (text or "").strip()
    if not text:
        raise InvalidRequest("no model given", field=field)
    if text.startswith("builtin:"):
        name = text.split(":", 1)[1]
        b = BUILTINS.get(name)
        if b is None:
            raise NotFound(f"unknown built-in model {name!r} (built-ins: {', '.join(BUILTINS)})", field=field)
        merged = {**b.default_kwargs, **(kwargs or {})}
        shape, high = b.input_of(merged)
        return ModelSpec(spec=text, kwargs=merged, input_shape=shape, input_dtype=b.input_dtype, input_high=high)
    if workspace is not None:
        reg = workspace.model(text)
        if reg is not None:
            inner = resolve(reg.spec, None, {**reg.kwargs, **(kwargs or {})}, field=field)
            shape = tuple(reg.input_shape) if reg.input_shape else inner.input_shape
            return replace(inner, input_shape=shape, registered_as=reg.name)
    if ":" in text:
        module, _, attr = text.partition(":")
        if module and attr and all(p.isidentifier() for p in module.split(".")) and all(
            p.isidentifier() for p in attr.split(".")
        ):
            return ModelSpec(spec=text, kwargs=dict(kwargs or {}))
    if text in BUILTINS:
        return resolve(f"builtin:{text}", None, kwargs, field=field)
    known = [f"builtin:{n}" for n in BUILTINS]
    if workspace is not None:
        known += [m.name for m in workspace.models()]
    damaged = getattr(workspace, "registry_problem", None)
    raise NotFound(
        f"unknown model {text!r}: expected one of {', '.join(known)} or package.module:callable"
        + (f" (registered models are not available: {damaged})" if damaged else ""), field=field
    )


def is_trusted(spec: ModelSpec, workspace: "Workspace | None") -> bool:
    """Whether a spec read from a file may be built here: the gate is torchdeck.trust."""
    from torchdeck import trust

    return trust.is_trusted(spec, workspace)


def build(spec: ModelSpec, *, import_root: str | Path | None = None, field: str | None = "model") -> "torch.nn.Module":
    """Build the model. Importing a user's module runs their code: torchdeck.trust decides first
    for specs read from files; a spec the user typed or registered is their choice."""
    import torch.nn as nn

    b = spec.builtin
    if b is not None:
        factory = b.factory
    else:
        factory = import_callable(spec.spec, import_root, field=field)
    try:
        inspect.signature(factory).bind(**spec.kwargs)
    except TypeError as e:
        raise InvalidRequest(f"{spec.spec}: arguments do not fit: {e}", field="args" if spec.kwargs else field) from None
    except ValueError:
        pass  # no signature to check (a C function): let the call say
    try:
        model = factory(**spec.kwargs)
    except Exception as e:  # the user's code: its message is the cause
        raise InvalidRequest(f"{spec.spec} raised {type(e).__name__}: {e}", field=field) from None
    if not isinstance(model, nn.Module):
        raise InvalidRequest(f"{spec.spec} returned {type(model).__name__}, not a torch.nn.Module", field=field)
    return model


def build_on_meta(spec: ModelSpec, *, import_root: str | Path | None = None,
                  field: str | None = "model") -> tuple["torch.nn.Module", str, str | None]:
    """Build on the meta device (shapes and dtypes, no memory for weights) where the model
    allows, else on the CPU. Returns (model, "meta" or "cpu", why meta was given up)."""
    import torch

    if spec.builtin is None:
        # Import the user's module first, outside the meta device: tensors it makes at import
        # time (module-level constants) must be real, for every later build in this process.
        import_callable(spec.spec, import_root, field=field)
    try:
        with torch.device("meta"):
            model = build(spec, import_root=import_root, field=field)
    except InvalidRequest as e:
        return build(spec, import_root=import_root, field=field), "cpu", str(e)  # its error, if any, is the real one
    off_meta = {t.device.type for t in (*model.parameters(), *model.buffers())} - {"meta"}
    if off_meta:  # the factory put tensors on a device of its own choosing: build it as it wants
        del model
        return (build(spec, import_root=import_root, field=field), "cpu",
                f"the model creates some tensors on {', '.join(sorted(off_meta))}, not on meta")
    return model, "meta", None


def import_callable(spec: str, import_root: str | Path | None, *, field: str | None = "model") -> Callable[..., Any]:
    """Import `package.module:callable` with `import_root` appended to sys.path (never first:
    torchdeck's own packages must win over a user's of the same name). When the root holds the
    top-level module, that one is imported, whatever else of the same name comes earlier on
    sys.path or was imported before from another root (a long-lived TUI meets several)."""
    module_name, _, attr = spec.partition(":")
    try:
        if import_root is not None:
            root = str(Path(import_root).resolve())
            if root not in sys.path:
                sys.path.append(root)
            _top_level_from(module_name.split(".")[0], root)
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise InvalidRequest(f"cannot import {module_name!r}: {e}", field=field) from None
    except Exception as e:
        raise InvalidRequest(f"importing {module_name!r} raised {type(e).__name__}: {e}", field=field) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InvalidRequest(f"module {module_name!r} has no attribute {attr!r}", field=field) from None
    if not callable(obj):
        raise InvalidRequest(f"{spec} is not callable", field=field)
    return obj


def _top_level_from(top: str, root: str) -> None:
    """Make sys.modules[top] the module `root` holds, if it holds one."""
    import importlib.machinery
    import importlib.util

    found = importlib.machinery.PathFinder.find_spec(top, [root])
    if found is None or found.origin is None or found.loader is None:
        return  # not there (e.g. torch.nn:...), or a namespace package: the ordinary import decides
    current = sys.modules.get(top)
    if current is not None and getattr(current, "__file__", None) and \
            Path(current.__file__).resolve() == Path(found.origin).resolve():
        return
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]
    module = importlib.util.module_from_spec(found)
    sys.modules[top] = module
    try:
        found.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(top, None)
        raise


def example_input(spec: ModelSpec, batch_size: int = 2, *, device=None, seed: int = 0):
    """A batch the model accepts, from its input shape and dtype (token ids for int inputs).
    On the meta device it costs no memory."""
    import torch

    if not spec.input_shape:
        raise InvalidRequest(f"{spec.spec}: no example input shape known (give one, e.g. 1,10)", field="input_shape")
    shape = (batch_size, *spec.input_shape)
    dtype = getattr(torch, spec.input_dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise InvalidRequest(f"{spec.spec}: unknown input dtype {spec.input_dtype!r}", code="corrupt")
    if device is not None and torch.device(device).type == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        x = torch.randn(shape, generator=g).to(dtype)
    else:
        x = torch.randint(0, spec.input_high or 2, shape, generator=g, dtype=dtype)
    return x if device is None else x.to(device)


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
