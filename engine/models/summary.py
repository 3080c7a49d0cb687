"""Model summary: the layer tree with parameter counts and output shapes, totals, weight sizes,
a training-memory estimate and the model's repr, from one forward pass on the `meta` device.

The model is built under `torch.device("meta")`: every parameter and buffer has a shape and a
dtype but no storage, so a 100M-parameter model costs no memory and builds in milliseconds. One
forward pass on a meta example input, with hooks on every module, records each module's output
shape. Only when the meta build fails, or the meta forward fails (a model that reads its data,
e.g. `.item()`, or an op without a meta kernel), is the model built for real on the CPU; for the
forward that fallback is limited to models whose weights fit `cpu_fallback_max_bytes`. Which one
was used is `ModelSummary.device_used`.

A forward pass the model rejects (a wrong input shape) is recorded (`forward_error`, the
exception's own first line, and `forward_error_at`, the innermost module that was running), not
raised; `check_forward` or `summarize(..., strict=True)` raise `InvalidRequest` instead.

torch is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchdeck import trust as gate
from torchdeck.errors import InvalidRequest
from torchdeck.models import specs
from torchdeck.models.specs import ModelSpec
from torchdeck.options import OPTIMIZERS

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torchdeck.workspace import Workspace

# Bytes per element when the weights are cast to that dtype (bf16 and fp16 are both 2 bytes).
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
DEFAULT_CPU_FALLBACK_MAX_BYTES = 512 * 2**20

Shape = Any  # list[int] for a tensor; list[Shape] for a tuple/list; dict[str, Shape]; str: a type name


@dataclass
class LayerInfo:
    """One module of the tree, in module order (`named_modules`, shared modules included at
    every path they appear under). `params_*` are the module's own parameters (not its
    children's); `total_*` are recursive. A parameter shared by several modules (tied weights)
    is counted where it first appears; later owners list it in `shared` and count 0 for it."""

    path: str  # "" for the root, else e.g. "encoder.layers.0.self_attn"
    name: str  # last part of the path ("" for the root)
    depth: int  # 0 for the root
    type: str  # class name
    params_trainable: int = 0
    params_frozen: int = 0
    total_trainable: int = 0
    total_frozen: int = 0
    buffers: int = 0  # own buffer elements
    output_shape: Shape | None = None  # first call's output; None: not called (or no forward)
    calls: int = 0  # how many times the forward pass called it
    parent: str | None = None
    children: list[str] = field(default_factory=list)
    same_as: str | None = None  # this module object already appeared at that path
    shared: list[str] = field(default_factory=list)  # "weight = encoder.embed.weight"
    extra: str = ""  # first line of extra_repr(), e.g. "in_features=10, out_features=20, bias=True"

    @property
    def params(self) -> int:
        return self.params_trainable + self.params_frozen

    @property
    def total(self) -> int:
        return self.total_trainable + self.total_frozen

    @property
    def output_text(self) -> str:
        return format_shape(self.output_shape)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "depth": self.depth,
            "type": self.type,
            "params": self.params,
            "params_trainable": self.params_trainable,
            "params_frozen": self.params_frozen,
            "total": self.total,
            "total_trainable": self.total_trainable,
            "total_frozen": self.total_frozen,
            "buffers": self.buffers,
            "output_shape": self.output_shape,
            "output": self.output_text,
            "calls": self.calls,
            "parent": self.parent,
            "children": list(self.children),
            "same_as": self.same_as,
            "shared": list(self.shared),
            "extra": self.extra,
        }


@dataclass
class MemoryEstimate:
    """Training memory in bytes for one step at `batch_size` with `optimizer`, in the
    parameters' own dtype (fp32 unless the model says otherwise); see `summarize`."""

    batch_size: int
    optimizer: str
    momentum: float
    weights: int  # parameters
    buffers: int
    gradients: int  # trainable parameters only
    optimizer_state: int  # adam/adamw: 2 per trainable parameter; sgd: 0, or 1 with momentum
    activations: int | None  # None: no forward pass (no input shape, or it failed)
    total: int  # the sum of the above (activations counted as 0 when unknown)

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "momentum": self.momentum,
            "weights": self.weights,
            "buffers": self.buffers,
            "gradients": self.gradients,
            "optimizer_state": self.optimizer_state,
            "activations": self.activations,
            "total": self.total,
        }


@dataclass
class ModelSummary:
    spec: ModelSpec | None
    device_used: str  # "meta" or "cpu"
    meta_error: str | None  # why the meta device was given up, when device_used is "cpu"
    batch_size: int
    input_shape: list[int] | None  # with the batch axis; None: no forward pass
    input_dtype: str | None
    forward_mode: str | None  # "train", or "eval" when only eval mode ran (BatchNorm at batch 1)
    forward_error: str | None  # the exception's own message, first line
    forward_error_type: str | None
    forward_error_at: str | None  # path of the innermost module running when it failed
    output_shape: Shape | None
    params_total: int
    params_trainable: int
    params_frozen: int
    param_tensors: int
    param_dtypes: dict[str, int]  # dtype name -> elements
    uninitialized: int  # lazy parameters and buffers still without a shape (not counted anywhere)
    buffers_count: int  # buffer tensors
    buffers_elements: int
    buffers_bytes: int
    sizes: dict[str, dict[str, int]]  # "params" / "params_and_buffers" -> fp32/bf16/fp16/int8/as_built
    memory: MemoryEstimate
    layers: list[LayerInfo]
    repr: str
    seconds: float

    @property
    def forward_ok(self) -> bool:
        return self.input_shape is not None and self.forward_error is None

    def layer(self, path: str) -> LayerInfo:
        for info in self.layers:
            if info.path == path:
                return info
        raise KeyError(path)

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_json() if self.spec is not None else None,
            "device_used": self.device_used,
            "meta_error": self.meta_error,
            "forward": {
                "batch_size": self.batch_size,
                "input_shape": self.input_shape,
                "input_dtype": self.input_dtype,
                "mode": self.forward_mode,
                "error": self.forward_error,
                "error_type": self.forward_error_type,
                "error_at": self.forward_error_at,
                "output_shape": self.output_shape,
            },
            "params": {
                "total": self.params_total,
                "trainable": self.params_trainable,
                "frozen": self.params_frozen,
                "tensors": self.param_tensors,
                "dtypes": dict(self.param_dtypes),
                "uninitialized": self.uninitialized,
            },
            "buffers": {"count": self.buffers_count, "elements": self.buffers_elements, "bytes": self.buffers_bytes},
            "sizes": {k: dict(v) for k, v in self.sizes.items()},
            "memory": self.memory.to_json(),
            "layers": [info.to_json() for info in self.layers],
            "repr": self.repr,
            "seconds": round(self.seconds, 4),
        }


# -- public entry points ---------------------------------------------------------------------------
def summarize(
    spec: ModelSpec,
    *,
    batch_size: int = 1,
    optimizer: str = "adam",
    momentum: float = 0.0,
    import_root: str | Path | None = None,
    workspace: "Workspace | None" = None,
    trust: bool = True,
    strict: bool = False,
    cpu_fallback_max_bytes: int | None = DEFAULT_CPU_FALLBACK_MAX_BYTES,
) -> ModelSummary:
    """Summarize the model a spec builds, on the meta device where the model allows.

    - `trust=False` refuses (UnsafeFile) a spec that is neither built-in nor registered in
      `workspace`, as `specs.build_checked` does: for specs that came from a file. The default
      is for specs the user typed or registered.
    - A spec without an input shape gets everything but output shapes and activations.
    - A forward pass the model rejects is recorded in `forward_error`; `strict=True` raises
      InvalidRequest naming the input shape and the cause instead (see `check_forward`).
    - If the meta forward fails, the model is rebuilt on the CPU and tried again only when its
      weights take at most `cpu_fallback_max_bytes` (None: always); a larger model keeps the
      meta error.

    Memory estimate (bytes, one training step, parameters in their own dtype, fp32 normally):
    weights (parameters) + buffers + gradients (trainable parameters) + optimizer state
    (adam/adamw: 2 values per trainable parameter, exp_avg and exp_avg_sq; sgd: 0, or 1 with
    momentum; the per-tensor `step` scalars are left out) + activations. Activations are the
    input batch plus every distinct tensor a module returned during the forward pass at this
    batch size (a tensor returned by several modules, e.g. a Sequential and its last layer, or a
    view of one already counted, is counted once). That is what autograd keeps for the backward
    pass in a plain stack of layers; it misses intermediates computed inside a single module's
    forward (e.g. the attention scores inside nn.MultiheadAttention, the hidden tensor of a
    fused op) and counts outputs autograd may not keep (e.g. a ReLU's input), and it ignores the
    allocator's caching and fragmentation. Treat it as an order of magnitude, not a limit.
    """
    if optimizer not in OPTIMIZERS:
        raise InvalidRequest(f"unknown optimizer {optimizer!r} (expected one of {', '.join(OPTIMIZERS)})",
                             field="optimizer")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidRequest(f"batch size must be a positive integer, not {batch_size!r}", field="batch_size")
    if not trust:
        gate.check_spec_trusted(spec, workspace)
    import_root = gate.import_root_for(spec, workspace, import_root)  # a registered spec: its own root
    t0 = time.perf_counter()
    model, device_used, meta_error = specs.build_on_meta(spec, import_root=import_root)

    run: _Forward | None = None
    if spec.input_shape:
        run = _forward(model, specs.example_input(spec, batch_size, device=device_used))
        if run.error is not None and device_used == "meta":
            weight_bytes = _tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers())
            if cpu_fallback_max_bytes is None or weight_bytes <= cpu_fallback_max_bytes:
                meta_error = _first_line(run.error)
                del model, run
                try:
                    model = specs.build(spec, import_root=import_root)
                except InvalidRequest as e:  # it built on meta but not for real: a real failure
                    raise InvalidRequest(f"{e} (it built on the meta device, not on the CPU)", field=e.field) from None
                device_used = "cpu"
                run = _forward(model, specs.example_input(spec, batch_size))
    summary = _summarize_built(model, run, spec=spec, batch_size=batch_size, optimizer=optimizer,
                               momentum=momentum, device_used=device_used, meta_error=meta_error, t0=t0)
    if strict:
        _raise_forward_error(spec, summary)
    return summary


def check_forward(spec: ModelSpec, *, batch_size: int = 1, import_root: str | Path | None = None,
                  workspace: "Workspace | None" = None, trust: bool = True) -> ModelSummary:
    """Summarize and raise InvalidRequest if the spec has no input shape or the model rejects
    an input of that shape; the message names the shape, the module and the cause."""
    return summarize(spec, batch_size=batch_size, import_root=import_root, workspace=workspace, trust=trust,
                     strict=True)


def summarize_model(model: "torch.nn.Module", example: "torch.Tensor | None" = None, *, optimizer: str = "adam",
                    momentum: float = 0.0) -> ModelSummary:
    """Summarize a model already built (on any device), with an optional example batch (its
    first axis is the batch). No fallback: the model is used as it is, and its train/eval modes
    are left as they were."""
    if optimizer not in OPTIMIZERS:
        raise InvalidRequest(f"unknown optimizer {optimizer!r} (expected one of {', '.join(OPTIMIZERS)})",
                             field="optimizer")
    t0 = time.perf_counter()
    run = _forward(model, example) if example is not None else None
    try:
        device = next(iter(model.parameters())).device.type
    except StopIteration:
        device = "cpu"
    batch = int(example.shape[0]) if example is not None and example.dim() > 0 else 1
    return _summarize_built(model, run, spec=None, batch_size=batch, optimizer=optimizer, momentum=momentum,
                            device_used=device, meta_error=None, t0=t0)


def warm_up() -> None:
    """Pay the one-off cost of the first meta-device work in this process: torch loads its
    Python meta kernels and decompositions then, and those import torch._dynamo (about 1 s on
    a 2-core machine, in total). Call it from a background thread after importing torch, so
    the first summary the user asks for takes as long as the next ones."""
    import torch

    try:
        import torch._dynamo  # noqa: F401  (what the meta decompositions import on first use)
    except Exception:  # pragma: no cover - a torch build without it: the ops below still warm up
        pass
    with torch.no_grad(), torch.device("meta"):
        layer = torch.nn.Linear(3, 4)
        layer(torch.empty(2, 5, 3))


def format_shape(shape: Shape | None) -> str:
    """[4, 20] -> "[4, 20]"; a tuple output -> "([4, 20], [4, 5])"; None -> ""."""
    if shape is None:
        return ""
    if isinstance(shape, str):
        return shape
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{k}: {format_shape(v)}" for k, v in shape.items()) + "}"
    if all(isinstance(d, int) for d in shape):
        return "[" + ", ".join(str(d) for d in shape) + "]"
    return "(" + ", ".join(format_shape(s) for s in shape) + ")"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


# -- the forward pass ------------------------------------------------------------------------------
@dataclass
class _Forward:
    shapes: dict[int, Shape]  # id(module) -> first call's output
    calls: dict[int, int]
    activation_bytes: int | None
    input_shape: list[int]
    input_dtype: str
    mode: str | None
    error: BaseException | None = None
    error_at: int | None = None  # id(module)


def _forward(model, x) -> _Forward:
    """One forward pass with hooks on every module: in train mode (what training runs), and if
    that fails, once more in eval mode (BatchNorm refuses one value per channel in training)."""
    run = _forward_once(model, x, train=True)
    if run.error is not None:
        second = _forward_once(model, x, train=False)
        if second.error is None:
            return second
    return run


def _forward_once(model, x, *, train: bool) -> _Forward:
    import torch

    shapes: dict[int, Shape] = {}
    calls: dict[int, int] = {}
    kept: dict[int, Any] = {id(x): x}  # distinct tensors (bases of views), kept alive so ids stay unique
    stack: list[int] = []

    def pre_hook(module, args):
        stack.append(id(module))

    def hook(module, args, output):
        key = id(module)
        if stack and stack[-1] == key:
            stack.pop()
        calls[key] = calls.get(key, 0) + 1
        if key not in shapes:
            shapes[key] = _describe(output)
        for t in _tensors(output):
            base = t._base if t._base is not None else t
            kept.setdefault(id(base), base)

    handles = []
    seen: set[int] = set()
    for m in model.modules():
        if id(m) not in seen:
            seen.add(id(m))
            handles.append(m.register_forward_pre_hook(pre_hook))
            handles.append(m.register_forward_hook(hook))
    run = _Forward(shapes, calls, None, list(x.shape), str(x.dtype).removeprefix("torch."),
                   "train" if train else "eval")
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.train(train)
        with torch.no_grad():
            model(x)
        run.activation_bytes = sum(t.numel() * t.element_size() for t in kept.values())
    except Exception as e:  # the user's model: its message is the cause
        run.error = e
        run.error_at = stack[-1] if stack else None
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return run


def _tensors(obj, depth: int = 0):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 4 and isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item, depth + 1)


def _describe(obj, depth: int = 0) -> Shape:
    import torch

    if isinstance(obj, torch.Tensor):
        return [int(d) for d in obj.shape]
    if depth < 4 and isinstance(obj, (tuple, list)):
        return [_describe(item, depth + 1) for item in obj]
    if depth < 4 and isinstance(obj, dict):
        return {str(k): _describe(v, depth + 1) for k, v in obj.items()}
    return type(obj).__name__


# -- putting it together ---------------------------------------------------------------------------
def _summarize_built(model, run: _Forward | None, *, spec, batch_size, optimizer, momentum, device_used,
                     meta_error, t0) -> ModelSummary:
    layers = _layers(model, run)

    from torch.nn.parameter import is_lazy

    all_params = list(model.parameters())  # shared (tied) parameters once, as parameters() gives them
    all_buffers = list(model.buffers())
    # A lazy module's parameters have no shape until a forward pass gives them one: left out.
    params = [p for p in all_params if not is_lazy(p)]
    buffers = [b for b in all_buffers if not is_lazy(b)]
    trainable = [p for p in params if p.requires_grad]
    n_total = sum(p.numel() for p in params)
    n_trainable = sum(p.numel() for p in trainable)
    dtypes: dict[str, int] = {}
    for p in params:
        name = str(p.dtype).removeprefix("torch.")
        dtypes[name] = dtypes.get(name, 0) + p.numel()
    param_bytes = _tensor_bytes(params)
    buffer_bytes = _tensor_bytes(buffers)

    sizes = {"params": {"as_built": param_bytes}, "params_and_buffers": {"as_built": param_bytes + buffer_bytes}}
    for key, nbytes in DTYPE_BYTES.items():
        sizes["params"][key] = n_total * nbytes
        # Casting a model casts its floating buffers; integer ones (num_batches_tracked) stay.
        buf = sum(b.numel() * (nbytes if b.is_floating_point() else b.element_size()) for b in buffers)
        sizes["params_and_buffers"][key] = n_total * nbytes + buf

    grad_bytes = _tensor_bytes(trainable)
    states = 2 if optimizer in ("adam", "adamw") else (1 if momentum else 0)
    forward_ok = run is not None and run.error is None
    activations = run.activation_bytes if forward_ok else None
    memory = MemoryEstimate(
        batch_size=batch_size, optimizer=optimizer, momentum=float(momentum), weights=param_bytes,
        buffers=buffer_bytes, gradients=grad_bytes, optimizer_state=states * grad_bytes, activations=activations,
        total=param_bytes + buffer_bytes + grad_bytes + states * grad_bytes + (activations or 0),
    )

    paths = {id(m): p for p, m in model.named_modules()}
    err = run.error if run is not None else None
    return ModelSummary(
        spec=spec,
        device_used=device_used,
        meta_error=meta_error,
        batch_size=batch_size,
        input_shape=run.input_shape if run is not None else None,
        input_dtype=run.input_dtype if run is not None else None,
        forward_mode=run.mode if forward_ok else None,
        forward_error=_first_line(err) if err is not None else None,
        forward_error_type=type(err).__name__ if err is not None else None,
        forward_error_at=paths.get(run.error_at) if err is not None and run.error_at is not None else None,
        output_shape=layers[0].output_shape if forward_ok else None,
        params_total=n_total,
        params_trainable=n_trainable,
        params_frozen=n_total - n_trainable,
        param_tensors=len(params),
        param_dtypes=dtypes,
        uninitialized=len(all_params) - len(params) + len(all_buffers) - len(buffers),
        buffers_count=len(buffers),
        buffers_elements=sum(b.numel() for b in buffers),
        buffers_bytes=buffer_bytes,
        sizes=sizes,
        memory=memory,
        layers=layers,
        repr=str(model),
        seconds=time.perf_counter() - t0,
    )


def _layers(model, run: _Forward | None) -> list[LayerInfo]:
    """The tree in module order. Own counts: each parameter belongs to the first module (in this
    order) that holds it, so own counts add up to the model's total. Recursive counts take each
    parameter of a subtree once."""
    owner: dict[int, str] = {}  # id(param) -> "path.name" where it first appeared
    first_path: dict[int, str] = {}  # id(module) -> first path
    layers: list[LayerInfo] = []
    by_path: dict[str, LayerInfo] = {}
    totals: dict[int, tuple[int, int]] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        name = path.rsplit(".", 1)[-1] if path else ""
        parent = (path.rsplit(".", 1)[0] if "." in path else "") if path else None
        info = LayerInfo(path=path, name=name, depth=path.count(".") + 1 if path else 0, type=type(m).__name__,
                         parent=parent)
        try:
            extra = m.extra_repr()
            info.extra = extra.splitlines()[0] if extra else ""
        except Exception:  # a user's extra_repr may fail on meta tensors
            info.extra = ""
        if id(m) in first_path:
            info.same_as = first_path[id(m)]
        else:
            first_path[id(m)] = path
        for pname, p in m.named_parameters(recurse=False):
            full = f"{path}.{pname}" if path else pname
            if id(p) in owner:
                info.shared.append(f"{pname} = {owner[id(p)]}")
                continue
            owner[id(p)] = full
            if p.requires_grad:
                info.params_trainable += _numel(p)
            else:
                info.params_frozen += _numel(p)
        info.buffers = sum(_numel(b) for _, b in m.named_buffers(recurse=False))
        if id(m) not in totals:
            tr = fr = 0
            for p in m.parameters():
                if p.requires_grad:
                    tr += _numel(p)
                else:
                    fr += _numel(p)
            totals[id(m)] = (tr, fr)
        info.total_trainable, info.total_frozen = totals[id(m)]
        if run is not None:
            info.output_shape = run.shapes.get(id(m))
            info.calls = run.calls.get(id(m), 0)
        if parent is not None and parent in by_path:
            by_path[parent].children.append(path)
        layers.append(info)
        by_path.setdefault(path, info)
    return layers


def _raise_forward_error(spec: ModelSpec, summary: ModelSummary) -> None:
    if summary.input_shape is None:
        raise InvalidRequest(f"{spec.describe()}: no example input shape known (give one, e.g. 1,10)",
                             field="input_shape")
    if summary.forward_error is not None:
        layer = next((info for info in summary.layers if info.path == summary.forward_error_at), None)
        where = ""
        if layer is not None:
            where = f" in {layer.path or 'the model'} ({layer.type})"
        shape = ", ".join(str(d) for d in summary.input_shape)
        raise InvalidRequest(
            f"{spec.describe()}: an input of shape ({shape}) {summary.input_dtype} was rejected{where}: "
            f"{summary.forward_error_type}: {summary.forward_error}", field="input_shape"
        )


def _numel(t) -> int:
    """Elements of a tensor; 0 for a lazy module's parameter not yet given a shape."""
    from torch.nn.parameter import is_lazy

    return 0 if is_lazy(t) else t.numel()


def _tensor_bytes(tensors) -> int:
    return sum(_numel(t) * t.element_size() for t in tensors if _numel(t))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if not text and e.args:
        text = repr(e.args[0])
    return text.splitlines()[0].strip() if text else type(e).__name__
