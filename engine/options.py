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
        return target.to(out.dtype)

    fn = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss, "bce": F.binary_cross_entropy_with_logits}[kind]

    def loss(out, target, reduction: str = "mean"):
        return fn(out, dense(target, out), reduction=reduction)

    loss.__name__ = kind
    return loss
