"""The built-in loop's metrics (lr, grad_norm, validation as scalars) and its host syncs: no
`.item()`, `float(loss)`, `.cpu()`, `.numpy()`, `.tolist()` or `bool(tensor)` per step, seen
through a TorchFunctionMode that counts every one of them, with grad_norm and lr recording on."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import StubHooks
from torch.overrides import TorchFunctionMode
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig
from torchdeck.runs.view import RunView
from torchdeck.training.loop import Trainer

SYNCS = ("item", "tolist", "cpu", "numpy", "__float__", "__bool__", "__int__", "__index__")


class CountSyncs(TorchFunctionMode):
    """Counts every call that copies a tensor's value to the host, by name, wherever it is made."""

    def __init__(self):
        super().__init__()
        self.counts = dict.fromkeys(SYNCS, 0)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.counts:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    def total(self) -> int:
        return sum(self.counts.values())


def test_the_counter_sees_every_kind_of_sync():
    t = torch.tensor([2.0])
    with CountSyncs() as mode:
        t.item(), t.tolist(), t.cpu(), t.numpy(), float(t), bool(t), int(t)
    assert {k: v for k, v in mode.counts.items() if v} == dict.fromkeys(
        ("item", "tolist", "cpu", "numpy", "__float__", "__bool__", "__int__"), 1)


def _trainer(**overrides) -> tuple[Trainer, StubHooks]:
    settings = dict(model="builtin:linear", epochs=2, dataset_size=2048, batch_size=16, device="cpu",
                    flush_interval=3600.0)
    cfg = RunConfig(**{**settings, **overrides})
    hooks = StubHooks()
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=None)
    # the device path (a GPU's), on the CPU: there a loss is read at once, a read being no sync
    trainer._host_losses = False
    return trainer, hooks


@pytest.mark.parametrize("clip", [None, 1.0], ids=["grad-norm-per-chunk", "clipping-grad-norm-per-step"])
def test_no_per_step_host_sync_with_metrics_on(clip):
    trainer, hooks = _trainer(grad_clip=clip)
    with CountSyncs() as mode:
        outcome = trainer.run()
    assert outcome.state == "finished" and outcome.step == trainer.total_steps > 200
    epochs = trainer.config.epochs
    flushes = len([e for e in hooks.events if isinstance(e, ev.Losses)])
    assert flushes == epochs  # the long interval leaves one flush per epoch
    # Per chunk: one .cpu() and one .tolist() of everything pending; per epoch: validation's one.
    assert mode.counts["cpu"] == flushes and mode.counts["tolist"] <= flushes + epochs, mode.counts
    assert mode.total() <= 2 * flushes + epochs, mode.counts
    grad = [e for e in hooks.events if isinstance(e, ev.Scalars) and e.name == "grad_norm"]
    assert sum(len(e.values) for e in grad) == (trainer.total_steps if clip else flushes)


def test_a_per_step_sync_would_be_caught(monkeypatch):
    """The test above fails for a loop that reads its loss per step, however it reads it."""
    for how in (lambda t: float(t), lambda t: t.cpu(), lambda t: t.detach().numpy(), lambda t: t.item()):
        trainer, _ = _trainer(epochs=1)
        real_note = trainer._note_lr

        def note_and_sync(real=real_note, how=how):
            how(trainer._pending[-1])
            real()

        monkeypatch.setattr(trainer, "_note_lr", note_and_sync)
        with CountSyncs() as mode:
            trainer.run()
        assert mode.total() >= trainer.total_steps


def test_the_loop_records_lr_grad_norm_and_validation_as_scalars():
    trainer, hooks = _trainer(grad_clip=0.5)
    trainer.run()
    scalars: dict[str, list[ev.Scalars]] = {}
    for e in hooks.events:
        if isinstance(e, ev.Scalars):
            scalars.setdefault(e.name, []).append(e)
            json.loads(ev.dumps(e))  # every record is valid JSON
    assert set(scalars) - set(ev.SYSTEM_METRICS) == {"lr", "grad_norm", "val_loss"}  # regression targets: no accuracy
    lr = scalars["lr"]
    assert [(e.step_list(), e.values) for e in lr] == [([1], [trainer.config.lr])]  # a point when it changes
    norms = [v for e in scalars["grad_norm"] for v in e.values]
    assert len(norms) == trainer.total_steps and all(v is not None and v >= 0 for v in norms)
    epochs = [e for e in hooks.events if isinstance(e, ev.EpochEnd)]
    val = scalars["val_loss"]
    assert [(e.step_list(), e.values) for e in val] == [([ep.step], [pytest.approx(ep.val_loss)]) for ep in epochs]
    view = RunView("t")
    view.feed(hooks.events)
    m = view.metrics_json()
    assert m["loss"]["count"] == trainer.total_steps and m["grad_norm"]["count"] == trainer.total_steps
    assert m["val_loss"]["count"] == len(epochs) and m["lr"]["last"] == trainer.config.lr


def test_a_learning_rate_change_is_one_more_point():
    trainer, hooks = _trainer(epochs=2)
    real_flush = trainer.flush

    def flush(now=None):
        real_flush(now)
        if trainer.epoch == 1:  # at the end of epoch 1, as a scheduler would
            trainer.optimizer.param_groups[0]["lr"] = 0.001

    trainer.flush = flush
    trainer.run()
    points = [(s, v) for e in hooks.events if isinstance(e, ev.Scalars) and e.name == "lr"
              for s, v in zip(e.step_list(), e.values)]
    assert points == [(1, 0.01), (trainer.steps_per_epoch + 1, 0.001)]


def test_class_targets_record_validation_accuracy():
    trainer, hooks = _trainer(model="builtin:mlp", epochs=1)
    trainer.run()
    acc = [e for e in hooks.events if isinstance(e, ev.Scalars) and e.name == "val_accuracy"]
    epoch = [e for e in hooks.events if isinstance(e, ev.EpochEnd)][0]
    assert [(e.step_list(), e.values) for e in acc] == [([epoch.step], [pytest.approx(epoch.val_accuracy)])]
    assert 0.0 <= epoch.val_accuracy <= 1.0


def test_a_nonfinite_validation_loss_is_null_with_its_reason():
    trainer, hooks = _trainer(epochs=1)
    trainer.validate = lambda: (float("inf"), None)
    trainer.run()
    val = [e for e in hooks.events if isinstance(e, ev.Scalars) and e.name == "val_loss"]
    assert [(e.values, e.nonfinite) for e in val] == [([None], [[0, "inf"]])]
    assert [e.val_loss for e in hooks.events if isinstance(e, ev.EpochEnd)] == [None]


def test_grad_clip_is_checked():
    from torchdeck.errors import InvalidRequest

    for bad in (0, -1.0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(InvalidRequest) as e:
            RunConfig(grad_clip=bad).validate()
        assert e.value.field == "grad_clip"
