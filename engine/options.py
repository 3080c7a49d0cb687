"""Option lists, defined once with their labels: the CLI, the TUI, summaries and the loop use these.

Constructing an optimizer or a loss needs torch; the lists themselves do not.
"""

from __future__ import annotations

from typing import Any

from torchdeck.errors import InvalidRequest

# name -> label shown to people
OPTIMIZERS: dict[str, str] = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}
LOSSES: dict[str, str] = {"mse": "MSE", "cross_entropy": "Cross-entropy", "l1": "L1", "huber": "Huber",
                          "bce": "Binary cross-entropy (logits)"}
PRECISIONS: dict[str, str] = {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast + GradScaler (CUDA)"}
# Learning-rate schedules, stepped once per optimizer step over the run's whole length.
SCHEDULES: dict[str, str] = {"constant": "Constant", "cosine": "Cosine to zero", "step": "Step (x0.1 at 1/3 and 2/3)",
                             "onecycle": "One cycle", "plateau": "x0.1 when the best metric plateaus"}

# Run states (DESIGN: States). A stale heartbeat is an observed condition, not a state.
ACTIVE_STATES = ("queued", "running", "paused", "saving")
FINAL_STATES = ("finished", "stopped", "crashed", "diverged", "failed")
STATES = ACTIVE_STATES + FINAL_STATES


def check_optimizer(name: str, *, field: str = "optimizer") -> str:
    if name not in OPTIMIZERS:
        raise InvalidRequest(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}", field=field)
    return name


def check_loss(name: str, *, field: str = "loss") -> str:
    if name not in LOSSES:
        raise InvalidRequest(f"loss must be one of {', '.join(LOSSES)}, not {name!r}", field=field)
    return name


def make_optimizer(name: str, params: Any, lr: float):
    import torch

    check_optimizer(name)
    return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
            "rmsprop": torch.optim.RMSprop}[name](params, lr=lr)


def make_scheduler(name: str, optimizer: Any, total_steps: int):
    """The schedule's LRScheduler (None for constant), stepped after every optimizer step. Its
    state_dict goes into every checkpoint, so a resumed run continues it exactly."""
    import torch

    if name not in SCHEDULES:
        raise InvalidRequest(f"schedule must be one of {', '.join(SCHEDULES)}, not {name!r}", field="schedule")
    total = max(1, total_steps)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if name == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[total // 3, 2 * total // 3], gamma=0.1)
    return None


def make_loss(kind: str):
    """loss(output, target, reduction="mean"). MSE against class targets compares the output with
    their one-hot encoding; cross-entropy against float targets reads them as class probabilities."""
    import torch.nn.functional as F

    check_loss(kind)
    if kind == "cross_entropy":
        return F.cross_entropy

    def dense(target, out):
        if not target.is_floating_point():
            target = F.one_hot(target, out.shape[1]).movedim(-1, 1)
        return target if target.dtype == out.dtype else target.to(out.dtype)  # no op call per step when equal

    fn = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss, "bce": F.binary_cross_entropy_with_logits}[kind]

    def loss(out, target, reduction: str = "mean"):
        if target.dtype is not out.dtype:  # class indices, or floats of another precision
            target = dense(target, out)
        return fn(out, target, reduction=reduction)

    loss.__name__ = kind
    loss.direct = fn  # the torch function itself, for a target of the output's own dtype
    return loss


# -- building from a RunConfig ---------------------------------------------------------------------
# Plateau: the rate drops x0.1 after this many validations without a better best_metric (half the
# early-stop patience when one is set, so the rate drops before the run gives up).
PLATEAU_PATIENCE = 3
ONECYCLE_WARM_FRACTION = 0.3  # onecycle's rising part when no warmup_steps is given (torch's pct_start)
ONECYCLE_START = 1 / 25  # onecycle starts at lr/25 and ends at lr/25/1e4, as torch's OneCycleLR does
ONECYCLE_END = ONECYCLE_START / 1e4


def build_optimizer(cfg: Any, params: Any):
    """The run's optimizer with its settings: sgd (momentum, nesterov, weight decay), adam and
    adamw (betas, weight decay), rmsprop (momentum, weight decay)."""
    import torch

    name = check_optimizer(cfg.optimizer)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=bool(cfg.nesterov),
                               weight_decay=cfg.weight_decay or 0.0)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay or 0.0)
    extra = {} if cfg.betas is None else {"betas": (float(cfg.betas[0]), float(cfg.betas[1]))}
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    if cfg.weight_decay is not None:  # None: the optimizer's own (AdamW 0.01, the others 0)
        extra["weight_decay"] = cfg.weight_decay
    return cls(params, lr=cfg.lr, **extra)


def schedule_factor(name: str, total_steps: int, warmup_steps: int = 0):
    """The rate's multiplier after `s` optimizer steps, in closed form (so a resumed run, which
    restores only the step count, continues the very same sequence). A warm-up rises linearly to
    1 over its first steps ((s+1)/warmup: no step is spent at rate 0), then the schedule runs over
    the steps that remain."""
    total = max(1, int(total_steps))
    warm = max(0, int(warmup_steps))
    if name == "onecycle":
        rise = warm or max(1, round(ONECYCLE_WARM_FRACTION * total))
        fall = max(1, total - rise)

        def onecycle(s: int) -> float:
            if s < rise:
                return _cos_between(ONECYCLE_START, 1.0, s / rise)
            return _cos_between(1.0, ONECYCLE_END, min(1.0, (s - rise) / fall))

        return onecycle
    rest = max(1, total - warm)
    milestones = (warm + max(1, rest // 3), warm + max(1, 2 * rest // 3))  # a tiny run's first step is at lr

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        if name == "cosine":
            return _cos_between(1.0, 0.0, min(1.0, (s - warm) / rest))
        if name == "step":
            return 0.1 ** sum(s >= m for m in milestones)
        return 1.0

    return factor


def _cos_between(start: float, end: float, p: float) -> float:
    import math

    return end + (start - end) * (1 + math.cos(math.pi * p)) / 2


def build_scheduler(cfg: Any, optimizer: Any, total_steps: int):
    """The run's LRScheduler, or None for a constant rate without warm-up. Every schedule but
    plateau is a LambdaLR stepped after each optimizer step (`.step()`); plateau is a
    ReduceLROnPlateau stepped after each validation with the best metric (`.step(value)`), lower
    is better unless the metric is an accuracy. Either's state_dict resumes it exactly."""
    import torch

    name = cfg.schedule
    if name not in SCHEDULES:
        raise InvalidRequest(f"schedule must be one of {', '.join(SCHEDULES)}, not {name!r}", field="schedule")
    if name == "plateau":
        if cfg.warmup_steps:
            raise InvalidRequest("warmup steps cannot be used with the plateau schedule (it changes the rate only "
                                 "after validations)", field="warmup_steps")
        from torchdeck.checkpoints.writer import metric_direction

        patience = max(1, cfg.early_stop_patience // 2) if cfg.early_stop_patience else PLATEAU_PATIENCE
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max" if metric_direction(cfg.best_metric) > 0 else "min", factor=0.1, patience=patience)
    if name == "constant" and not cfg.warmup_steps:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(name, total_steps, cfg.warmup_steps))


def build_loss(cfg: Any, default: str | None = None):
    """loss(output, target, reduction="mean") for cfg.loss, or `default` (what the targets call
    for) when none is chosen. As make_loss, with cross-entropy's label smoothing."""
    kind = cfg.loss or default
    if kind is None:
        raise InvalidRequest("no loss chosen and none follows from the data", field="loss")
    check_loss(kind)
    smoothing = float(getattr(cfg, "label_smoothing", 0.0) or 0.0)
    if kind != "cross_entropy" or not smoothing:
        return make_loss(kind)
    import torch.nn.functional as F

    def cross_entropy(out, target, reduction: str = "mean"):
        return F.cross_entropy(out, target, reduction=reduction, label_smoothing=smoothing)

    return cross_entropy
