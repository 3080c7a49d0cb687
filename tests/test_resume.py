"""Exact resume: a run stopped (or cut off) at any point and continued from its checkpoint ends
with weights bit-identical (torch.equal) to the same run uninterrupted, on the CPU.

In-process tests drive the Trainer directly; the process tests at the end kill real workers
and resume them with `torchdeck train --resume`.
"""

from __future__ import annotations

import random
import textwrap

import pytest
from helpers import StubHooks
from torchdeck.checkpoints import store as checkpoints
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig
from torchdeck.training.loop import Resume, Trainer, read_training_state

torch = pytest.importorskip("torch")

# A model with dropout (the torch RNG matters) whose forward also draws from Python's and
# NumPy's generators (as augmentation code does): every RNG must be restored.
MODEL = textwrap.dedent('''
    import random
    import numpy as np
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 5))

        def forward(self, x):
            if self.training:
                x = x * (1 + 0.01 * random.random()) + 0.01 * float(np.random.rand())
            return self.body(x)

    def make():
        return Net()
''')


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "dropnet.py").write_text(MODEL)
    return tmp_path


def config(model_dir, **kw) -> RunConfig:
    base = dict(model="dropnet:make", data="synthetic:classification", dataset_size=200, batch_size=16,
                epochs=3, lr=0.05, optimizer="adam", seed=7, threads=1, import_root=str(model_dir),
                model_import_root=str(model_dir), keep_checkpoints=100, flush_interval=0.01)
    base.update(kw)
    cfg = RunConfig(**base)
    from torchdeck.models import specs

    cfg.model_spec = specs.resolve(cfg.model).to_json()
    return cfg


class StopAt(StubHooks):
    """Asks for a stop once the trainer has done `at` steps (as a user's stop lands mid-epoch)."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at
        self.trainer = None

    def stop_requested(self):
        return self.trainer is not None and self.trainer.step >= self.at


def train(cfg, ckpts, *, stop_at=None, resume=None):
    hooks = StopAt(stop_at) if stop_at is not None else StubHooks()
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=ckpts, resume=resume)
    hooks.trainer = trainer
    outcome = trainer.run()
    return trainer, outcome, hooks


def assert_same_weights(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs after resume"


def latest(ckpts):
    return checkpoints.latest_complete(ckpts).path


def scramble_rngs():
    """What a fresh process would have: other RNG states than the ones the run left."""
    import numpy as np

    torch.manual_seed(12345)
    random.seed(12345)
    np.random.seed(12345)


@pytest.mark.parametrize("stop_at", [5, 12, 25], ids=["mid-epoch", "epoch-boundary", "next-epoch"])
def test_stopped_and_resumed_equals_uninterrupted(model_dir, tmp_path, stop_at):
    cfg = config(model_dir)
    whole, out, _ = train(cfg, tmp_path / "a")
    assert out.state == "finished"
    part, out, _ = train(config(model_dir), tmp_path / "b", stop_at=stop_at)
    assert out.state == "stopped" and out.step == stop_at
    scramble_rngs()
    resumed, out, hooks = train(config(model_dir), tmp_path / "b", resume=Resume(latest(tmp_path / "b")))
    assert out.state == "finished" and out.step == whole.step
    assert_same_weights(whole, resumed)
    # the resumed run's records start after the checkpoint and its epochs end where the whole run's did
    losses = [e for e in hooks.events if isinstance(e, ev.Losses)]
    assert losses[0].first_step == stop_at + 1
    ends = [(e.epoch, e.step) for e in hooks.events if isinstance(e, ev.EpochEnd)]
    assert ends[-1] == (3, whole.step)


def test_schedule_and_sgd_momentum_resume_exactly(model_dir, tmp_path):
    cfg = dict(schedule="cosine", optimizer="sgd", lr=0.2)
    whole, _, _ = train(config(model_dir, **cfg), tmp_path / "a")
    train(config(model_dir, **cfg), tmp_path / "b", stop_at=17)
    resumed, out, _ = train(config(model_dir, **cfg), tmp_path / "b", resume=Resume(latest(tmp_path / "b")))
    assert out.state == "finished"
    assert_same_weights(whole, resumed)
    assert resumed.optimizer.param_groups[0]["lr"] == whole.optimizer.param_groups[0]["lr"]


def test_interval_checkpoint_resume_after_a_cut(model_dir, tmp_path):
    """A worker killed after an interval checkpoint: the run goes on from that checkpoint. Here
    the first run goes on past it (as if its later work was lost), the resume starts from it."""
    whole, _, _ = train(config(model_dir, checkpoint_every=5), tmp_path / "a")
    spe = whole.steps_per_epoch
    assert spe % 5
    names = [c.name for c in checkpoints.list_checkpoints(tmp_path / "a")]
    assert f"step-{10:08d}" in names and f"step-{spe:08d}" in names  # interval and epoch checkpoints
    at = (spe // 5 + 1) * 5  # inside the second epoch
    cut = tmp_path / "a" / f"step-{at:08d}"
    state = read_training_state(cut)
    assert state["loop"]["batch_in_epoch"] == at - spe and state["loop"]["epoch"] == 2
    # a second run directory holding only that checkpoint
    (tmp_path / "b").mkdir()
    import shutil

    shutil.copytree(cut, tmp_path / "b" / cut.name)
    resumed, out, _ = train(config(model_dir, checkpoint_every=5), tmp_path / "b", resume=Resume(tmp_path / "b" / cut.name))
    assert out.state == "finished"
    assert_same_weights(whole, resumed)


def test_longer_run_after_finishing_equals_the_longer_run(model_dir, tmp_path):
    whole, _, _ = train(config(model_dir, epochs=5), tmp_path / "a")
    short, out, _ = train(config(model_dir, epochs=3), tmp_path / "b")
    assert out.state == "finished"
    resumed, out, _ = train(config(model_dir, epochs=5), tmp_path / "b", resume=Resume(latest(tmp_path / "b")))
    assert out.state == "finished" and out.step == whole.step
    assert_same_weights(whole, resumed)


def test_max_steps_inside_an_epoch_then_longer(model_dir, tmp_path):
    whole, _, _ = train(config(model_dir, max_steps=30), tmp_path / "a")
    assert whole.step == 30
    part, out, _ = train(config(model_dir, max_steps=20), tmp_path / "b")
    assert out.state == "finished" and out.step == 20 and out.epoch == 2
    resumed, out, _ = train(config(model_dir, max_steps=30), tmp_path / "b", resume=Resume(latest(tmp_path / "b")))
    assert out.step == 30
    assert_same_weights(whole, resumed)


def test_training_state_loads_with_weights_only_and_holds_every_rng(model_dir, tmp_path):
    train(config(model_dir), tmp_path / "a", stop_at=9)
    state = torch.load(latest(tmp_path / "a") / "training_state.pt", weights_only=True)
    assert set(state["rng"]) >= {"torch", "data_order", "data_order_epoch_start", "python", "numpy"}
    assert state["rng"]["python"]["state"].numel() == 625
    assert state["loop"]["threads"] == 1 and state["loop"]["device"] == "cpu"
    assert state["loop"]["step"] == 9 and state["loop"]["batch_in_epoch"] == 9


def test_changed_data_is_refused(model_dir, tmp_path):
    from torchdeck.errors import InvalidRequest

    train(config(model_dir), tmp_path / "a", stop_at=5)
    with pytest.raises(InvalidRequest, match="steps per epoch"):
        Trainer(config(model_dir, dataset_size=300), StubHooks(), checkpoints_dir=tmp_path / "a",
                resume=Resume(latest(tmp_path / "a")))
