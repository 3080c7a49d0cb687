"""A training step: what turns one batch into a loss.

The contract of a user's step (`--step package.module:callable`)::

    def step(model, batch) -> loss | {"loss": loss, "name": scalar, ...}

`loss` is a 0-dim tensor with gradients; every other entry (a tensor or a number) is recorded as
a metric of that name, copied out with the losses, one transfer per chunk (never a per-step sync).
Everything else stays torchdeck's: the loop, autocast, accumulation (the loss is divided by the
number of micro-batches before backward), clipping, checkpoints, resume. In validation the same
step runs in eval mode without gradients and its loss is averaged over the samples.

The default step (no `--step`), by the batch's shape:

- ``(x, y)`` (a tuple or list of two): ``output = model(x)``, target ``y``.
- a dict with ``x``: ``output = model(batch["x"])``; the target is the first of ``labels``,
  ``label``, ``y``, ``target``, ``targets`` present.
- any other dict (``input_ids``, ``attention_mask``, ``pixel_values``, ``labels``, ...):
  ``output = model(**batch)``, as Hugging Face models are called (they compute the loss from
  ``labels`` themselves); the target as above.

and by the output: a tensor is scored against the target with the run's loss; an object with a
``.loss`` that is not None (a Hugging Face ``ModelOutput``) or a dict with ``"loss"`` gives the
loss itself; otherwise its ``.logits`` / ``["logits"]`` are scored against the target.
"""

from __future__ import annotations

from typing import Any, Callable

from torchdeck.data.sources import TARGET_KEYS
from torchdeck.errors import InvalidRequest


def split_batch(batch: Any) -> tuple[Any, Any, bool]:
    """(inputs, target, as_kwargs) of a batch in one of the default step's shapes."""
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1], False
        raise InvalidRequest(f"a batch of {len(batch)} items: the default step takes (x, y) pairs or dicts; "
                             "name your own with --step", field="step")
    if isinstance(batch, dict) or (hasattr(batch, "keys") and hasattr(batch, "__getitem__")):
        target = next((batch[k] for k in TARGET_KEYS if k in batch), None)
        if "x" in batch:
            return batch["x"], target, False
        return batch, target, True
    return batch, None, False


def loss_of(out: Any, target: Any, loss_fn: Callable) -> tuple[Any, Any]:
    """(loss, the output tensor scored or None) of a model's output."""
    import torch

    if isinstance(out, torch.Tensor):
        if target is None:
            raise InvalidRequest("the batch has no target (y, labels, ...) to score the model's output against; "
                                 "return the loss from the model or name a step with --step", field="step")
        return loss_fn(out, target), out
    loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    if loss is not None:
        logits = out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)
        return loss, logits
    logits = out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor) and target is not None:
        return loss_fn(logits, target), logits
    raise InvalidRequest(f"the model returned {type(out).__name__}: the default step needs a tensor, an object "
                         "with .loss, or a dict with 'loss' (or logits and a target); name a step with --step",
                         field="step")


def forward(model, batch: Any, loss_fn: Callable) -> tuple[Any, Any, Any]:
    """The default step's (loss, scored output or None, target or None)."""
    x, target, kwargs = split_batch(batch)
    out = model(**x) if kwargs else model(x)
    loss, scored = loss_of(out, target, loss_fn)
    return loss, scored, target


def default_step(loss_fn: Callable) -> Callable[[Any, Any], Any]:
    """The default step, for the loop: tensors' fast path first."""
    import torch

    Tensor = torch.Tensor
    direct = getattr(loss_fn, "direct", None)  # make_loss's torch function, when the target needs nothing done

    def step(model, batch):
        if type(batch) is tuple and len(batch) == 2:
            out = model(batch[0])
            if type(out) is Tensor:
                y = batch[1]
                if direct is not None and y.dtype is out.dtype:
                    return direct(out, y)
                return loss_fn(out, y)
            return loss_of(out, batch[1], loss_fn)[0]
        return forward(model, batch, loss_fn)[0]

    return step


def user_step(spec: str, import_root) -> Callable[[Any, Any], Any]:
    from torchdeck.models.specs import import_callable

    return import_callable(spec, import_root, field="step")


def collate_fn(spec: str | None, import_root) -> Callable | None:
    if not spec:
        return None
    from torchdeck.models.specs import import_callable

    return import_callable(spec, import_root, field="collate")


def split_result(result: Any, where: str) -> tuple[Any, dict[str, Any]]:
    """A step's (loss, other scalars) from its return value."""
    import torch

    if isinstance(result, torch.Tensor):
        return result, {}
    if isinstance(result, dict) and "loss" in result:
        loss = result["loss"]
        extras = {k: v for k, v in result.items() if k != "loss"}
        if not isinstance(loss, torch.Tensor):
            raise InvalidRequest(f"{where} returned a loss of type {type(loss).__name__}, not a tensor", field="step")
        return loss, extras
    raise InvalidRequest(f"{where} returned {type(result).__name__}: a step returns a loss tensor or a dict "
                         "with 'loss'", field="step")
