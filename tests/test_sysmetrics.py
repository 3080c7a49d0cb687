"""The loop's system metrics (issue 10 item 1): samples/s, host RSS and, on CUDA, the allocator's
memory, written once per chunk as scalars records at the chunk's last step, on the in-memory
and the DataLoader paths. A fake clock that moves only with the steps makes samples/s exact."""

from __future__ import annotations

import math

import pytest
from helpers import StubHooks
from test_pipeline import USER
from torchdeck.models import specs
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig
from torchdeck.runs.view import RunView
from torchdeck.training import loop
from torchdeck.training.loop import Trainer

torch = pytest.importorskip("torch")

STEP_SECONDS = 0.001


class StepClock:
    """A clock that moves STEP_SECONDS per step (the loop asks stop_requested once a step)."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class ClockHooks(StubHooks):
    def __init__(self, clock: StepClock):
        super().__init__()
        self.clock = clock

    def stop_requested(self):
        self.clock.t += STEP_SECONDS
        return False


def scalars(events, name):
    return [(s, v) for e in events if isinstance(e, ev.Scalars) and e.name == name
            for s, v in zip(e.step_list(), e.values)]


def chunk_ends(events) -> dict[int, int]:
    """The last step of each losses chunk -> its number of steps."""
    return {e.last_step: len(e.values) for e in events if isinstance(e, ev.Losses)}


def test_in_memory_run_writes_throughput_and_memory_per_chunk():
    cfg = RunConfig(model="builtin:linear", epochs=2, dataset_size=2048, batch_size=16, device="cpu",
                    flush_interval=0.05, threads=1)
    hooks = StubHooks()
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=None)
    out = trainer.run()
    assert out.state == "finished"
    ends = chunk_ends(hooks.events)
    for name in ("samples_per_s", "rss_mb"):
        points = scalars(hooks.events, name)
        assert points, f"no {name} records"
        assert all(1 <= s <= trainer.total_steps for s, _ in points)
        assert {s for s, _ in points} <= set(ends), f"{name} not at a chunk's last step"
    assert all(v is not None and v > 10 for _, v in scalars(hooks.events, "rss_mb"))
    assert all(v is not None and v > 0 for _, v in scalars(hooks.events, "samples_per_s"))
    assert not scalars(hooks.events, "cuda_allocated_mb")  # a CPU run has no CUDA figures
    # a reader sees them as metrics like any other
    view = RunView("t")
    view.feed(hooks.events)
    assert view.metrics["samples_per_s"].count == len(scalars(hooks.events, "samples_per_s"))
    assert view.metrics["rss_mb"].min > 10


def test_samples_per_s_is_exact_and_leaves_validation_time_out(monkeypatch):
    """1843 training samples at batch 16 (the epoch's last batch holds 3): every chunk's samples/s
    times its seconds gives back every sample once; validation's 100 s are not a chunk's time."""
    clock = StepClock()
    cfg = RunConfig(model="builtin:linear", epochs=3, dataset_size=2048, batch_size=16, device="cpu",
                    flush_interval=10 * STEP_SECONDS - 1e-9, threads=1)
    hooks = ClockHooks(clock)
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=None, clock=clock)
    validate = trainer.validate

    def slow_validate():
        clock.t += 100.0
        return validate()

    monkeypatch.setattr(trainer, "validate", slow_validate)
    n_train = len(trainer.data.x_train)
    assert n_train % 16 and trainer.steps_per_epoch == math.ceil(n_train / 16)
    assert trainer.run().state == "finished"
    ends = chunk_ends(hooks.events)
    rates = scalars(hooks.events, "samples_per_s")
    assert len(rates) == len(ends)
    counted = sum(v * ends[s] * STEP_SECONDS for s, v in rates)
    assert counted == pytest.approx(3 * n_train, rel=1e-6)
    assert min(v for _, v in rates) > 3 / STEP_SECONDS * 0.9 / 10  # no chunk paid for validation
    assert max(v for _, v in rates) == pytest.approx(16 / STEP_SECONDS)


def test_accumulated_steps_count_every_micro_batch():
    clock = StepClock()
    cfg = RunConfig(model="builtin:linear", epochs=1, dataset_size=1000, batch_size=8, accumulate=4,
                    device="cpu", flush_interval=5 * STEP_SECONDS - 1e-9, threads=1)
    hooks = ClockHooks(clock)
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=None, clock=clock)
    assert trainer.run().state == "finished"
    ends = chunk_ends(hooks.events)
    counted = sum(v * ends[s] * STEP_SECONDS for s, v in scalars(hooks.events, "samples_per_s"))
    assert counted == pytest.approx(len(trainer.data.x_train), rel=1e-6)


def test_no_proc_filesystem_means_no_rss_record_not_a_failed_run(monkeypatch):
    monkeypatch.setattr(loop, "rss_mb", lambda: None)
    cfg = RunConfig(model="builtin:linear", epochs=1, dataset_size=256, batch_size=16, device="cpu", threads=1)
    hooks = StubHooks()
    assert Trainer(cfg, hooks, run_id="t", checkpoints_dir=None).run().state == "finished"
    assert not scalars(hooks.events, "rss_mb") and scalars(hooks.events, "samples_per_s")


def test_rss_reads_this_process():
    rss = loop.rss_mb()
    assert rss is not None and 10 < rss < 1 << 20


@pytest.fixture
def user_dir(tmp_path):
    (tmp_path / "pipeuser.py").write_text(USER)
    return tmp_path


@pytest.mark.parametrize("data,n", [("pipeuser:noisy", 216), ("pipeuser:dicts", 87)], ids=["tuples", "dicts"])
def test_dataloader_path_counts_its_samples_exactly(user_dir, data, n):
    """A map-style Dataset through the DataLoader: its length is known, so the count is exact
    (216 = 240 less validation; the epoch's last batch holds 216 - 13 * 16 = 8)."""
    clock = StepClock()
    model = "pipeuser:hf_like" if data == "pipeuser:dicts" else "pipeuser:net"
    cfg = RunConfig(model=model, data=data, batch_size=16, epochs=2, lr=0.05, optimizer="adam", seed=11,
                    threads=1, import_root=str(user_dir), model_import_root=str(user_dir),
                    flush_interval=3 * STEP_SECONDS - 1e-9, device="cpu", num_workers=0)
    cfg.model_spec = specs.resolve(cfg.model).to_json()
    hooks = ClockHooks(clock)
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=None, clock=clock)
    assert trainer.pipeline.kind == "dataloader"
    assert trainer.run().state == "finished"
    ends = chunk_ends(hooks.events)
    rates = scalars(hooks.events, "samples_per_s")
    assert rates and {s for s, _ in rates} <= set(ends)
    counted = sum(v * ends[s] * STEP_SECONDS for s, v in rates)
    assert counted == pytest.approx(2 * trainer.data.train_size, rel=1e-6)
    assert trainer.data.train_size == n
    assert all(v > 10 for _, v in scalars(hooks.events, "rss_mb"))


def test_metric_names_are_defined_once_with_labels():
    for name in ev.SYSTEM_METRICS + ("loss", "lr", "grad_norm", "val_loss", "val_accuracy"):
        assert ev.METRICS[name].label
    assert ev.METRICS["rss_mb"].unit == "MiB"
