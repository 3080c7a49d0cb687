"""Option lists, defined once with their labels: the CLI, the TUI, summaries and the loop use these.

Constructing an optimizer or a loss needs torch; the lists themselves do not.
"""

from __future__ import annotations

from typing import Any

from torchdeck.errors import InvalidRequest

# name -> label shown to people
OPTIMIZERS: dict[str, str] = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
LOSSES: dict[str, str] = {"mse": "MSE", "cross_entropy": "Cross-entropy"}

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
    return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](params, lr=lr)


def make_loss(kind: str):
    """loss(output, target, reduction="mean"). MSE against class targets compares the output with
    their one-hot encoding; cross-entropy against float targets reads them as class probabilities."""
    import torch.nn.functional as F

    check_loss(kind)
    if kind == "cross_entropy":
        return F.cross_entropy

    def mse(out, target, reduction: str = "mean"):
        if not target.is_floating_point():
            target = F.one_hot(target, out.shape[1]).movedim(-1, 1).to(out.dtype)
        return F.mse_loss(out, target, reduction=reduction)

    return mse
