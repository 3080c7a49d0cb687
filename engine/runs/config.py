"""A run's configuration (config.json) and the parsing of form and flag values into it."""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from torchdeck.errors import InvalidRequest, field_for
from torchdeck.options import LOSSES, OPTIMIZERS, PRECISIONS, SCHEDULES

# Past these no run could ever finish, or the machine would fail it (a thread pool of 100,000
# segfaulted in libgomp; torch seeds are 64-bit); each is told with its limit.
MAX_EPOCHS = 1_000_000
MAX_BATCH_SIZE = 1 << 20
MAX_DATASET_SIZE = 10_000_000
MAX_LR = 1e6
MAX_SEED = 2**63 - 1
THREADS_CAP = 1024
MAX_KEEP = 10_000
MAX_NAME = 100
MAX_STEPS = 10**12
MAX_NPROC = 1024
RDZV_RE = re.compile(r"[A-Za-z0-9_.\-\[\]:]+:\d{1,5}")
DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")


def max_threads() -> int:
    """4 threads per core, at most THREADS_CAP."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(THREADS_CAP, 4 * max(1, cores))


@dataclass
class RunConfig:
    model: str = "demo"
    data: str | None = None  # None: the model's own default data
    epochs: int = 20  # the demo's defaults make a run last 10 to 30 s on a 2-core machine
    batch_size: int = 16
    lr: float = 0.01
    optimizer: str = "sgd"
    seed: int = 0
    name: str = ""
    device: str = "auto"
    threads: int | None = None  # CPU threads for torch; None: all cores but one (see Trainer)
    loss: str | None = None  # None: follows the targets (cross_entropy for classes, mse for floats)
    dataset_size: int | None = None  # synthetic data: None takes the set's own size; files are read whole
    checkpoint_every_epoch: bool = True
    checkpoint_on_stop: bool = True
    keep_checkpoints: int = 3  # the newest N complete checkpoints are kept (`--keep`)
    keep_best: int = 0  # and the best K by best_metric (a checkpoint without it never counts)
    best_metric: str = "val_loss"  # lowest wins for a name with "loss", highest for accuracy
    flush_interval: float = 0.15  # seconds between loss chunks
    max_steps: int | None = None  # stop after this many optimizer steps (inside the last epoch); None: epochs decide
    schedule: str = "constant"  # torchdeck.options.SCHEDULES
    init_from: str | None = None  # start from this checkpoint's weights (any format), with a fresh optimizer
    checkpoint_every: int | None = None  # also checkpoint every N steps (None: at epoch ends and stops only)
    grad_clip: float | None = None  # clip the gradients' total norm to this (grad_norm is then recorded every step)
    # The optimizer's and schedule's settings (torchdeck.options builds them).
    momentum: float = 0.0  # sgd, rmsprop
    nesterov: bool = False  # sgd (needs momentum)
    weight_decay: float | None = None  # None: the optimizer's own (0.01 for adamw, 0 for the others)
    betas: list[float] | None = None  # adam, adamw: [beta1, beta2]; None: torch's defaults
    warmup_steps: int = 0  # linear warm-up from 0 before the schedule
    label_smoothing: float = 0.0  # cross_entropy
    accumulate: int = 1  # micro-batches per optimizer step (a step's logged loss is their mean)
    precision: str = "fp32"  # torchdeck.options.PRECISIONS
    deterministic: bool = False  # torch.use_deterministic_algorithms
    val_fraction: float | None = None  # None: the data source's own (0.1)
    val_every: int | None = None  # validate every N steps; None: at each epoch's end
    early_stop_patience: int | None = None  # stop after N validations without a better best_metric
    num_workers: int | None = None  # DataLoader workers; None: chosen from the cores
    collate: str | None = None  # package.module:callable, the DataLoader's collate_fn
    step: str | None = None  # package.module:callable (model, batch) -> loss or {"loss": ..., ...}
    model_spec: dict[str, Any] | None = None  # resolved at creation (torchdeck.models.specs.ModelSpec.to_json)
    import_root: str | None = None  # the directory the run was started from: data files and user callables
    import_root_commit: str | None = None
    # Where the model's module is imported from: a registered model's root recorded in models.toml when
    # it was registered (never one read from a checkpoint); else import_root.
    model_import_root: str | None = None
    # Several processes (torchrun, DistributedDataParallel): ranks on this node, and the
    # multi-node options passed through to torchrun. batch_size is each rank's.
    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""  # host:port of the rendezvous (needed with nnodes > 1)

    def validate(self) -> "RunConfig":
        """Raise InvalidRequest naming the first bad field (its `field`) and, for a value past
        what a run could ever do, the limit."""
        def whole(name: str, low: int, high: int, what: str = "") -> None:
            v = getattr(self, name)
            label = name.replace("_", " ")
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InvalidRequest(f"{label} must be a whole number of at least {low}, not {_show(v)}", field=name)
            if v > high:
                raise InvalidRequest(f"{label} {_show(v)} is past the limit of {high:,}{what}", field=name)

        whole("epochs", 1, MAX_EPOCHS)
        if self.max_steps is not None:
            whole("max_steps", 1, MAX_STEPS)
        if self.checkpoint_every is not None:
            whole("checkpoint_every", 1, MAX_STEPS)
        for name, low, high in (("momentum", 0.0, 1.0), ("weight_decay", 0.0, 1e3), ("label_smoothing", 0.0, 1.0)):
            v = getattr(self, name)
            if v is None and name == "weight_decay":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
                raise InvalidRequest(f"{name.replace('_', ' ')} must be a number from {low:g} to {high:g}, not "
                                     f"{_show(v)}", field=name)
        if not isinstance(self.nesterov, bool) or (self.nesterov and not self.momentum):
            raise InvalidRequest("nesterov needs a momentum above 0", field="nesterov")
        if self.betas is not None and (
                not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.betas)):
            raise InvalidRequest(f"betas must be two numbers in [0, 1), like 0.9,0.999, not {_show(self.betas)}",
                                 field="betas")
        whole("warmup_steps", 0, MAX_STEPS)
        whole("accumulate", 1, 1 << 16)
        if self.precision not in PRECISIONS:
            raise InvalidRequest(f"precision must be one of {', '.join(PRECISIONS)}, not {_show(self.precision)}",
                                 field="precision")
        if not isinstance(self.deterministic, bool):
            raise InvalidRequest(f"deterministic must be true or false, not {_show(self.deterministic)}",
                                 field="deterministic")
        if self.val_fraction is not None and (
                isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float))
                or not 0 <= self.val_fraction < 1):
            raise InvalidRequest(f"validation fraction must be a number in [0, 1), not {_show(self.val_fraction)}",
                                 field="val_fraction")
        for name in ("val_every", "early_stop_patience"):
            if getattr(self, name) is not None:
                whole(name, 1, MAX_STEPS)
        if self.num_workers is not None:
            whole("num_workers", 0, 256)
        for name in ("collate", "step"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or ":" not in v):
                raise InvalidRequest(f"{name} must be package.module:callable, not {_show(v)}", field=name)
        if self.schedule not in SCHEDULES:
            raise InvalidRequest(f"schedule must be one of {', '.join(SCHEDULES)}, not {_show(self.schedule)}",
                                 field="schedule")
        whole("batch_size", 1, MAX_BATCH_SIZE)
        if self.dataset_size is not None:
            whole("dataset_size", 1, MAX_DATASET_SIZE, " samples (data is held in memory)")
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
            raise InvalidRequest(f"learning rate must be a finite number, not {_show(lr)}", field="lr")
        if not lr > 0:
            raise InvalidRequest(f"learning rate must be a positive number, not {_show(lr)}", field="lr")
        if lr > MAX_LR:
            raise InvalidRequest(f"learning rate {lr:g} is past the limit of {MAX_LR:g}", field="lr")
        if self.optimizer not in OPTIMIZERS:
            raise InvalidRequest(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}",
                                 field="optimizer")
        if self.loss not in (None, *LOSSES):
            raise InvalidRequest(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}", field="loss")
        if self.grad_clip is not None and (isinstance(self.grad_clip, bool) or not isinstance(self.grad_clip, (int, float))
                                           or not (0 < self.grad_clip < float("inf"))):
            raise InvalidRequest(f"gradient clipping must be a positive number, not {self.grad_clip!r}",
                                 field="grad_clip")
        self._validate_combinations()
        self._validate_processes(whole)
        whole("seed", 0, MAX_SEED, " (torch seeds are 64-bit)")
        if self.threads is not None:
            whole("threads", 1, max_threads(), f" (4 per core on this machine, at most {THREADS_CAP})")
        whole("keep_checkpoints", 1, MAX_KEEP)
        whole("keep_best", 0, MAX_KEEP)
        if not isinstance(self.best_metric, str) or not self.best_metric.strip() or len(self.best_metric) > MAX_NAME \
                or any(not c.isprintable() for c in self.best_metric):
            raise InvalidRequest(f"best metric must be a metric's name (val_loss, val_accuracy, ...), not "
                                 f"{_show(self.best_metric)}", field="best_metric")
        if not isinstance(self.name, str) or len(self.name) > MAX_NAME or any(not c.isprintable() for c in self.name):
            raise InvalidRequest(f"run name must be at most {MAX_NAME} printable characters, not {_show(self.name)}",
                                 field="name")
        return self

    def _validate_combinations(self) -> None:
        """Settings that are each fine but would be silently ignored, or could never work, together."""
        if not isinstance(self.device, str) or not DEVICE_RE.fullmatch(self.device):
            raise InvalidRequest(f"device must be auto, cpu, cuda, cuda:N or mps, not {_show(self.device)}",
                                 field="device")
        if self.nesterov and self.optimizer != "sgd":
            raise InvalidRequest(f"nesterov applies to sgd only, not {self.optimizer}", field="nesterov")
        if self.momentum and self.optimizer in ("adam", "adamw"):
            raise InvalidRequest(f"momentum applies to sgd and rmsprop; {self.optimizer} takes betas instead",
                                 field="momentum")
        if self.betas is not None and self.optimizer not in ("adam", "adamw"):
            raise InvalidRequest(f"betas apply to adam and adamw, not {self.optimizer}", field="betas")
        if self.label_smoothing and self.loss not in (None, "cross_entropy"):
            raise InvalidRequest(f"label smoothing applies to cross_entropy only, not {self.loss}",
                                 field="label_smoothing")
        if self.warmup_steps and self.schedule == "plateau":
            raise InvalidRequest("warmup steps cannot be used with the plateau schedule (it changes the rate only "
                                 "after validations)", field="warmup_steps")
        if self.warmup_steps and self.max_steps is not None and self.warmup_steps >= self.max_steps:
            raise InvalidRequest(f"warmup steps ({self.warmup_steps:,}) must be fewer than max steps "
                                 f"({self.max_steps:,})", field="warmup_steps")
        if self.precision == "fp16" and self.device in ("cpu", "mps"):
            raise InvalidRequest(f"fp16 needs a CUDA device (its GradScaler), not {self.device}; use bf16 on "
                                 "the CPU", field="precision")

    def _validate_processes(self, whole) -> None:
        """nproc and the multi-node options; whether the devices exist is the launcher's check
        (it needs torch: torchdeck.runs.ddp.check_devices)."""
        whole("nproc", 1, MAX_NPROC, " processes on one node")
        whole("nnodes", 1, MAX_NPROC)
        whole("node_rank", 0, MAX_NPROC)
        if self.node_rank >= self.nnodes:
            raise InvalidRequest(f"node rank {self.node_rank} must be below the number of nodes ({self.nnodes})",
                                 field="node_rank")
        if not isinstance(self.rdzv_endpoint, str) or (self.rdzv_endpoint and not RDZV_RE.fullmatch(self.rdzv_endpoint)):
            raise InvalidRequest(f"rendezvous endpoint must be HOST:PORT, not {_show(self.rdzv_endpoint)}",
                                 field="rdzv_endpoint")
        if self.rdzv_endpoint and not 0 < int(self.rdzv_endpoint.rpartition(":")[2]) < 65536:
            raise InvalidRequest(f"rendezvous endpoint's port must be 1 to 65535, not {_show(self.rdzv_endpoint)}",
                                 field="rdzv_endpoint")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise InvalidRequest(f"{self.nnodes} nodes need a rendezvous endpoint (HOST:PORT of node 0)",
                                 field="rdzv_endpoint")
        if self.processes > 1:
            if self.device == "mps" or re.fullmatch(r"cuda:\d+", self.device or ""):
                raise InvalidRequest(f"with several processes each rank takes its own device (cuda:LOCAL_RANK); "
                                     f"device must be auto, cuda or cpu, not {self.device}", field="device")

    @property
    def processes(self) -> int:
        """The world size: processes on every node together."""
        return self.nproc * self.nnodes

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RunConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def parse_number(text: str, name: str, kind: type) -> Any:
    """Parse a form or flag value; InvalidRequest with the field (from the name: "batch size" ->
    batch_size, "learning rate" -> lr) when it is not one. Ranges are RunConfig.validate's."""
    field = field_for(name)
    try:
        v = kind(str(text).strip())
    except (ValueError, OverflowError):
        what = "a whole number" if kind is int else "a number"
        raise InvalidRequest(f"{name} must be {what}, not {_show(text)}", field=field) from None
    if kind is float and not math.isfinite(v):
        raise InvalidRequest(f"{name} must be a finite number, not {_show(text)}", field=field)
    return v


def parse_betas(text: str, name: str = "betas") -> list[float]:
    """"0.9,0.999" -> [0.9, 0.999] (ranges are RunConfig.validate's); InvalidRequest (field betas)."""
    parts = str(text).split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return [parse_number(p, name, float) for p in parts]
    except (ValueError, InvalidRequest):
        raise InvalidRequest(f"{name} must be two numbers like 0.9,0.999, not {_show(text)}", field="betas") from None


def _show(v: Any) -> str:
    """A value in a message, cut so a 5,000-digit paste stays one readable line."""
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:30]}… ({len(text)} characters)"
